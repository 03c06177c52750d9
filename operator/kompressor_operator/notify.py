"""The finish webhook: a JSON summary POSTed with an HMAC-SHA256 signature, retried with backoff.

Only to addresses that pass the same SSRF guard as URL sources: an operator running in a cluster
must not be turned into a probe of its own network by a job's spec.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from kompressor.addresses import AddressPolicy, AddressRefused, vetted_addresses
from kompressor.crd import CompressionJobStatus
from kompressor.messages import JobRef

SIGNATURE_HEADER = "X-Kompressor-Signature"
ATTEMPTS = 5
TIMEOUT_SECONDS = 10.0


def summary(job: JobRef, status: CompressionJobStatus) -> bytes:
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


def signature(body: bytes, key: str) -> str:
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def post(
    url: str,
    body: bytes,
    key: str | None,
    policy: AddressPolicy | None = None,
    attempts: int = ATTEMPTS,
    first_delay: float = 1.0,
) -> str | None:
    """POST the body; None on a 2xx answer, else why it kept failing (after `attempts` tries)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    headers = {"Content-Type": "application/json", "User-Agent": "kompressor-operator"}
    if key:
        headers[SIGNATURE_HEADER] = signature(body, key)
    delay, error = first_delay, "not attempted"
    for attempt in range(1, attempts + 1):
        try:
            address = vetted_addresses(
                parts.hostname or "",
                parts.port or (443 if parts.scheme == "https" else 80),
                policy or AddressPolicy(),
            )[0]
            connection_class = (
                http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            )
            connection = connection_class(parts.hostname, parts.port, timeout=TIMEOUT_SECONDS)
            # Connect to the vetted address, not to whatever the name resolves to a moment later.
            connection.sock = _connect(address, parts, connection_class)
            path = parts.path or "/"
            connection.request("POST", path + (f"?{parts.query}" if parts.query else ""), body, headers)
            status = connection.getresponse().status
            connection.close()
            if 200 <= status < 300:
                return None
            error = f"webhook answered HTTP {status}"
            if 400 <= status < 500 and status not in (408, 429):
                return error
        except AddressRefused as exc:
            return f"webhook address refused: {exc}"
        except OSError as exc:
            error = f"webhook unreachable: {exc}"
        if attempt < attempts:
            time.sleep(delay)
            delay *= 2
    return error


def _connect(address: tuple, parts, connection_class):
    import socket
    import ssl

    family, sockaddr = address
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_SECONDS)
    sock.connect(sockaddr)
    if parts.scheme == "https":
        return ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
    return sock
