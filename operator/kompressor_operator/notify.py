"""The finish webhook: the job's summary POSTed after its finished status is stored, signed the
Standard Webhooks way (https://www.standardwebhooks.com/), retried with backoff.

What it is for: one attempt at delivering one job's summary (`attempt`), the headers that name and
sign it (`delivery_headers`), and what an attempt leaves the delivery at (`verdict`: delivered, failed, or
retried after a delay). The Controller decides when to call
them and records each outcome in the job's `Notified` condition.

What it must never do: connect to an address the SSRF guard (kompressor.addresses) refuses, so a
job's spec cannot turn the operator into a probe of its own network; block longer than the
attempt's deadline; let a receiver's behaviour escape as an exception (every failure is returned
as an `Attempt` with its reason); send unsigned when a key was asked for (the Controller sends no
request when the key cannot be read).

Choices, documented once here:

- Signature: `webhook-id`, `webhook-timestamp` (Unix seconds) and
  `webhook-signature: v1,<base64 of HMAC-SHA256 over "{id}.{timestamp}.{body}">`. The id names the
  delivery (`delivery_id`: from the job's uid), the same on every attempt and after an operator
  restart, so a receiver can refuse a repeat; the timestamp is the attempt's, so it can refuse an
  old one. The key is the Secret's `hmacKey`: a `whsec_<base64>` value (the spec's form) stands for
  the bytes it encodes, any other value for its UTF-8 bytes.
- Deadline: each attempt has ONE deadline for everything (the name lookup, connecting, TLS,
  sending, and reading the status line and headers): a receiver that drips a byte at a time, or a
  resolver that never answers, costs `timeout` seconds, not hours.
- Retried: no answer within the deadline, a connection or name-lookup error, a malformed answer
  (a garbage status line, an over-long line), 408, 429 and 5xx. Not retried: any other answer (a
  redirect is not followed), an address the guard refuses, a URL that cannot be requested.
  The operator's settings say how many attempts and how long each may take; `RETRY_DELAYS` apart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from kompressor.addresses import AddressPolicy, AddressRefused, vetted_addresses
from kompressor.crd import CompressionJobStatus
from kompressor.deadline import DeadlineSocket, remaining
from kompressor.messages import JobRef
from kompressor_operator.status import Verdict

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)
"""Seconds to wait after the first, second, ... failed attempt before the next one (the last
delay repeats when the operator's `webhook_attempts` asks for more attempts)."""
USER_AGENT = "kompressor-operator"
SECRET_PREFIX = "whsec_"


@dataclass(frozen=True)
class Attempt:
    """How one attempt ended: `error` None when the receiver answered 2xx; `retry` says whether a
    later attempt may do better."""

    error: str | None = None
    retry: bool = False


def summary(job: JobRef, status: CompressionJobStatus) -> bytes:
    """The finish webhook's body: the job and the counts of its final status, as sorted JSON."""
    body = {
        "job": {"namespace": job.namespace, "name": job.name, "uid": job.uid},
        "status": status.model_dump(
            by_alias=True,
            mode="json",
            exclude_none=True,
            include={
                "phase",
                "total",
                "succeeded",
                "skipped",
                "failed",
                "bytes_in",
                "bytes_out",
                "failures_by_reason",
                "start_time",
                "completion_time",
                "manifest",
            },
        ),
    }
    return json.dumps(body, sort_keys=True).encode()


def delivery_id(job: JobRef) -> str:
    """The webhook-id of a job's finish delivery: the same for every attempt, unique per job."""
    return f"finished-{job.uid}"


def hmac_key(secret: str) -> bytes:
    """The signing key a Secret's hmacKey stands for; ValueError when it is empty or a malformed
    `whsec_` key, since a signature was asked for and must not be dropped."""
    if not secret:
        raise ValueError("is empty")
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError(f"starts with {SECRET_PREFIX!r} but the rest is not base64") from None
    if not key:
        raise ValueError(f"is {SECRET_PREFIX!r} with nothing after it")
    return key


def delivery_headers(delivery: str, timestamp: int, body: bytes, key: bytes | None) -> dict[str, str]:
    """webhook-id and webhook-timestamp (a receiver can refuse repeats and old deliveries with them
    even unsigned), and webhook-signature when there is a key."""
    headers = {"webhook-id": delivery, "webhook-timestamp": str(timestamp)}
    if key is not None:
        signed = f"{delivery}.{timestamp}.".encode() + body
        digest = hmac.new(key, signed, hashlib.sha256).digest()
        headers["webhook-signature"] = "v1," + base64.b64encode(digest).decode()
    return headers


def verdict(result: Attempt, attempt: int, attempts: int) -> Verdict:
    """What attempt number `attempt` (from 1) of at most `attempts` leaves the delivery at."""
    if result.error is None:
        return Verdict("True", "WebhookDelivered", f"delivered on attempt {attempt}")
    message = f"attempt {attempt} of {attempts}: {result.error}"
    if not result.retry or attempt >= attempts:
        return Verdict("False", "WebhookFailed", message)
    delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS)) - 1]
    return Verdict("Unknown", "WebhookRetrying", f"{message}; next attempt in {delay:g} s", delay)


def attempt(
    url: str,
    body: bytes,
    delivery: str,
    key: bytes | None,
    policy: AddressPolicy,
    timeout: float,
) -> Attempt:
    """POST `body` to `url` once, signed with `key` when it is given, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "User-Agent": USER_AGENT,
        "Connection": "close",
        **delivery_headers(delivery, int(time.time()), body, key),
    }
    sock = None
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        connection = http.client.HTTPConnection(parts.hostname or "", port)
        # The request line and headers first: one that cannot be sent is refused before connecting.
        connection.putrequest("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        for name, value in headers.items():
            connection.putheader(name, value)
        addresses = vetted_addresses(parts.hostname or "", port, policy, deadline)
        sock = _connect(addresses, parts.scheme, parts.hostname or "", deadline)
        # Talk over the vetted address's socket, never a name looked up again a moment later.
        connection.sock = DeadlineSocket(sock, deadline)  # type: ignore[assignment]
        connection.endheaders(body)
        status = connection.getresponse().status
    except AddressRefused as exc:
        return Attempt(f"webhook address refused: {exc}")
    except http.client.InvalidURL as exc:  # a space or a control character, say
        return Attempt(f"webhook URL cannot be requested: {_clipped(exc)}")
    except TimeoutError:
        return Attempt(f"webhook did not answer within {timeout:g} s", retry=True)
    except http.client.HTTPException as exc:  # BadStatusLine, LineTooLong, RemoteDisconnected, ...
        return Attempt(f"webhook answered malformed HTTP: {_clipped(exc)}", retry=True)
    except OSError as exc:  # refused, reset, name lookup failed, TLS
        return Attempt(f"webhook unreachable: {_clipped(exc)}", retry=True)
    except ValueError as exc:  # a port out of range, a name the resolver's IDNA codec refuses
        return Attempt(f"webhook URL cannot be requested: {_clipped(exc)}")
    finally:
        if sock is not None:
            sock.close()
    if 200 <= status < 300:
        return Attempt()
    return Attempt(f"webhook answered HTTP {status}", retry=status in (408, 429) or status >= 500)


def _connect(addresses: list[tuple[int, tuple]], scheme: str, host: str, deadline: float) -> socket.socket:
    """A socket connected to the first vetted address that accepts (TLS done for https)."""
    error: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(remaining(deadline))
            sock.connect(sockaddr)
        except OSError as failure:
            sock.close()
            error = failure
            continue
        if scheme == "http":
            return sock
        try:
            tls = ssl.create_default_context().wrap_socket(
                sock, server_hostname=host, do_handshake_on_connect=False
            )
            tls.settimeout(remaining(deadline))  # the whole handshake, not each step of it
            tls.do_handshake()
        except BaseException:
            sock.close()
            raise
        return tls
    assert error is not None  # vetted_addresses returns at least one address
    raise error


def _clipped(error: BaseException, limit: int = 200) -> str:
    """An error for a condition message: its type, printable, short (a receiver chose the text)."""
    text = f"{type(error).__name__}: {error}".rstrip(": ")
    text = "".join(character if character.isprintable() else "?" for character in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."
