"""The S3 client of the operator, local mode and the workers: one construction, two departures from
botocore's defaults. An adapter, so it lives outside the contract package (`kompressor/` imports no
boto3 or botocore; import-linter checks it). Both sides import it; it imports neither side.
"""

from __future__ import annotations

import email.utils
import functools
import threading
from datetime import UTC, datetime

import boto3
import botocore.session
from botocore.config import Config
from botocore.utils import parse_timestamp as botocore_parse_timestamp
from pydantic import SecretStr
from urllib3.exceptions import NewConnectionError
from urllib3.util import connection

from kompressor.addresses import Guard
from kompressor.settings import StorageSettings

_CLIENTS = threading.Lock()  # botocore's Session is not thread-safe; kopf starts jobs in threads


def s3_client(storage: StorageSettings, vet: Guard | None = None):
    """A boto3 S3 client with botocore's standard retry mode (exponential backoff with jitter).

    Two departures from botocore's defaults, both measured (bench/fanout.py, bench/worker.py):
    timestamps are parsed by `parse_timestamp`, and checksums are sent and checked only where
    an operation requires them: botocore >= 1.36 adds CRC32 trailers that several S3-compatible
    servers refuse, and they cost ~0.4 ms of CPU per request here.

    Every client of the process comes from one session, which loads the S3 service model once: a
    session per client cost 12 MB each (1.5 MB from a shared one), and the operator makes a client
    per running job.

    `vet`: every connection the client opens first asks it where it may go, and goes to one of the
    addresses it returns (a job's own endpoint, judged by the operator's allow-list at each
    connection: a name that resolves elsewhere later, DNS rebinding, gains nothing). Such a client
    never goes through a proxy named in the environment (HTTP_PROXY, HTTPS_PROXY): the proxy would
    resolve the name itself, out of the guard's sight."""

    def reveal(secret: SecretStr | None) -> str | None:
        return secret.get_secret_value() if secret is not None else None

    with _CLIENTS:
        client = _session().client(
            "s3",
            endpoint_url=storage.endpoint_url,
            region_name=storage.region,
            aws_access_key_id=reveal(storage.access_key_id),
            aws_secret_access_key=reveal(storage.secret_access_key),
            config=Config(
                retries={"mode": "standard", "max_attempts": storage.max_attempts},
                connect_timeout=storage.connect_timeout_seconds,
                read_timeout=storage.read_timeout_seconds,
                s3={"addressing_style": "path"} if storage.endpoint_url else {},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                # None: the environment's proxies; {}: none at all.
                proxies={} if vet is not None else None,
            ),
        )
    if vet is not None:
        _pin(client, vet)
    return client


def _pin(client, vet: Guard) -> None:
    """Make the client's connections go where `vet` says: its urllib3 connection classes, derived
    with a `_new_conn` that vets the host and connects to a vetted address (TLS still checks the
    certificate against the host's name: urllib3 keeps `host` for that, and connects to `_dns_host`)."""

    def new_conn(self):
        try:
            addresses = vet(self._dns_host, self.port)
        except Exception as exc:  # refused, or the lookup failed: nothing is sent
            raise NewConnectionError(self, f"the endpoint guard refused {self._dns_host}: {exc}") from None
        error: OSError | None = None
        for _family, sockaddr in addresses:
            try:
                return connection.create_connection(
                    sockaddr[:2], self.timeout, self.source_address, self.socket_options
                )
            except OSError as exc:
                error = exc
        raise NewConnectionError(self, f"could not connect to {self._dns_host}: {error}")

    http = client._endpoint.http_session  # botocore's URLLib3Session: pools made per host on demand
    pinned = {
        scheme: type(pool.__name__, (pool,), {"ConnectionCls": type(
            pool.ConnectionCls.__name__, (pool.ConnectionCls,), {"_new_conn": new_conn}
        )})
        for scheme, pool in http._pool_classes_by_scheme.items()
    }  # fmt: skip
    http._pool_classes_by_scheme = pinned
    http._manager.pool_classes_by_scheme = pinned


@functools.cache
def _session() -> boto3.session.Session:
    session = botocore.session.get_session()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
    return boto3.session.Session(botocore_session=session)


def parse_timestamp(value):
    """A timestamp of an S3 response as an aware datetime. S3 sends ISO 8601 in XML bodies
    (LastModified of each listed object) and RFC 7231 dates in headers; the standard library parses
    both. botocore's own parser hands them to dateutil's general one, which took a quarter of the
    CPU of listing 100,000 objects (py-spy, bench/fanout.py). Anything else goes to botocore's."""
    if isinstance(value, str):
        parsed = None
        try:
            # The comma first: an RFC 7231 date has a T in "GMT" (and in "Tue", "Thu").
            if "," in value:
                parsed = email.utils.parsedate_to_datetime(value)
            elif "T" in value:
                parsed = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None:
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return botocore_parse_timestamp(value)
