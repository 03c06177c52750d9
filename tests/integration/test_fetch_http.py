"""fetch_url against real local HTTP(S) servers: limits, deadlines, redirects and the address policy.

Each server runs in a thread on 127.0.0.1, which only these tests allow-list. Slow servers slow down
by waiting on an event, so tearing them down never waits for a drip to finish.
"""

from __future__ import annotations

import datetime
import gzip
import http.server
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from kompressor.addresses import AddressPolicy
from kompressor_worker import fetch
from kompressor_worker.fetch import FetchError, RateLimiter, fetch_url

LOOPBACK = AddressPolicy.allowing("127.0.0.0/8")
ONLY_127_0_0_1 = AddressPolicy.allowing("127.0.0.1/32")
BODY = bytes(range(256)) * 40  # 10 KiB
MiB = 1024 * 1024
DRIP_SECONDS = 0.05


@dataclass
class Server:
    port: int
    scheme: str = "http"
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: Server  # set on a subclass per server

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server_state.requests.append((self.path, dict(self.headers)))
        parts = urlsplit(self.path)
        route = getattr(self, "route_" + parts.path.strip("/").split("/")[0].replace("-", "_"), None)
        try:
            if route is None:
                self.respond(404, b"no such route")
            else:
                route(parts.path.strip("/").split("/")[1:], parse_qs(parts.query))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the client hung up, as it should when it refuses a response

    def respond(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def waited(self) -> bool:
        """Pause as a slow server would; True once the test is over."""
        return self.server_state.release.wait(DRIP_SECONDS)

    def route_ok(self, args, query) -> None:
        self.respond(200, BODY, Content_Type="image/jpeg")

    def route_headers(self, args, query) -> None:
        self.respond(200, json.dumps(dict(self.headers)).encode())

    def route_status(self, args, query) -> None:
        self.respond(int(args[0]), b"status page")

    def route_redirect(self, args, query) -> None:
        code = int(query.get("code", ["302"])[0])
        self.send_response(code)
        self.send_header("Location", query["to"][0])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def route_loop(self, args, query) -> None:
        self.send_response(302)
        self.send_header("Location", f"/loop/{int(args[0]) + 1}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def route_exact(self, args, query) -> None:
        self.respond(200, b"a" * int(args[0]))

    def route_chunked(self, args, query) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        remaining = int(args[0])
        while remaining:
            piece = min(remaining, 700)
            self.wfile.write(b"%x\r\n%s\r\n" % (piece, b"c" * piece))
            remaining -= piece
        self.wfile.write(b"0\r\n\r\n")

    def route_huge_length(self, args, query) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(100 * MiB))
        self.end_headers()
        self.wfile.flush()
        self.server_state.release.wait(10)  # never sends the body: reading it would hang

    def route_endless_chunked(self, args, query) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"e" * 65536
        for _ in range(4096):  # 256 MiB at most
            if self.server_state.release.is_set():
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    def route_endless_raw(self, args, query) -> None:
        # No length and no chunking: the body ends when the connection does.
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for _ in range(4096):
            if self.server_state.release.is_set():
                return
            self.wfile.write(b"r" * 65536)

    def route_drip_body(self, args, query) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        while not self.waited():
            self.wfile.write(b"d")
            self.wfile.flush()

    def route_drip_headers(self, args, query) -> None:
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not self.waited():
            self.wfile.write(b"s")
            self.wfile.flush()

    def route_short(self, args, query) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"only ten b")
        self.close_connection = True

    def route_gzip(self, args, query) -> None:
        self.respond(200, gzip.compress(b"\0" * (50 * MiB)), Content_Encoding="gzip")


@pytest.fixture
def received(monkeypatch) -> list[int]:
    """The sizes of every receive from a fetch's socket (headers and framing included)."""
    sizes: list[int] = []
    original = fetch._DeadlineSocket.recv_into

    def counting(self, buffer) -> int:
        count = original(self, buffer)
        sizes.append(count)
        return count

    monkeypatch.setattr(fetch._DeadlineSocket, "recv_into", counting)
    return sizes


def _serve(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
    httpd.daemon_threads = True
    state = Server(port=httpd.server_address[1], scheme="https" if tls else "http")
    httpd.RequestHandlerClass = type("BoundHandler", (Handler,), {"server_state": state})
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    yield from _serve()


def _fail(url: str, policy: AddressPolicy = LOOPBACK, **kwargs) -> FetchError:
    arguments = {"max_bytes": MiB, "timeout": 5.0} | kwargs
    with pytest.raises(FetchError) as caught:
        fetch_url(url, allow=policy, **arguments)
    return caught.value


def _resolve_as(monkeypatch, table: dict[str, list[str]]) -> list[str]:
    """Make names resolve as `table` says; returns the names looked up, in order."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in table:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in table[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


# --- the happy path ------------------------------------------------------------------------------


def test_a_normal_fetch(server: Server):
    assert fetch_url(server.url("/ok"), max_bytes=MiB, timeout=5, allow=LOOPBACK) == BODY


def test_the_request_asks_for_identity_and_carries_no_cookie(server: Server):
    headers = json.loads(fetch_url(server.url("/headers"), max_bytes=MiB, timeout=5, allow=LOOPBACK))
    assert headers["Accept-Encoding"] == "identity"
    assert headers["Host"] == f"127.0.0.1:{server.port}"
    assert headers["User-Agent"] == fetch.USER_AGENT
    assert headers["Connection"] == "close"
    assert "Cookie" not in headers and "Authorization" not in headers


def test_a_name_is_looked_up_once_and_the_vetted_address_is_used(monkeypatch, server: Server):
    lookups = _resolve_as(monkeypatch, {"images.example": ["127.0.0.1"]})
    headers = json.loads(
        fetch_url(server.url("/headers", host="images.example"), max_bytes=MiB, timeout=5, allow=LOOPBACK)
    )
    assert headers["Host"] == f"images.example:{server.port}"
    assert lookups == ["images.example"]  # no second lookup a rebinding name server could answer


def test_the_next_vetted_address_is_tried_when_one_refuses(monkeypatch, server: Server):
    # Nothing listens on 127.0.0.3 (the server is bound to 127.0.0.1 only): refused, then the next.
    _resolve_as(monkeypatch, {"images.example": ["127.0.0.3", "127.0.0.1"]})
    url = server.url("/ok", host="images.example")
    assert fetch_url(url, max_bytes=MiB, timeout=5, allow=LOOPBACK) == BODY


def test_a_body_of_exactly_the_limit_is_accepted(server: Server):
    assert fetch_url(server.url("/exact/5000"), max_bytes=5000, timeout=5, allow=LOOPBACK) == b"a" * 5000
    assert fetch_url(server.url("/chunked/5000"), max_bytes=5000, timeout=5, allow=LOOPBACK) == b"c" * 5000


def test_a_compressed_body_is_returned_as_sent_never_inflated(server: Server):
    body = fetch_url(server.url("/gzip"), max_bytes=MiB, timeout=5, allow=LOOPBACK)
    assert body[:2] == b"\x1f\x8b"  # still gzip: the 50 MiB it inflates to never exist here
    assert len(body) < MiB


# --- the address policy --------------------------------------------------------------------------


def test_loopback_is_refused_without_the_allow_list(server: Server):
    error = _fail(server.url("/ok"), policy=AddressPolicy())
    assert (error.reason, error.transient) == ("forbidden_address", False)
    assert server.requests == []


def test_a_name_resolving_to_loopback_is_refused(server: Server):
    error = _fail(server.url("/ok", host="localhost"), policy=AddressPolicy())
    assert error.reason == "forbidden_address"
    assert "localhost resolves to it" in error.message
    assert server.requests == []


def test_a_redirect_to_another_loopback_address_is_refused(server: Server):
    target = server.url("/ok", host="127.0.0.2")
    error = _fail(server.url(f"/redirect?to={target}"), policy=ONLY_127_0_0_1)
    assert error.reason == "forbidden_address"
    assert "127.0.0.2" in error.message
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://0xa9fea9fe/",
        "http://10.0.0.1/",
    ],
)
def test_a_redirect_to_a_metadata_or_private_address_is_refused(server: Server, target: str):
    error = _fail(server.url(f"/redirect?to={target}"))
    assert error.reason == "forbidden_address"
    assert len(server.requests) == 1


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1:70/", "ftp://example.com/"])
def test_a_redirect_to_another_scheme_is_refused(server: Server, target: str):
    assert _fail(server.url(f"/redirect?to={target}")).reason == "forbidden_scheme"


def test_a_redirect_to_an_invalid_url_is_refused(server: Server):
    error = _fail(server.url("/redirect?to=http://[::1"))
    assert (error.reason, error.transient) == ("invalid_url", False)


# --- redirects -----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_are_followed(server: Server, code: int):
    url = server.url(f"/redirect?code={code}&to=/ok")
    assert fetch_url(url, max_bytes=MiB, timeout=5, allow=LOOPBACK) == BODY
    assert server.paths == [f"/redirect?code={code}&to=/ok", "/ok"]


def test_redirects_are_limited(server: Server):
    error = _fail(server.url("/loop/0"), max_redirects=3)
    assert (error.reason, error.transient) == ("too_many_redirects", False)
    assert server.paths == ["/loop/0", "/loop/1", "/loop/2", "/loop/3"]


def test_max_redirects_zero_follows_none(server: Server):
    assert _fail(server.url("/loop/0"), max_redirects=0).reason == "too_many_redirects"
    assert fetch_url(server.url("/ok"), max_bytes=MiB, timeout=5, allow=LOOPBACK, max_redirects=0) == BODY


# --- HTTP errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "transient"), [(404, False), (403, False), (410, False), (429, True), (500, True), (503, True)]
)
def test_http_errors(server: Server, status: int, transient: bool):
    error = _fail(server.url(f"/status/{status}"))
    assert (error.reason, error.status, error.transient) == ("http_error", status, transient)


def test_a_connection_refused_is_transient():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: nothing listens there
    error = _fail(f"http://127.0.0.1:{port}/")
    assert (error.reason, error.transient) == ("connection_error", True)


def test_a_body_cut_short_is_a_transient_connection_error(server: Server):
    error = _fail(server.url("/short"))
    assert (error.reason, error.transient) == ("connection_error", True)


# --- size ----------------------------------------------------------------------------------------


def test_a_content_length_over_the_limit_is_refused_before_the_body(server: Server, received: list[int]):
    started = time.monotonic()
    error = _fail(server.url("/huge-length"), timeout=5.0)
    assert (error.reason, error.transient) == ("too_large", False)
    assert time.monotonic() - started < 1.0  # the server never sends the body: we did not wait for it
    assert sum(received) < 4096  # the headers only


def test_a_limit_one_byte_under_the_body_refuses_it(server: Server):
    assert _fail(server.url("/exact/5000"), max_bytes=4999).reason == "too_large"
    assert _fail(server.url("/chunked/5000"), max_bytes=4999).reason == "too_large"


@pytest.mark.parametrize("path", ["/endless-chunked", "/endless-raw"])
def test_an_endless_body_is_cut_off_at_the_limit(server: Server, received: list[int], path: str):
    error = _fail(server.url(path), max_bytes=MiB, timeout=5.0)
    assert error.reason == "too_large"
    # At most the limit, one buffer of read-ahead, the headers and the chunk framing.
    assert MiB < sum(received) <= MiB + fetch.CHUNK_BYTES + 8192


# --- time ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_a_slow_drip_hits_the_overall_deadline(server: Server, received: list[int], path: str):
    started = time.monotonic()
    error = _fail(server.url(path), timeout=1.0)
    elapsed = time.monotonic() - started
    assert (error.reason, error.transient) == ("timeout", True)
    assert 1.0 <= elapsed < 2.0
    assert len(received) > 5  # bytes kept arriving: no single receive timed out, the deadline did


# --- rate limit ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_every_request_takes_a_token_of_its_host(server: Server):
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock, sleep=clock.sleep)
    fetch_url(server.url("/ok"), max_bytes=MiB, timeout=5, allow=LOOPBACK, rate=limiter)
    assert clock.sleeps == []
    fetch_url(server.url("/redirect?to=/ok"), max_bytes=MiB, timeout=5, allow=LOOPBACK, rate=limiter)
    assert clock.sleeps == [1.0, 1.0]  # the redirect and its target each waited for a token


def test_a_rate_limit_wait_past_the_deadline_fails_at_once(server: Server):
    clock = FakeClock()
    limiter = RateLimiter(rate=0.01, burst=1, clock=clock, sleep=clock.sleep)
    fetch_url(server.url("/ok"), max_bytes=MiB, timeout=5, allow=LOOPBACK, rate=limiter)
    error = _fail(server.url("/ok"), rate=limiter)
    assert (error.reason, error.transient) == ("timeout", True)
    assert clock.sleeps == [] and len(server.requests) == 1


# --- TLS -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A CA and a certificate for images.example signed by it."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def certificate(subject, issuer, public_key, signer, *extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate(
        name("kompressor test CA"),
        name("kompressor test CA"),
        ca_key.public_key(),
        ca_key,
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
        (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = certificate(
        name("images.example"),
        ca.subject,
        key.public_key(),
        ca_key,
        (x509.SubjectAlternativeName([x509.DNSName("images.example")]), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
    )
    folder = tmp_path_factory.mktemp("pki")
    paths = Pki(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture
def tls_server(pki: Pki, monkeypatch) -> Iterator[tuple[Server, list[str]]]:
    server_names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert, pki.key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    client = ssl.create_default_context(cafile=str(pki.ca))
    monkeypatch.setattr(fetch, "_tls_context", lambda: client)
    _resolve_as(monkeypatch, {"images.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    yield from ((server, server_names) for server in _serve(tls=context))


def test_https_sends_sni_and_checks_the_name_while_connecting_to_the_vetted_address(tls_server):
    server, server_names = tls_server
    url = server.url("/headers", host="images.example")
    headers = json.loads(fetch_url(url, max_bytes=MiB, timeout=5, allow=LOOPBACK))
    assert headers["Host"] == f"images.example:{server.port}"
    assert server_names == ["images.example"]


def test_https_refuses_a_certificate_for_another_name(tls_server):
    server, _ = tls_server
    error = _fail(server.url("/ok", host="other.example"))
    assert (error.reason, error.transient) == ("tls_error", False)
    assert server.requests == []


def test_https_to_an_address_checks_the_certificate_against_it(tls_server):
    server, _ = tls_server
    assert _fail(server.url("/ok")).reason == "tls_error"  # the certificate names no IP address
