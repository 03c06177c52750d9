"""Settings groups shared by the operator, local mode and the workers.

Each process builds its settings once at start-up from the environment (prefix `KOMPRESSOR_`,
nested delimiter `__`, e.g. `KOMPRESSOR_BROKER__URL`) and passes them down; nothing here is read at
import time. Credentials are `SecretStr`, so they never show in a repr, a log line or an error.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, SecretStr

from kompressor.crd import WEB_INPUT_FORMATS, InputFormat, Storage


def _networks(value: list[str]) -> list[str]:
    for network in value:
        ipaddress.ip_network(network)  # its ValueError names the entry; pydantic names the setting
    return value


Networks = Annotated[list[str], AfterValidator(_networks)]
"""A list of CIDRs, each checked when the settings are read: a typo stops the process at start with
the setting's name, not at its first connection."""

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
