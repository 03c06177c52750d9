"""Bounded, SSRF-safe http(s) downloads of URL-source inputs.

What it is for: turn one URL of a job's `urls` source into the bytes of the input, within the job's
`Limits` (`maxInputBytes`, a time budget) and the worker's address policy (docs/architecture.md,
Security: http(s) only; no loopback, private, link-local or metadata address unless allow-listed).
Every way a download can go wrong ends as a `FetchError` whose `reason` is one machine-readable
word and whose `transient` says whether a later attempt may succeed (the consumer requeues those).

What it must never do: connect to an address it has not vetted, look a name up twice for one request
(the vetted address is the one connected to, so DNS rebinding gains nothing), follow a redirect
without vetting its target again, read proxies or any other setting from the environment, keep
cookies, send credentials, decompress a body, keep more than `max_bytes` of a body (plus the chunk
being read), or block the caller for longer than `timeout`. It does no logging: the caller logs the error.

Choices, documented once here:

- Addresses: `address_allowed` refuses every IPv4 address in `REFUSED_IPV4` (this-network,
  RFC 1918, CGNAT 100.64/10, loopback, link-local with the 169.254.169.254 metadata address, the
  IETF, documentation and benchmarking ranges, multicast, reserved and broadcast) and every IPv6
  address outside global unicast 2000::/3 or inside `REFUSED_IPV6` (IETF protocol assignments with
  Teredo, documentation). IPv6 forms that carry an IPv4 address are judged by that address:
  IPv4-mapped `::ffff:a.b.c.d`, the NAT64 well-known prefix `64:ff9b::/96` and 6to4 `2002::/16`, so
  `::ffff:7f00:1`, `64:ff9b::a9fe:a9fe` and `2002:a9fe:a9fe::` are refused while the NAT64 form of a
  public address (what DNS64 returns on IPv6-only clusters) is allowed. IPv4-compatible `::a.b.c.d`
  and SIIT `::ffff:0:a.b.c.d` are deprecated and lie outside 2000::/3: refused whatever they carry.
  ULA fc00::/7 covers the fd00:ec2::254 metadata address. Python's own `is_global` differs between
  patch releases, so the tables here are the rule and the standard library only adds refusals.
  A NAT64 gateway behind an operator-chosen prefix is indistinguishable from a public address; such
  gateways must not translate to private IPv4 (RFC 6052 §3.1).
- The allow-list (`AddressPolicy.allow_networks`) re-admits refused addresses inside its networks
  (an IPv4-mapped address also when its IPv4 address is inside one); nothing else is re-admitted.
- Hosts: a host that parses as an IPv4 number in any other spelling than canonical dotted decimal
  (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`, a trailing dot) is refused outright,
  `forbidden_address`, whatever it denotes: resolvers and URL parsers disagree on what such hosts
  mean, and no image URL needs one. URLs with user info (`user:pass@`) are refused, `invalid_url`:
  credentials never come from a spec (docs/architecture.md, Security). Any port is allowed.
- Names: every address a name resolves to must be allowed, not only the one connected to. The
  connection then goes to the first vetted address that accepts it (the next on a connection error),
  with the name in the Host header, as TLS SNI and as the name the certificate must match (the
  system's CA store, TLS 1.2 at least).
- Client: the standard library's socket, ssl and http.client, one connection per request
  (`Connection: close`). fetch_url opens and owns the socket itself, so no library resolves the name
  again, reads proxy variables or keeps cookies, and every step can be given only the time left.
- Redirects: 301, 302, 303, 307 and 308 with a Location are followed by hand, at most
  `max_redirects` of them, each hop checked like the first (scheme, user info, every address). An
  https page may redirect to http, as browsers allow.
- Size: `max_bytes` bounds the body as transferred. A Content-Length above it is refused before any
  of the body is read; otherwise the body is read in chunks and refused as soon as one byte more
  than `max_bytes` has arrived.
- Encoding: requests say `Accept-Encoding: identity` and bodies are never decompressed, so a gzip
  bomb stays the size it was sent at. A server that compresses anyway hands the codec bytes it
  cannot identify, and the input fails there with `decode_error`.
- Time: `timeout` is one deadline for the whole download: name lookup (run in a helper thread, as
  `getaddrinfo` has no timeout of its own), waiting for the rate limiter, connecting (the remaining
  time is shared among the addresses left to try), the TLS handshake and every send and receive,
  each given only the time left. A server that drips a byte at a time is cut off at the deadline.
- Transient: timeouts, connection errors (refused, reset, malformed responses, a name server that
  fails temporarily), HTTP 429 and 5xx. Not transient: any other HTTP status, a name that does not
  exist, a certificate that does not verify, and every refusal by policy or size. A 429 or 503 with
  a `Retry-After` (seconds or an HTTP date) carries it as `retry_after`, for the consumer's delay.
- Messages name the URL as `kompressor.messages.public_source` shows it (no user info, query or
  fragment, which may carry a signature or a token).
- `RateLimiter` bounds one worker (its fetches run on the worker's threads, shared by all of its
  pool processes): a job's rate towards one host is the per-worker rate times its pods.
"""

from __future__ import annotations

import datetime
import http.client
import io
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import SplitResult, quote, urljoin, urlsplit

from kompressor.addresses import (
    AddressPolicy,
    IPAddress,
    address_allowed,
)
from kompressor.deadline import DeadlineSocket as _DeadlineSocket
from kompressor.deadline import getaddrinfo_within as _getaddrinfo_within
from kompressor.deadline import remaining as _remaining
from kompressor.messages import public_source
from kompressor.reasons import Reason

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "kompressor-worker"
CHUNK_BYTES = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_HOST_NAME = re.compile(r"^[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?\.?$")
_NAME_DOES_NOT_EXIST = frozenset(
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None)) if code
)


class FetchError(Exception):
    """A URL whose bytes could not be fetched; `reason` is one machine-readable word:
    forbidden_scheme, forbidden_address, invalid_url, too_large, timeout, http_error (with `status`),
    too_many_redirects, connection_error, tls_error. `transient` is True when a later attempt may
    succeed (timeouts, connection errors, HTTP 429 and 5xx). `retry_after`: the seconds a 429 or
    503 asked to wait, when it said."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        transient: bool | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        self.reason = reason
        self.message = message
        self.status = status
        self.transient = _transient(reason, status) if transient is None else transient
        self.retry_after = retry_after
        super().__init__(message)


def _transient(reason: Reason, status: int | None) -> bool:
    if reason == Reason.http_error:
        return status is not None and (status == 429 or 500 <= status <= 599)
    return reason in (Reason.timeout, Reason.connection_error)


RETRY_AFTER_STATUSES = frozenset({429, 503})
_DELTA_SECONDS = re.compile(r"[0-9]+")


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """The wait a `Retry-After` header asks for (RFC 9110 §10.2.3), in seconds from `now` (Unix
    time): delta-seconds, or an HTTP date (a past one is 0). None when absent or unreadable. Not
    bounded here: the retry policy (kompressor_worker.retry) bounds every delay."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)  # float, not int: a thousand digits make inf, not a slow conversion
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": a date in UTC without a known zone
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)


class RateLimiter:
    """A token bucket per origin host: `rate` requests per second on average, `burst` at once.

    Thread-safe. It limits the process it lives in, the worker's main process, where all of a
    pod's fetches run. `clock` and `sleep` are injectable for tests."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_hosts: int = 10_000,
    ):
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.rate = float(rate)
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._max_hosts = max_hosts
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # host -> (tokens, at)

    def acquire(self, host: str, timeout: float | None = None) -> None:
        """Take one token for `host`, waiting for it when the bucket is empty. When the wait would
        exceed `timeout` seconds, raise FetchError("timeout") at once and take nothing."""
        host = host.lower()
        with self._lock:
            now = self._clock()
            tokens = self._tokens(host, now)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            if timeout is not None and wait > timeout:
                self._buckets[host] = (tokens, now)
                raise FetchError(
                    Reason.timeout,
                    f"the rate limit for {host} ({self.rate:g}/s) would delay this request by "
                    f"{wait:.1f} s, past its deadline",
                )
            # Reserve the token now (tokens may go negative): later callers queue behind this one.
            self._buckets[host] = (tokens - 1, now)
            if len(self._buckets) > self._max_hosts:
                self._forget_idle(now)
        if wait > 0:
            self._sleep(wait)

    def _tokens(self, host: str, now: float) -> float:
        tokens, at = self._buckets.get(host, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def _forget_idle(self, now: float) -> None:
        # A full bucket holds nothing a fresh one would not: drop those to bound memory.
        for host in [host for host in self._buckets if self._tokens(host, now) >= self.burst]:
            del self._buckets[host]


@dataclass(frozen=True)
class _Target:
    """One request's destination, checked: what to resolve, what to send."""

    scheme: str
    host: str  # lower-case ASCII name or address, no brackets
    port: int
    request_target: str  # path and query
    host_header: str
    shown: str  # the URL without its query, for messages


def fetch_url(
    url: str,
    max_bytes: int,
    timeout: float,
    allow: AddressPolicy,
    rate: RateLimiter | None = None,
    max_redirects: int = 5,
) -> bytes:
    """The body of `url` (http or https), at most `max_bytes` long, fetched within `timeout`
    seconds from vetted addresses only; raises FetchError."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, not {max_bytes!r}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    if max_redirects < 0:
        raise ValueError(f"max_redirects must be at least 0, not {max_redirects!r}")
    deadline = time.monotonic() + timeout
    current = url
    for hop in range(max_redirects + 1):
        target = _parse(current)
        try:
            addresses = _resolve(target, allow, deadline)
            if rate is not None:
                rate.acquire(target.host, timeout=_remaining(deadline))
            sock = _connect(target, addresses, deadline)
            try:
                response = _send_request(target, sock, deadline)
                if response.status in REDIRECT_STATUSES and response.getheader("Location"):
                    if hop == max_redirects:
                        raise FetchError(
                            Reason.too_many_redirects,
                            f"{_shown(url)} redirects more than {max_redirects} times",
                        )
                    current = _redirect_target(current, response.getheader("Location", ""))
                    continue
                if not 200 <= response.status <= 299:
                    raise _status_error(response, target)
                return _read_body(response, target, max_bytes)
            finally:
                sock.close()
        except (OSError, http.client.HTTPException) as error:
            raise _as_fetch_error(error, target, timeout) from error
    raise AssertionError("unreachable")  # the loop returns or raises


def _status_error(response: http.client.HTTPResponse, target: _Target) -> FetchError:
    asked = response.getheader("Retry-After") if response.status in RETRY_AFTER_STATUSES else None
    return FetchError(
        Reason.http_error,
        f"{target.shown} answered HTTP {response.status} {_clipped(response.reason, 80)}",
        status=response.status,
        retry_after=retry_after_seconds(asked, time.time()),
    )


def _redirect_target(current: str, location: str) -> str:
    try:
        return urljoin(current, location.strip())
    except ValueError as error:
        raise FetchError(
            Reason.invalid_url, f"{_shown(current)} redirects to an invalid URL: {error}"
        ) from error


def _parse(url: str) -> _Target:
    shown = _shown(url)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise FetchError(Reason.invalid_url, f"{shown} is not a valid URL: {error}") from error
    if parts.scheme not in _DEFAULT_PORTS:
        raise FetchError(Reason.forbidden_scheme, f"{shown}: only http and https URLs are fetched")
    if parts.username is not None or parts.password is not None:
        raise FetchError(
            Reason.invalid_url, f"{shown} carries user info; credentials are never taken from URLs"
        )
    host = _checked_host(parts, shown)
    port = _DEFAULT_PORTS[parts.scheme] if port is None else port
    if port == 0:
        raise FetchError(Reason.invalid_url, f"{shown} has port 0")
    named = f"[{host}]" if ":" in host else host
    host_header = named if port == _DEFAULT_PORTS[parts.scheme] else f"{named}:{port}"
    request_target = quote(parts.path or "/", safe="/%!$&'()*+,;=:@~") + (
        "?" + quote(parts.query, safe="/%!$&'()*+,;=:@~?") if parts.query else ""
    )
    return _Target(parts.scheme, host, port, request_target, host_header, shown)


def _checked_host(parts: SplitResult, shown: str) -> str:
    host = parts.hostname  # lower-case, brackets removed
    if not host:
        raise FetchError(Reason.invalid_url, f"{shown} has no host")
    if "[" in parts.netloc:  # a bracketed literal: IPv6 (not IPvFuture)
        try:
            ipaddress.IPv6Address(host)
        except ValueError as error:
            raise FetchError(Reason.invalid_url, f"{shown}: {host!r} is not an IPv6 address") from error
        return host
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError as error:
        raise FetchError(Reason.invalid_url, f"{shown}: {host!r} is not a valid host name") from error
    if not _HOST_NAME.match(host):
        raise FetchError(Reason.invalid_url, f"{shown}: {host!r} is not a valid host name")
    if _NUMERIC_LABEL.match(host.rstrip(".").rsplit(".", 1)[-1]):
        # An IPv4 number (the WHATWG URL rule): only the canonical a.b.c.d spelling is accepted.
        try:
            ipaddress.IPv4Address(host)
        except ValueError as error:
            raise FetchError(
                Reason.forbidden_address,
                f"{shown}: {host!r} is an IPv4 address in a non-canonical spelling; write it as a.b.c.d",
            ) from error
    return host


def _resolve(target: _Target, allow: AddressPolicy, deadline: float) -> list[tuple[int, tuple]]:
    """Every address `target.host` resolves to, each vetted; refused if any one is not allowed."""
    try:
        literal = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        _vet(literal, target, allow, named=False)  # before anything else touches it
        infos = socket.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    else:
        infos = _getaddrinfo_within(target.host, target.port, deadline)
    addresses: list[tuple[int, tuple]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        _vet(sockaddr[0], target, allow, named=literal is None)
        if (family, sockaddr) not in addresses:
            addresses.append((family, sockaddr))
    if not addresses:
        raise FetchError(
            Reason.connection_error, f"{target.shown}: {target.host} has no IPv4 or IPv6 address"
        )
    return addresses


def _vet(ip: IPAddress | str, target: _Target, allow: AddressPolicy, named: bool) -> None:
    if not address_allowed(ip, allow):
        resolved = f" ({target.host} resolves to it)" if named else ""
        raise FetchError(
            Reason.forbidden_address,
            f"{target.shown}: address {ip}{resolved} is not public (loopback, private, link-local, "
            "metadata, reserved...); allow-list its network if workers are meant to reach it",
        )


def _connect(target: _Target, addresses: list[tuple[int, tuple]], deadline: float) -> socket.socket:
    """A socket connected to the first vetted address that accepts (TLS done for https)."""
    error: Exception | None = None
    for index, (family, sockaddr) in enumerate(addresses):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline) / (len(addresses) - index))
            sock.connect(sockaddr)
        except OSError as failure:
            sock.close()
            error = failure
            continue
        if target.scheme == "http":
            return sock
        try:
            tls = _tls_context().wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
        except BaseException:
            sock.close()
            raise
        try:
            tls.settimeout(_remaining(deadline))  # the total time for the handshake, not per step
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        return tls
    assert error is not None
    raise error


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """The system's CA store, hostname checking, TLS 1.2 at least. Built once per process."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _send_request(target: _Target, sock: socket.socket, deadline: float) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(target.host, target.port)
    connection.sock = _DeadlineSocket(sock, deadline)  # type: ignore[assignment]
    connection.putrequest("GET", target.request_target, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", target.host_header)
    connection.putheader("User-Agent", USER_AGENT)
    connection.putheader("Accept", "image/*,*/*;q=0.8")
    connection.putheader("Accept-Encoding", "identity")
    connection.putheader("Connection", "close")
    connection.endheaders()
    return connection.getresponse()


def _read_body(response: http.client.HTTPResponse, target: _Target, max_bytes: int) -> bytes:
    if response.length is not None and response.length > max_bytes:
        raise FetchError(
            Reason.too_large,
            f"{target.shown} is {response.length} bytes, larger than the limit of {max_bytes} bytes",
        )
    expected = response.length
    body = io.BytesIO()  # getvalue() hands over its buffer: the body is never copied whole
    size = 0
    while True:
        # Never ask for more than one byte past the limit: that byte is enough to refuse.
        chunk = response.read(min(CHUNK_BYTES, max_bytes + 1 - size))
        if not chunk:
            if expected is not None and size < expected:
                # http.client's read(amt) returns a short body silently when the server hangs up.
                raise FetchError(
                    Reason.connection_error, f"{target.shown} ended after {size} of {expected} bytes"
                )
            return body.getvalue()
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(
                Reason.too_large, f"{target.shown} is larger than the limit of {max_bytes} bytes"
            )
        body.write(chunk)


def _as_fetch_error(
    error: OSError | http.client.HTTPException, target: _Target, timeout: float
) -> FetchError:
    if isinstance(error, TimeoutError):
        return FetchError(Reason.timeout, f"{target.shown} did not download within {timeout:g} s")
    if isinstance(error, ssl.SSLCertVerificationError):
        return FetchError(
            Reason.tls_error, f"{target.shown}: the certificate does not verify: {error.verify_message}"
        )
    if isinstance(error, socket.gaierror):
        missing = error.errno in _NAME_DOES_NOT_EXIST
        return FetchError(
            Reason.connection_error,
            f"{target.shown}: cannot resolve {target.host}: {error.strerror}",
            transient=not missing,
        )
    detail = _clipped(f"{type(error).__name__}: {error}".rstrip(": "), 200)
    return FetchError(Reason.connection_error, f"{target.shown}: {detail}")


def _clipped(text: str, limit: int) -> str:
    """Server-chosen text for a message: printable and short."""
    text = "".join(character if character.isprintable() else "?" for character in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(url: str) -> str:
    """The URL for a message: its public form (no user info, query or fragment), at most 200 characters."""
    shown = public_source(url)
    return shown if len(shown) <= 200 else shown[:197] + "..."
