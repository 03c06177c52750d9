"""The operator's settings, read once from the environment at start-up (prefix KOMPRESSOR_)."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kompressor.settings import AllowedInputFormats, BrokerSettings, StorageSettings


class WorkerDefaults(BaseModel):
    """What the operator puts in every worker Deployment it creates."""

    image: str = Field(default="ghcr.io/kompressor/worker:0.1.0", description="Worker container image.")
    image_pull_policy: str = Field(default="IfNotPresent")
    broker_secret: str = Field(
        default="kompressor-broker",
        description="Secret (in each job's namespace) whose key `url` is the workers' AMQP URL.",
    )
    storage_secret: str = Field(
        default="kompressor-storage",
        description="Secret with keys accessKeyId and secretAccessKey, used when a job names none.",
    )
    health_port: int = Field(default=8080, description="Port of the worker's /healthz, /readyz, /metrics.")


class OperatorSettings(BaseSettings):
    """KOMPRESSOR_BROKER__URL, KOMPRESSOR_STORAGE__*, KOMPRESSOR_NAMESPACES, KOMPRESSOR_WORKER__IMAGE, ..."""

    model_config = SettingsConfigDict(env_prefix="KOMPRESSOR_", env_nested_delimiter="__", extra="ignore")

    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    worker: WorkerDefaults = Field(default_factory=WorkerDefaults)
    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty watches all (needs a ClusterRole)."
    )
    max_total_workers: int = Field(default=100, ge=0, description="Worker pods across all jobs, at most.")
    poll_interval_seconds: float = Field(default=3.0, gt=0, description="How often each job is scaled.")
    metrics_port: int = Field(default=9090, description="Prometheus metrics port; 0 turns it off.")
    allowed_input_formats: AllowedInputFormats
    storage_endpoint_allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs a job's own S3 endpoint (spec.storage.endpointURL other than ours, with the "
        "job's own credentialsSecret) may resolve to; empty: no endpoint but ours (see endpoints.py).",
    )
    webhook_allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs a finish webhook may reach although non-public (e.g. an in-cluster receiver).",
    )
    webhook_attempts: int = Field(
        default=5, ge=1, le=20, description="Attempts at delivering a finish webhook before it fails."
    )
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Each webhook attempt's one deadline: name lookup, connect, send, the answer's headers.",
    )

    @field_validator("storage_endpoint_allow_networks", "webhook_allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network)  # a ValueError names the entry: the operator does not start
        return value
