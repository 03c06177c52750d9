"""The worker Deployment of a job, built as a plain dict (sample-controller's `newDeployment`).

What it is for: everything the operator creates in Kubernetes for a job's workers, as data: the
apps/v1 Deployment (`worker_deployment`), the body that scales it (`scale_patch`), and the job's
identity read from an object's metadata (`job_ref`). The handlers send what these return.

What it must never do: I/O, or import kopf, kubernetes or pika; nor put a credential's value in what
it builds: credentials reach the pod only as `secretKeyRef`s, by Secret name and key.

Choices, documented once here:

- Names and labels: the Deployment is `<job>-workers`. A job's name may be 253 characters, but a
  Deployment's name shows up in its pods' names and a label value is at most 63, so a longer name
  is cut and given a hash of the whole name: distinct jobs keep distinct names. The selector uses
  only labels that never change for a job (name, instance, kompressor.dev/job): a Deployment's
  selector is immutable.
- Drain, not kill: `terminationGracePeriodSeconds` is the task timeout + 30 s. On SIGTERM the worker
  stops taking tasks and finishes those it runs within `KOMPRESSOR_GRACE_SECONDS` (the task timeout
  + 20 s), which leaves it 10 s to close its connection before the kubelet's SIGKILL; a task it could
  not finish was never acked, so the broker redelivers it. Scale-down is therefore safe.
- Rollout: RollingUpdate with maxUnavailable 0 and maxSurge 1. A new pod must be ready before an old
  one is told to drain, so an update never lowers the job's capacity, and the job runs at most one pod
  over its share of the cluster budget while it rolls. Rollouts are rare (the spec fields that shape
  tasks are immutable; an operator upgrade or a resources edit starts one), so one at a time is fast
  enough. Recreate would drain every pod at once and stall the job.
- Hardening (DESIGN.md §7): no service-account token, non-root uid/gid 65532, seccomp
  RuntimeDefault, no privilege escalation, read-only root filesystem with every capability dropped,
  a bounded emptyDir at /tmp, no service-link environment variables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from kompressor.crd import CompressionJobSpec
from kompressor.messages import JobRef, task_queue
from kompressor_operator.settings import WorkerDefaults

CONTAINER = "worker"
NAME_SUFFIX = "-workers"
MAX_NAME = 63
RUN_AS = 65532
GRACE_MARGIN_SECONDS = 30
"""terminationGracePeriodSeconds = taskTimeoutSeconds + this."""
DRAIN_MARGIN_SECONDS = 20
"""KOMPRESSOR_GRACE_SECONDS = taskTimeoutSeconds + this: the worker is done before SIGKILL."""
TMP_SIZE_LIMIT = "1Gi"
"""/tmp holds at most a few inputs in flight per process (inputs are capped by maxInputBytes)."""

JOB_LABEL = "kompressor.dev/job"


def job_ref(meta: Mapping[str, Any]) -> JobRef:
    """The job an object's metadata names: its namespace, name and uid."""
    missing = [key for key in ("namespace", "name", "uid") if not meta.get(key)]
    if missing:
        raise ValueError(f"metadata lacks {', '.join(missing)}: cannot tell which job this is")
    return JobRef(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])


def worker_deployment_name(job_name: str) -> str:
    """`<job>-workers`, cut to 63 characters with a hash of the whole name when longer."""
    return _fit(job_name + NAME_SUFFIX, job_name, NAME_SUFFIX)


def _fit(whole: str, base: str, suffix: str = "") -> str:
    """`whole` when it fits in 63 characters; else `base` cut, a hash of `base`, then `suffix`."""
    if len(whole) <= MAX_NAME:
        return whole
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    head = base[: MAX_NAME - len(suffix) - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}{suffix}"


def _label_value(name: str) -> str:
    return _fit(name, name)


def selector_labels(job: JobRef) -> dict[str, str]:
    """The labels that select a job's worker pods: stable for the job's life."""
    return {
        "app.kubernetes.io/name": "kompressor-worker",
        "app.kubernetes.io/instance": _label_value(job.name),
        JOB_LABEL: _label_value(job.name),
    }


def worker_labels(job: JobRef) -> dict[str, str]:
    """Every label of the Deployment and its pods (Kubernetes' recommended labels and ours)."""
    return {
        **selector_labels(job),
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "kompressor",
        "app.kubernetes.io/managed-by": "kompressor-operator",
    }


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller owner reference to `owner`: the object itself (name and uid in its metadata) or a
    flat {apiVersion, kind, name, uid}."""
    meta = owner.get("metadata", owner)
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _secret(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _value(name: str, value: object) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


def worker_env(job: JobRef, spec: CompressionJobSpec, defaults: WorkerDefaults) -> list[dict[str, Any]]:
    """The worker container's environment: plain settings as values, credentials as secretKeyRefs."""
    storage = spec.storage
    storage_secret = storage.credentials_secret or defaults.storage_secret
    env = [
        _value("KOMPRESSOR_QUEUE", task_queue(job)),
        _value("KOMPRESSOR_PROCESSES", spec.workers.processes_per_pod),
        _value("KOMPRESSOR_HEALTH_PORT", defaults.health_port),
        _value("KOMPRESSOR_GRACE_SECONDS", spec.limits.task_timeout_seconds + DRAIN_MARGIN_SECONDS),
        _secret("KOMPRESSOR_BROKER__URL", defaults.broker_secret, "url"),
        _secret("KOMPRESSOR_STORAGE__ACCESS_KEY_ID", storage_secret, "accessKeyId"),
        _secret("KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY", storage_secret, "secretAccessKey"),
        _value("KOMPRESSOR_STORAGE__REGION", storage.region),
    ]
    if storage.endpoint_url:
        env.append(_value("KOMPRESSOR_STORAGE__ENDPOINT_URL", storage.endpoint_url))
    return env


def _resources(spec: CompressionJobSpec) -> dict[str, dict[str, str]]:
    resources = spec.workers.resources
    return {
        "requests": {name: str(value) for name, value in resources.requests.items()},
        "limits": {name: str(value) for name, value in resources.limits.items()},
    }


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def worker_deployment(
    job: JobRef,
    spec: CompressionJobSpec,
    defaults: WorkerDefaults,
    owner: Mapping[str, Any] | None,
    replicas: int | None,
) -> dict[str, Any]:
    """The apps/v1 Deployment running `replicas` worker pods for `job` (see the module docstring).

    None leaves `spec.replicas` out, for an external scaler to own (the API server defaults it to 1).
    """
    if replicas is not None and replicas < 0:
        raise ValueError(f"replicas {replicas} must not be negative")
    labels = worker_labels(job)
    metadata: dict[str, Any] = {
        "name": worker_deployment_name(job.name),
        "namespace": job.namespace,
        "labels": labels,
    }
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    container = {
        "name": CONTAINER,
        "image": defaults.image,
        "imagePullPolicy": defaults.image_pull_policy,
        "env": worker_env(job, spec, defaults),
        "ports": [{"name": "http", "containerPort": defaults.health_port, "protocol": "TCP"}],
        "resources": _resources(spec),
        "livenessProbe": _probe("/healthz", period=10, failures=3),
        "readinessProbe": _probe("/readyz", period=5, failures=2),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_spec = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.limits.task_timeout_seconds + GRACE_MARGIN_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}],
    }
    deployment_spec: dict[str, Any] = {} if replicas is None else {"replicas": replicas}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            **deployment_spec,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": selector_labels(job)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def scale_patch(replicas: int) -> dict[str, Any]:
    """The body that sets a Deployment's replicas through its `scale` subresource."""
    if replicas < 0:
        raise ValueError(f"replicas {replicas} must not be negative")
    return {"spec": {"replicas": replicas}}
