"""The worker's settings, read once from the environment at start-up (prefix KOMPRESSOR_).

The operator's Deployment (or local mode) sets KOMPRESSOR_QUEUE and the broker and storage
credentials; everything else has a default that suits a pod.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kompressor.settings import AllowedInputFormats, BrokerSettings, Networks, StorageSettings


class WorkerSettings(BaseSettings):
    """The worker's settings from KOMPRESSOR_* variables (operator builders.worker_settings_env
    renders them for the Deployment and local mode)."""

    model_config = SettingsConfigDict(env_prefix="KOMPRESSOR_", env_nested_delimiter="__", extra="ignore")

    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    queue: str = Field(min_length=1, description="The job's task queue to consume.")
    job_namespace: str = Field(default="", description="The job's namespace: a label on every metric.")
    job_name: str = Field(default="", description="The job's name: a label on every metric.")
    processes: int = Field(default=0, ge=0, description="Pool size; 0 = from the container's CPU quota.")
    prefetch: int = Field(default=0, ge=0, description="Unacked tasks held; 0 = processes × 2.")
    max_tasks_per_child: int = Field(default=200, ge=1, description="Recycle a child after this many.")
    memory_reserve_bytes: int = Field(
        default=192 * 2**20, ge=0, description="Memory kept for the parent process before sharing the limit."
    )
    health_port: int = Field(default=8080, ge=0, description="/healthz, /readyz, /metrics; 0 turns off.")
    grace_seconds: float = Field(default=150, gt=0, description="Drain time for in-flight tasks on SIGTERM.")
    url_allow_networks: Networks = Field(
        default_factory=list, description="CIDRs URL sources may reach although private (e.g. a test server)."
    )
    storage_endpoint_allow_networks: Networks | None = Field(
        default=None,
        description="When set, every S3 connection goes only to an address of the endpoint's host "
        "inside these CIDRs, judged at each connection (the operator sets it for a job's own endpoint).",
    )
    url_requests_per_second: float = Field(
        default=20.0, gt=0, description="Per worker and origin host, so an origin is not hammered."
    )
    allowed_input_formats: AllowedInputFormats
    log_format: str = Field(
        default="auto", pattern="^(auto|json|text)$", description="auto: JSON unless stderr is a terminal."
    )
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
