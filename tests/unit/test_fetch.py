"""Fetch policy without a network: which addresses are refused, how URLs are vetted, the rate limiter.

Downloads from a real local server are in tests/integration/test_fetch_http.py."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompressor.addresses import AddressPolicy, address_allowed
from kompressor_worker import fetch
from kompressor_worker.fetch import FetchError, RateLimiter, fetch_url

NOTHING = AddressPolicy()

# Written out here rather than taken from the module: the test states the rule independently.
FORBIDDEN_IPV4 = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
]
FORBIDDEN_IPV6 = [
    "::/128",
    "::1/128",
    "::/96",  # IPv4-compatible
    "::ffff:0:0:0/96",  # SIIT
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/32",  # Teredo
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
]
FORBIDDEN_NETWORKS = [ipaddress.ip_network(network) for network in FORBIDDEN_IPV4 + FORBIDDEN_IPV6]


@pytest.mark.parametrize(
    "address",
    [
        # IPv4
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "100.100.100.200",  # Alibaba metadata (CGNAT)
        "169.254.0.1",
        "169.254.169.254",  # AWS / GCP / Azure metadata
        "192.0.0.192",  # Oracle metadata
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "198.18.0.1",
        "198.51.100.7",
        "203.0.113.9",
        # IPv6
        "::1",
        "::",
        "fc00::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fe80::1",
        "fe80::1%eth0",
        "fec0::1",
        "ff02::1",
        "2001:db8::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "100::1",
        "64:ff9b:1::a00:1",
        # IPv4 forms inside IPv6
        "::ffff:127.0.0.1",
        "::ffff:7f00:1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::127.0.0.1",  # IPv4-compatible
        "::7f00:1",
        "::93.184.216.34",  # IPv4-compatible is deprecated: refused even for a public address
        "::ffff:0:7f00:1",  # SIIT
        "64:ff9b::7f00:1",  # NAT64
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::10.0.0.1",
        "2002:7f00:1::",  # 6to4
        "2002:a9fe:a9fe::1",
        "2002:c0a8:101::",
    ],
)
def test_refused_addresses(address: str):
    assert not address_allowed(address, NOTHING)
    assert not address_allowed(ipaddress.ip_address(address), NOTHING)


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "151.101.1.69",
        "2606:2800:220:1::",
        "2606:2800:220:1:248:1893:25c8:1946",
        "2a00:1450:4001:82b::200e",
        "::ffff:93.184.216.34",  # the same host as 93.184.216.34
        "64:ff9b::5db8:d822",  # what DNS64 gives for 93.184.216.34 on an IPv6-only cluster
        "2002:5db8:d822::1",  # 6to4 of a public address
    ],
)
def test_public_addresses_are_allowed(address: str):
    assert address_allowed(address, NOTHING)


def test_the_allow_list_readmits_only_its_networks():
    policy = AddressPolicy.allowing("127.0.0.0/8", "fd00:1234::/32")
    assert address_allowed("127.0.0.1", policy)
    assert address_allowed("127.9.9.9", policy)
    assert address_allowed("::ffff:127.0.0.1", policy)  # the same address, IPv4-mapped
    assert address_allowed("fd00:1234::5", policy)
    assert not address_allowed("::1", policy)
    assert not address_allowed("10.0.0.1", policy)
    assert not address_allowed("169.254.169.254", policy)
    assert not address_allowed("fd00:ec2::254", policy)
    assert address_allowed("93.184.216.34", policy)


def test_address_policy_takes_strings_and_refuses_nonsense():
    assert AddressPolicy(("10.0.0.0/8",)).allow_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    with pytest.raises(ValueError):
        AddressPolicy.allowing("10.0.0.1/8")  # host bits set: probably not what was meant
    with pytest.raises(ValueError):
        AddressPolicy.allowing("localhost")


@pytest.mark.parametrize("text", ["", "localhost", "127.1", "0x7f000001", "2130706433", "::g"])
def test_what_is_not_an_address_is_not_allowed(text: str):
    assert not address_allowed(text, NOTHING)


@st.composite
def in_forbidden_network(draw) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, object]:
    network = draw(st.sampled_from(FORBIDDEN_NETWORKS))
    offset = draw(st.integers(min_value=0, max_value=network.num_addresses - 1))
    return network.network_address + offset, network


@given(in_forbidden_network())
def test_any_address_in_a_forbidden_network_is_refused_unless_allow_listed(case):
    address, network = case
    assert not address_allowed(address, NOTHING)
    assert not address_allowed(
        address, AddressPolicy.allowing("198.51.100.0/24" if address.version == 6 else "2001:db8::/32")
    )
    assert address_allowed(address, AddressPolicy(allow_networks=(network,)))


@given(in_forbidden_network().filter(lambda case: case[0].version == 4))
def test_ipv6_forms_of_a_forbidden_ipv4_address_are_refused(case):
    address, _ = case
    value = int(address)
    for form in (
        ipaddress.IPv6Address((0xFFFF << 32) | value),  # ::ffff:a.b.c.d
        ipaddress.IPv6Address(value),  # ::a.b.c.d
        ipaddress.IPv6Address((0x64FF9B << 96) | value),  # 64:ff9b::a.b.c.d
        ipaddress.IPv6Address((0x2002 << 112) | (value << 80)),  # 2002:aabb:ccdd::
    ):
        assert not address_allowed(form, NOTHING), form


@given(st.ip_addresses())
def test_public_means_global_and_outside_every_forbidden_network(address):
    embedded = None
    if address in ipaddress.ip_network("::ffff:0:0/96") or address in ipaddress.ip_network("64:ff9b::/96"):
        embedded = ipaddress.IPv4Address(address.packed[-4:])
    elif address in ipaddress.ip_network("2002::/16"):
        embedded = ipaddress.IPv4Address(address.packed[2:6])
    if embedded is not None:  # IPv6 forms carrying an IPv4 address are judged by that address
        assert address_allowed(address, NOTHING) == address_allowed(embedded, NOTHING)
        address = embedded
    inside = any(address in network for network in FORBIDDEN_NETWORKS)
    if address.version == 6:
        inside = inside or address not in ipaddress.ip_network("2000::/3")
    if inside:
        assert not address_allowed(address, NOTHING)
    elif address.version == 4 and address.is_global and not address.is_multicast:
        assert address_allowed(address, NOTHING)


# --- URLs refused before any connection ---------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if a URL gets as far as a name lookup or a connection."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected network use: {args}")

    monkeypatch.setattr(fetch, "_getaddrinfo_within", refuse)
    monkeypatch.setattr(fetch, "_connect", refuse)


def _refusal(url: str, policy: AddressPolicy = NOTHING) -> FetchError:
    with pytest.raises(FetchError) as caught:
        fetch_url(url, max_bytes=1000, timeout=5, allow=policy)
    return caught.value


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0X7F.0.0.1/",
        "http://0177.0.0.1/",
        "http://0x7f000001/",
        "http://017700000001/",
        "http://127.1/",
        "http://127.0.1/",
        "http://127.0.0.1./",
        "http://3232235777/",  # 192.168.1.1
        "http://0xa9fea9fe/",  # 169.254.169.254
        "http://1.2.3/",  # public or not, a non-canonical spelling is refused
    ],
)
def test_non_canonical_ipv4_literals_are_refused_even_when_allow_listed(no_network, url: str):
    error = _refusal(url, AddressPolicy.allowing("0.0.0.0/0"))
    assert error.reason == "forbidden_address"
    assert not error.transient
    assert "a.b.c.d" in error.message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.0.0.1:8080/x.jpg",
        "https://10.1.2.3/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/",
        "http://0.0.0.0:80/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1%25eth0]/",
        "http://[2002:7f00:1::]/",
    ],
)
def test_forbidden_address_literals_are_refused_before_connecting(no_network, url: str):
    error = _refusal(url)
    assert (error.reason, error.transient) == ("forbidden_address", False)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.jpg",
        "gopher://example.com/",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "//example.com/a.jpg",
        "example.com/a.jpg",
        "s3://bucket/key.jpg",
    ],
)
def test_only_http_and_https_are_fetched(no_network, url: str):
    assert _refusal(url).reason == "forbidden_scheme"


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret@example.com/a.jpg",
        "http://user@example.com/a.jpg",
        "http://evil.example@127.0.0.1/",
        "http:///a.jpg",
        "http://example.com:99999/",
        "http://example.com:0/",
        "http://exa mple.com/",
        "http://-example.com/",
        "http://a..b/",
        "http://[v1.fe]/",
    ],
)
def test_malformed_urls_and_user_info_are_refused(no_network, url: str):
    error = _refusal(url)
    assert (error.reason, error.transient) == ("invalid_url", False)
    assert "secret" not in error.message


def test_messages_leave_out_the_query_string(no_network):
    error = _refusal("http://169.254.169.254/a.jpg?X-Amz-Signature=abcdef&token=s3cr3t")
    assert "s3cr3t" not in str(error) and "abcdef" not in str(error)
    assert "169.254.169.254/a.jpg" in str(error)


def _resolver(table: dict[str, list[str]], calls: list[str] | None = None):
    def getaddrinfo(host, port, *args, **kwargs):
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in ip else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (ip, port, 0, 0) if ":" in ip else (ip, port),
            )
            for ip in table[host]
        ]

    return getaddrinfo


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.5"],
        ["93.184.216.34", "10.0.0.5"],  # every address is checked, not only the first
        ["2606:2800:220:1::", "fd00:ec2::254"],
        ["::ffff:169.254.169.254"],
    ],
)
def test_a_name_resolving_to_any_forbidden_address_is_refused(monkeypatch, addresses):
    monkeypatch.setattr(socket, "getaddrinfo", _resolver({"images.example": addresses}))
    monkeypatch.setattr(fetch, "_connect", lambda *a: pytest.fail("connected to a refused host"))
    error = _refusal("http://images.example/a.jpg")
    assert error.reason == "forbidden_address"
    assert "images.example resolves to it" in error.message


def test_a_name_that_does_not_exist_is_not_transient(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _resolver({}))
    error = _refusal("http://missing.example/a.jpg")
    assert (error.reason, error.transient) == ("connection_error", False)


def test_a_failing_name_server_is_transient(monkeypatch):
    def getaddrinfo(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    error = _refusal("http://images.example/a.jpg")
    assert (error.reason, error.transient) == ("connection_error", True)


def test_a_hanging_name_lookup_ends_at_the_deadline(monkeypatch):
    release = threading.Event()

    def getaddrinfo(*args, **kwargs):
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "released")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    started = time.monotonic()
    try:
        with pytest.raises(FetchError) as caught:
            fetch_url("http://slow-dns.example/", max_bytes=10, timeout=0.3, allow=NOTHING)
    finally:
        release.set()
    assert (caught.value.reason, caught.value.transient) == ("timeout", True)
    assert time.monotonic() - started < 1.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_bytes": 0}, "max_bytes"),
        ({"timeout": 0}, "timeout"),
        ({"max_redirects": -1}, "max_redirects"),
    ],
)
def test_nonsense_arguments_are_programming_errors(kwargs, message):
    arguments = {"max_bytes": 10, "timeout": 1.0, "allow": NOTHING} | kwargs
    with pytest.raises(ValueError, match=message):
        fetch_url("http://example.com/", **arguments)


# --- FetchError ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "status", "transient"),
    [
        ("timeout", None, True),
        ("connection_error", None, True),
        ("http_error", 429, True),
        ("http_error", 500, True),
        ("http_error", 503, True),
        ("http_error", 599, True),
        ("http_error", 400, False),
        ("http_error", 403, False),
        ("http_error", 404, False),
        ("http_error", 410, False),
        ("http_error", 304, False),
        ("too_large", None, False),
        ("forbidden_address", None, False),
        ("forbidden_scheme", None, False),
        ("too_many_redirects", None, False),
        ("invalid_url", None, False),
        ("tls_error", None, False),
    ],
)
def test_which_errors_are_transient(reason, status, transient):
    assert FetchError(reason, "m", status=status).transient is transient


# --- Retry-After --------------------------------------------------------------------------------

NOW = 1_764_633_600.0  # Tue, 02 Dec 2025 00:00:00 GMT


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("9" * 1000, float("inf")),  # bounded by the retry policy, and quick to read
        ("Tue, 02 Dec 2025 00:00:30 GMT", 30.0),
        ("Tue, 02 Dec 2025 00:00:30 -0000", 30.0),
        ("Mon, 01 Dec 2025 23:00:00 GMT", 0.0),  # in the past: at once
        ("Tuesday, 02-Dec-25 00:01:00 GMT", 60.0),  # RFC 850, still to be accepted
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Tue, 99 Foo 2025 00:00:30 GMT", None),
        ("\x00\xff", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(value, seconds):
    assert fetch.retry_after_seconds(value, NOW) == seconds


@given(st.text(max_size=60))
def test_retry_after_reads_any_text_without_raising(value: str):
    seconds = fetch.retry_after_seconds(value, NOW)
    assert seconds is None or seconds >= 0


def test_messages_show_a_url_without_its_secrets():
    with pytest.raises(FetchError) as caught:
        fetch_url("ftp://user:pw@host/a.jpg?X-Amz-Signature=s3cr3t#t", 10, 1.0, NOTHING)
    assert caught.value.message.startswith("ftp://host/a.jpg:")
    assert "pw" not in str(caught.value) and "s3cr3t" not in str(caught.value)


# --- RateLimiter --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 9))
        self.now += seconds


def _limiter(rate: float = 2.0, burst: int = 3, **kwargs) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(rate, burst, clock=clock, sleep=clock.sleep, **kwargs), clock


def test_a_burst_goes_through_at_once_then_requests_are_spaced():
    limiter, clock = _limiter(rate=2.0, burst=3)
    for _ in range(3):
        limiter.acquire("a.example")
    assert clock.sleeps == []
    limiter.acquire("a.example")
    limiter.acquire("a.example")
    assert clock.sleeps == [0.5, 0.5]


def test_tokens_refill_over_time_up_to_the_burst():
    limiter, clock = _limiter(rate=2.0, burst=3)
    for _ in range(3):
        limiter.acquire("a.example")
    clock.now += 100  # far more than needed to refill: the bucket holds at most `burst`
    for _ in range(3):
        limiter.acquire("a.example")
    assert clock.sleeps == []
    limiter.acquire("a.example")
    assert clock.sleeps == [0.5]


def test_hosts_have_their_own_buckets_and_names_ignore_case():
    limiter, clock = _limiter(rate=1.0, burst=1)
    limiter.acquire("a.example")
    limiter.acquire("b.example")
    assert clock.sleeps == []
    limiter.acquire("A.EXAMPLE")
    assert clock.sleeps == [1.0]


def test_concurrent_callers_queue_behind_each_other():
    # Reservations: the second caller waits for the first one's slot to pass, not the same slot.
    waits: list[float] = []
    # The clock stands still while they wait: the callers overlap.
    limiter = RateLimiter(1.0, 1, clock=lambda: 50.0, sleep=waits.append)
    for _ in range(3):
        limiter.acquire("a.example")
    assert waits == [1.0, 2.0]


def test_a_wait_longer_than_the_timeout_fails_at_once_and_takes_nothing():
    limiter, clock = _limiter(rate=1.0, burst=1)
    limiter.acquire("a.example")
    with pytest.raises(FetchError) as caught:
        limiter.acquire("a.example", timeout=0.5)
    assert (caught.value.reason, caught.value.transient) == ("timeout", True)
    assert clock.sleeps == []
    limiter.acquire("a.example", timeout=1.0)  # the refused call took no token
    assert clock.sleeps == [1.0]


def test_the_limiter_is_thread_safe():
    limiter, clock = _limiter(rate=1.0, burst=50)
    barrier = threading.Barrier(10)

    def worker() -> None:
        barrier.wait()
        for _ in range(5):
            limiter.acquire("a.example")

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clock.sleeps == []  # exactly the burst: nobody waited...
    assert limiter._tokens("a.example", clock.now) == pytest.approx(0.0)  # ...and no token was lost


def test_idle_hosts_are_forgotten():
    limiter, clock = _limiter(rate=10.0, burst=1, max_hosts=100)
    for n in range(1000):
        limiter.acquire(f"h{n}.example")
        clock.now += 0.01
    assert len(limiter._buckets) <= 101


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_a_rate_limiter_needs_a_positive_rate_and_burst(rate, burst):
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)
