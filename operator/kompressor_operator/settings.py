"""The operator's settings, read once from the environment at start-up (prefix KOMPRESSOR_)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kompressor.settings import AllowedInputFormats, BrokerSettings, Networks, StorageSettings

OPERATOR_ENV = (
    "KOMPRESSOR_QUEUE",
    "KOMPRESSOR_JOB_NAMESPACE",
    "KOMPRESSOR_JOB_NAME",
    "KOMPRESSOR_PROCESSES",
    "KOMPRESSOR_HEALTH_PORT",
    "KOMPRESSOR_GRACE_SECONDS",
    "KOMPRESSOR_LOG_LEVEL",
    "KOMPRESSOR_LOG_FORMAT",
    "KOMPRESSOR_BROKER__URL",
    "KOMPRESSOR_STORAGE__ACCESS_KEY_ID",
    "KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY",
    "KOMPRESSOR_STORAGE__REGION",
    "KOMPRESSOR_STORAGE__ENDPOINT_URL",
    "KOMPRESSOR_STORAGE_ENDPOINT_ALLOW_NETWORKS",
    "KOMPRESSOR_ALLOWED_INPUT_FORMATS",
)
"""Worker variables the operator sets from the job and these defaults: extraEnv may not set them too
(a second entry with the same name would silently win or lose, depending on the kubelet). Others,
such as KOMPRESSOR_STORAGE__MAX_ATTEMPTS or KOMPRESSOR_BROKER__HEARTBEAT_SECONDS, are extraEnv's."""
TMP_VOLUME = "tmp"
"""The worker's own /tmp volume; extraVolumes may not reuse its name."""


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
        description="Secret with keys accessKeyId and secretAccessKey, used when a job names none; "
        "empty: no static keys, the workers use the S3 SDK's default credential chain (e.g. IRSA).",
    )
    health_port: int = Field(default=8080, description="Port of the worker's /healthz, /readyz, /metrics.")
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: str = Field(default="json", pattern="^(auto|json|text)$")
    # Pod settings, passed through to every worker pod as Kubernetes objects. A job's
    # spec.workers may override the placement ones (builders.worker_pod_settings says how).
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    priority_class_name: str = ""
    image_pull_secrets: list[dict[str, str]] = Field(default_factory=list, description="[{name: regcred}]")
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    pod_labels: dict[str, str] = Field(default_factory=dict)
    service_account_name: str = Field(
        default="",
        description="ServiceAccount (in each job's namespace) of worker pods; its token is mounted. "
        "Empty: the namespace's default account, with no token mounted.",
    )
    extra_env: list[dict[str, Any]] = Field(default_factory=list, description="Kubernetes EnvVar objects.")
    extra_volumes: list[dict[str, Any]] = Field(default_factory=list)
    extra_volume_mounts: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _no_clash_with_the_operators_own(self) -> WorkerDefaults:
        taken = [item.get("name", "") for item in self.extra_env if item.get("name") in OPERATOR_ENV]
        if taken:
            raise ValueError(f"extraEnv sets {', '.join(taken)}, which the operator sets for each job")
        if any(volume.get("name") == TMP_VOLUME for volume in self.extra_volumes):
            raise ValueError(f"extraVolumes: the name {TMP_VOLUME!r} is the worker's own /tmp")
        return self


class OperatorSettings(BaseSettings):
    """KOMPRESSOR_BROKER__URL, KOMPRESSOR_STORAGE__*, KOMPRESSOR_WORKER__IMAGE, ... (which namespaces
    are watched is kopf's --namespace / --all-namespaces)."""

    model_config = SettingsConfigDict(env_prefix="KOMPRESSOR_", env_nested_delimiter="__", extra="ignore")

    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    worker: WorkerDefaults = Field(default_factory=WorkerDefaults)
    max_total_workers: int = Field(default=100, ge=0, description="Worker pods across all jobs, at most.")
    poll_interval_seconds: float = Field(default=3.0, gt=0, description="How often each job is scaled.")
    metrics_port: int = Field(default=9090, description="Prometheus metrics port; 0 turns it off.")
    allowed_input_formats: AllowedInputFormats
    storage_endpoint_allow_networks: Networks = Field(
        default_factory=list,
        description="CIDRs a job's own S3 endpoint (spec.storage.endpointURL other than ours, with the "
        "job's own credentialsSecret) may resolve to; empty: no endpoint but ours (see endpoints.py).",
    )
    webhook_allow_networks: Networks = Field(
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
