"""Which S3 endpoint a job may send requests to, and with whose credentials (the endpoint guard).

What it is for: a job's `spec.storage.endpointURL` is where the operator (listing, the ledger, the
manifest) and the job's workers send signed S3 requests. The operator's own credentials go to the
operator's own endpoint only (`KOMPRESSOR_STORAGE__ENDPOINT_URL`; AWS S3 when it is empty). A job
that names any other endpoint must name its own `spec.storage.credentialsSecret`, *and* every
address the endpoint's host resolves to must lie inside the admin's allow-list
(`KOMPRESSOR_STORAGE_ENDPOINT_ALLOW_NETWORKS`, the chart's `storage.endpointAllowNetworks`; empty
by default: no other endpoint at all, public or not). The addresses are judged by
kompressor/addresses.py, the one home of the SSRF guard, after resolution, so no spelling of a host
gets around the list.

When: `Controller.start` runs `check_endpoint` on every start and resume of a job, before any
request to the endpoint (the ledger's first read) and before the worker Deployment exists; a
refused job ends Failed with a `StorageEndpointRefused` condition. The workers get the same
endpoint and the job's own Secret (builders.worker_env), so they are covered by the same check.

What it must never do: send anything to the endpoint it judges. The operator's client for such a
job judges the host again at every connection it opens and connects to the address it judged
(`endpoint_guard`, kompressor_s3's `vet`), so a name that resolves elsewhere later (DNS rebinding
against a name the job author controls) gains nothing. The job's workers do the same: their
Deployment carries the allow-list (`guarded_networks`, as KOMPRESSOR_STORAGE_ENDPOINT_ALLOW_NETWORKS)
and their client judges each connection against it.
Local mode (`kompressor run`) does not use this: there the job file and the credentials are the
user's own, on the user's machine, and the job's endpoint gets the user's credentials.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from kompressor.addresses import AddressPolicy, AddressRefused, Guard, connection_guard, vetted_url
from kompressor.crd import Storage

REASON = "StorageEndpointRefused"
LOOKUP_SECONDS = 10.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


class EndpointRefused(Exception):
    """A job's storage endpoint the operator will send nothing to; the message says why and the fix."""


class EndpointUnresolved(Exception):
    """The endpoint's name server failed for now: try the job again later (not a refusal)."""


def same_endpoint(a: str | None, b: str | None) -> bool:
    """Do two endpoint URLs name the same server? Scheme and host compared without case, a default
    port spelled or not, a trailing `/` ignored; anything else (another spelling of the host, an
    address for a name) is another endpoint. Two empty ones are both AWS S3."""
    if not a or not b:
        return not a and not b

    def key(url: str) -> tuple:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port or _DEFAULT_PORTS.get(scheme)
        except ValueError:
            port = parts.netloc  # no port at all: compared as written
        return scheme, (parts.hostname or "").rstrip("."), port, parts.username, parts.path.rstrip("/")

    return key(a) == key(b)


def credentials_problem(storage: Storage, own_endpoint: str | None) -> str | None:
    """Why a job's storage may not have the operator's credentials, or None. Pure."""
    if not storage.endpoint_url or same_endpoint(storage.endpoint_url, own_endpoint):
        return None
    if storage.credentials_secret:
        return None
    return (
        f"spec.storage.endpointURL: {storage.endpoint_url!r} is not the operator's S3 endpoint, and "
        "the operator's credentials go to its own endpoint only; name a Secret with the credentials "
        "for this endpoint in spec.storage.credentialsSecret, or leave endpointURL out"
    )


def guarded_networks(
    storage: Storage, own_endpoint: str | None, allow_networks: list[str]
) -> list[str] | None:
    """The networks every connection to a job's endpoint is judged against: `allow_networks`; None
    for the operator's own endpoint (the admin's), which is not judged. Pure."""
    if not storage.endpoint_url or same_endpoint(storage.endpoint_url, own_endpoint):
        return None
    return list(allow_networks)


def endpoint_guard(storage: Storage, own_endpoint: str | None, allow_networks: list[str]) -> Guard | None:
    """What judges each connection to a job's endpoint: its host's addresses, all inside
    `allow_networks` (else AddressRefused); None for the operator's own endpoint."""
    networks = guarded_networks(storage, own_endpoint, allow_networks)
    if networks is None:
        return None
    return connection_guard(AddressPolicy.only(*networks), LOOKUP_SECONDS)


def check_endpoint(storage: Storage, own_endpoint: str | None, allow_networks: list[str]) -> None:
    """Refuse (EndpointRefused) a job's endpoint that is not the operator's own, unless the job
    brings its own credentials and the endpoint's every address is inside `allow_networks`."""
    problem = credentials_problem(storage, own_endpoint)
    if problem is not None:
        raise EndpointRefused(problem)
    if not storage.endpoint_url or same_endpoint(storage.endpoint_url, own_endpoint):
        return
    try:
        vetted_url(storage.endpoint_url, AddressPolicy.only(*allow_networks))
    except AddressRefused as exc:
        if exc.transient:
            raise EndpointUnresolved(f"spec.storage.endpointURL: {exc}") from None
        listed = ", ".join(allow_networks) or "none"
        raise EndpointRefused(
            f"spec.storage.endpointURL: {exc}; the operator sends requests to other endpoints than its "
            f"own only inside the networks its admin allows (storage.endpointAllowNetworks: {listed})"
        ) from None
