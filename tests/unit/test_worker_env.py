"""One renderer of a worker's environment (builders.worker_settings_env) for the Deployment and for
local mode: its keys are settings the worker reads, and both give the worker the same settings."""

from __future__ import annotations

import inspect

from pydantic import BaseModel

from kompressor.crd import CompressionJobSpec, InputFormat
from kompressor.messages import JobRef, task_queue
from kompressor.settings import StorageSettings
from kompressor_operator import local
from kompressor_operator.builders import (
    DRAIN_MARGIN_SECONDS,
    GRACE_MARGIN_SECONDS,
    SecretRef,
    worker_deployment,
    worker_env,
    worker_settings_env,
)
from kompressor_operator.local import worker_environment
from kompressor_operator.settings import OperatorSettings, WorkerDefaults
from kompressor_worker.settings import WorkerSettings

JOB = JobRef(namespace="ns", name="photos", uid="0f3c2a1e-0000-4000-8000-000000000001")
SPEC = CompressionJobSpec.model_validate(
    {
        "source": {"s3": {"bucket": "raw", "prefix": "in/"}},
        "destination": {"s3": {"bucket": "out", "prefix": "out/"}},
        "storage": {"endpoint_url": "http://s3.local:8333", "credentials_secret": "s3-creds"},
        "limits": {"taskTimeoutSeconds": 90},
        "workers": {"logLevel": "DEBUG"},
    }
)


def _setting_names(model: type[BaseModel], prefix: str = "KOMPRESSOR_") -> set[str]:
    """The environment variables a pydantic-settings model reads (nested with `__`)."""
    names = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _setting_names(annotation, f"{prefix}{name.upper()}__")
        else:
            names.add(prefix + name.upper())
    return names


def _full_env() -> dict[str, str | SecretRef]:
    return worker_settings_env(
        JOB,
        SPEC,
        broker_url="amqp://rabbit",
        access_key_id="id",
        secret_access_key="secret",
        region="eu-west-1",
        endpoint_url="http://s3.local:8333",
        health_port=8080,
        log_level="INFO",
        log_format="json",
        allowed_input_formats=[InputFormat.jpeg, InputFormat.png],
        endpoint_allow_networks=["10.20.0.0/16"],
    )


def test_every_key_rendered_is_a_setting_the_worker_reads():
    read = _setting_names(WorkerSettings)
    rendered = set(_full_env())
    assert rendered <= read, f"the worker ignores {sorted(rendered - read)}"
    # And what the worker needs from us (no default) is rendered.
    required = {
        f"KOMPRESSOR_{name.upper()}"
        for name, info in WorkerSettings.model_fields.items()
        if info.is_required()
    }
    assert required <= rendered


def test_the_deployment_and_local_mode_give_a_worker_the_same_settings(monkeypatch):
    """The local env, read by WorkerSettings, holds the Deployment's values (secrets aside)."""
    settings = OperatorSettings.model_validate({"broker": {"url": "amqp://rabbit"}})
    storage = StorageSettings(endpoint_url="http://s3.local:8333", access_key_id="id", secret_access_key="s")
    local = worker_environment(JOB, SPEC, settings, storage)
    deployment = {item["name"]: item for item in worker_env(JOB, SPEC, WorkerDefaults(log_format="json"))}
    assert set(local) - {"KOMPRESSOR_STORAGE__ACCESS_KEY_ID", "KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY"} <= set(
        deployment
    )
    for name in (
        "KOMPRESSOR_QUEUE",
        "KOMPRESSOR_PROCESSES",
        "KOMPRESSOR_GRACE_SECONDS",
        "KOMPRESSOR_LOG_LEVEL",
    ):
        assert local[name] == deployment[name]["value"], name
    for name, value in local.items():
        monkeypatch.setenv(name, value)
    read = WorkerSettings()
    assert read.queue == task_queue(JOB)
    assert read.grace_seconds == 90 + DRAIN_MARGIN_SECONDS
    assert read.storage.access_key_id.get_secret_value() == "id"
    assert deployment["KOMPRESSOR_BROKER__URL"]["valueFrom"]["secretKeyRef"]["key"] == "url"


def test_local_mode_drains_and_kills_with_the_deployments_margins():
    """The Deployment's kubelet kills after taskTimeout + GRACE_MARGIN_SECONDS (30 s), the worker
    drains within taskTimeout + DRAIN_MARGIN_SECONDS (20 s); local mode's processes are given the
    same (they were 10 and 10 s)."""
    pod = worker_deployment(JOB, SPEC, WorkerDefaults(), None, 1)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 90 + GRACE_MARGIN_SECONDS
    assert (GRACE_MARGIN_SECONDS, DRAIN_MARGIN_SECONDS) == (30, 20)
    source = inspect.getsource(local.run_job)
    assert "grace_seconds=spec.limits.task_timeout_seconds + GRACE_MARGIN_SECONDS" in source
