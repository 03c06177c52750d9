"""Settings groups shared by the operator, local mode and the workers.

Each process builds its settings once at start-up from the environment (prefix `KOMPRESSOR_`,
nested delimiter `__`, e.g. `KOMPRESSOR_BROKER__URL`) and passes them down; nothing here is read at
import time. Credentials are `SecretStr`, so they never show in a repr, a log line or an error.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr

from kompressor.crd import WEB_INPUT_FORMATS, InputFormat, Storage

AllowedInputFormats = Annotated[
    list[InputFormat],
    Field(
        default_factory=lambda: list(WEB_INPUT_FORMATS),
        min_length=1,
        description="KOMPRESSOR_ALLOWED_INPUT_FORMATS, a JSON list: the most input formats a job may "
        "accept (the chart's allowedInputFormats). The operator refuses a job asking for more and "
        "passes it to every worker, which refuses such inputs too (see kompressor.inputs).",
    ),
]


class BrokerSettings(BaseModel):
    """How to reach RabbitMQ."""

    url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F"),
        description="AMQP URL with credentials, e.g. amqp://user:pass@rabbitmq:5672/%2F.",
    )
    heartbeat_seconds: int = Field(
        default=30,
        ge=0,
        description="AMQP heartbeat interval of a worker's connection (the operator's connections "
        "keep 30 s: it uses them at every poll, so they never sit idle for long).",
    )


class StorageSettings(BaseModel):
    """How to reach the S3-compatible storage; a job's spec.storage overrides endpoint and region."""

    endpoint_url: str | None = Field(default=None, description="S3 endpoint; empty for AWS.")
    access_key_id: SecretStr | None = Field(default=None, description="S3 access key id.")
    secret_access_key: SecretStr | None = Field(default=None, description="S3 secret access key.")
    region: str = Field(default="us-east-1", description="S3 region.")
    max_attempts: int = Field(default=5, ge=1, description="botocore standard-mode retry attempts.")
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=30.0, gt=0)

    def for_job(self, storage: Storage) -> StorageSettings:
        """These settings with a job's spec.storage: its endpoint when set, its region when the
        spec names one (else ours), and always our credentials (a job names Secrets, not keys)."""
        update: dict = {}
        if storage.endpoint_url:
            update["endpoint_url"] = storage.endpoint_url
        if "region" in storage.model_fields_set:
            update["region"] = storage.region
        return self.model_copy(update=update)

    def client(self):
        """A boto3 S3 client with botocore's standard retry mode (exponential backoff with jitter).

        Two departures from botocore's defaults, both measured (bench/fanout.py, bench/worker.py):
        timestamps are parsed by `parse_timestamp`, and checksums are sent and checked only where
        an operation requires them: botocore >= 1.36 adds CRC32 trailers that several S3-compatible
        servers refuse, and they cost ~0.4 ms of CPU per request here.

        boto3 is imported here, not at module level: the contract needs no storage client to load."""
        import boto3
        import botocore.session
        from botocore.config import Config

        def reveal(secret: SecretStr | None) -> str | None:
            return secret.get_secret_value() if secret is not None else None

        session = botocore.session.get_session()
        session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
        return boto3.session.Session(botocore_session=session).client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=reveal(self.access_key_id),
            aws_secret_access_key=reveal(self.secret_access_key),
            config=Config(
                retries={"mode": "standard", "max_attempts": self.max_attempts},
                connect_timeout=self.connect_timeout_seconds,
                read_timeout=self.read_timeout_seconds,
                s3={"addressing_style": "path"} if self.endpoint_url else {},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


def parse_timestamp(value):
    """A timestamp of an S3 response as an aware datetime. S3 sends ISO 8601 in XML bodies
    (LastModified of each listed object) and RFC 7231 dates in headers; the standard library parses
    both. botocore's own parser hands them to dateutil's general one, which took a quarter of the
    CPU of listing 100,000 objects (py-spy, bench/fanout.py). Anything else goes to botocore's."""
    if isinstance(value, str):
        parsed = None
        try:
            if "T" in value:
                parsed = datetime.fromisoformat(value)
            elif "," in value:
                parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None:
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    from botocore.utils import parse_timestamp as botocore_parse  # the rare case: not on the hot path

    return botocore_parse(value)
