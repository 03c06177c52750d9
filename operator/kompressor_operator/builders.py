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
  not finish was never acked, so the broker redelivers it. Scale-down is therefore safe. Local mode's
  worker processes get the same two margins (`worker_settings_env`, local.run_job).
- Rollout: RollingUpdate with maxUnavailable 0 and maxSurge 1. A new pod must be ready before an old
  one is told to drain, so an update never lowers the job's capacity, and the job runs at most one pod
  over its share of the cluster budget while it rolls. Rollouts are rare (the spec fields that shape
  tasks are immutable; an operator upgrade or a resources edit starts one), so one at a time is fast
  enough. Recreate would drain every pod at once and stall the job.
- Hardening (docs/architecture.md, Security): no service-account token, non-root uid/gid 65532, seccomp
  RuntimeDefault, no privilege escalation, read-only root filesystem with every capability dropped,
  a bounded emptyDir at /tmp, no service-link environment variables. One exception: when the chart
  names a worker ServiceAccount (worker.serviceAccountName), its token is mounted, since that
  account exists to give the pods an identity (IRSA, workload identity; IRSA pods with the token
  unmounted fail to read it: aws/amazon-eks-pod-identity-webhook#67).
- Pod settings (`worker_pod_settings`): the chart's worker.* defaults, with a job's
  spec.workers overrides of placement and priority. Maps merge key by key and the job wins
  (nodeSelector: a job adds a node pool label and keeps the cluster's `kubernetes.io/os`); a list
  replaces (tolerations: it has no key to merge by, and a job must be able to drop one); affinity
  merges per kind (nodeAffinity, podAffinity, podAntiAffinity), each replaced whole, because its
  terms are lists. The chart's podLabels never override the labels the selector uses.
- Storage credentials: the job's Secret, else the chart's worker.storageSecret; when neither is
  named, no key variables are set and the S3 SDK's default credential chain is used.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from kompressor import inputs
from kompressor.crd import WEB_INPUT_FORMATS, CompressionJobSpec, InputFormat, Workers
from kompressor.messages import JobRef, task_queue
from kompressor_operator.settings import TMP_VOLUME, WorkerDefaults

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


@dataclass(frozen=True)
class SecretRef:
    """A credential a pod reads from a Secret: its value never appears in what is built."""

    secret: str
    key: str


def worker_settings_env(
    job: JobRef,
    spec: CompressionJobSpec,
    *,
    broker_url: str | SecretRef,
    access_key_id: str | SecretRef | None,
    secret_access_key: str | SecretRef | None,
    region: str,
    endpoint_url: str | None,
    health_port: int,
    log_level: str | None,
    log_format: str,
    allowed_input_formats: Collection[InputFormat],
    endpoint_allow_networks: Collection[str] | None = None,
) -> dict[str, str | SecretRef]:
    """The environment a worker reads its settings from (kompressor_worker.settings.WorkerSettings),
    for the Deployment (credentials as SecretRefs) and for local mode's processes (values alike).
    The drain time is the same everywhere: the task timeout + DRAIN_MARGIN_SECONDS. A None or
    empty value is left out: the worker's default applies. `endpoint_allow_networks`: what each of
    the worker's S3 connections is judged against (endpoints.guarded_networks; None: not judged)."""
    env: dict[str, str | SecretRef | None] = {
        "KOMPRESSOR_QUEUE": task_queue(job),
        "KOMPRESSOR_JOB_NAMESPACE": job.namespace,
        "KOMPRESSOR_JOB_NAME": job.name,
        "KOMPRESSOR_PROCESSES": str(spec.workers.processes_per_pod),
        "KOMPRESSOR_HEALTH_PORT": str(health_port),
        "KOMPRESSOR_GRACE_SECONDS": str(spec.limits.task_timeout_seconds + DRAIN_MARGIN_SECONDS),
        "KOMPRESSOR_LOG_LEVEL": log_level,
        "KOMPRESSOR_LOG_FORMAT": log_format,
        "KOMPRESSOR_BROKER__URL": broker_url,
        inputs.SETTING_ENV: json.dumps([f.value for f in InputFormat if f in allowed_input_formats]),
        "KOMPRESSOR_STORAGE__ACCESS_KEY_ID": access_key_id,
        "KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY": secret_access_key,
        "KOMPRESSOR_STORAGE__REGION": region,
        "KOMPRESSOR_STORAGE__ENDPOINT_URL": endpoint_url,
        "KOMPRESSOR_STORAGE_ENDPOINT_ALLOW_NETWORKS": None
        if endpoint_allow_networks is None
        else json.dumps(list(endpoint_allow_networks)),
    }
    return {name: value for name, value in env.items() if value}


def worker_env(
    job: JobRef,
    spec: CompressionJobSpec,
    defaults: WorkerDefaults,
    allowed_input_formats: Collection[InputFormat] = WEB_INPUT_FORMATS,
    endpoint_allow_networks: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """The worker container's environment: plain settings as values, credentials as secretKeyRefs.
    The installation's allowed input formats go along: a worker refuses inputs beyond them too. The
    S3 endpoint and region are the spec's as given (the controller fills in the operator's own
    for a job that names none, so workers reach the store the operator lists); a job's own endpoint
    comes with the networks its connections are judged against."""
    storage = spec.storage
    storage_secret = storage.credentials_secret or defaults.storage_secret
    env = worker_settings_env(
        job,
        spec,
        broker_url=SecretRef(defaults.broker_secret, "url"),
        access_key_id=SecretRef(storage_secret, "accessKeyId") if storage_secret else None,
        secret_access_key=SecretRef(storage_secret, "secretAccessKey") if storage_secret else None,
        region=storage.region,
        endpoint_url=storage.endpoint_url,
        health_port=defaults.health_port,
        log_level=spec.workers.log_level or defaults.log_level,
        log_format=defaults.log_format,
        allowed_input_formats=allowed_input_formats,
        endpoint_allow_networks=endpoint_allow_networks,
    )
    rendered = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": value.secret, "key": value.key}}}
        if isinstance(value, SecretRef)
        else {"name": name, "value": value}
        for name, value in env.items()
    ]
    return rendered + copy.deepcopy(defaults.extra_env)


def worker_pod_settings(workers: Workers, defaults: WorkerDefaults) -> dict[str, Any]:
    """The pod spec fields set by the chart's worker.* defaults and a job's spec.workers overrides
    (merge rules in the module docstring); a field neither sets is left out."""
    node_selector = {**defaults.node_selector, **(workers.node_selector or {})}
    tolerations = (
        [t.model_dump(by_alias=True, exclude_none=True) for t in workers.tolerations]
        if workers.tolerations is not None
        else defaults.tolerations
    )
    affinity = {**defaults.affinity, **(workers.affinity or {})}
    priority_class = workers.priority_class_name or defaults.priority_class_name
    account = defaults.service_account_name
    fields: dict[str, Any] = {
        "nodeSelector": node_selector,
        "tolerations": copy.deepcopy(tolerations),
        "affinity": copy.deepcopy(affinity),
        "priorityClassName": priority_class,
        "imagePullSecrets": copy.deepcopy(defaults.image_pull_secrets),
        "serviceAccountName": account,
    }
    return {name: value for name, value in fields.items() if value}


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
    allowed_input_formats: Collection[InputFormat] = WEB_INPUT_FORMATS,
    endpoint_allow_networks: Collection[str] | None = None,
) -> dict[str, Any]:
    """The apps/v1 Deployment running `replicas` worker pods for `job` (see the module docstring).

    None leaves `spec.replicas` out, for an external scaler to own (the API server defaults it to 1).
    `endpoint_allow_networks`: see `worker_env`.
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
        "env": worker_env(job, spec, defaults, allowed_input_formats, endpoint_allow_networks),
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
        "volumeMounts": [
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            *copy.deepcopy(defaults.extra_volume_mounts),
        ],
    }
    pod_settings = worker_pod_settings(spec.workers, defaults)
    pod_spec = {
        **pod_settings,
        # Only an account named for the workers' identity gets its token (see the module docstring).
        "automountServiceAccountToken": "serviceAccountName" in pod_settings,
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
        "volumes": [
            {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
            *copy.deepcopy(defaults.extra_volumes),
        ],
    }
    # The chart's podAnnotations win over the scrape annotations (a team may scrape otherwise).
    template_metadata: dict[str, Any] = {
        "labels": {**defaults.pod_labels, **labels},
        "annotations": {**scrape_annotations(defaults.health_port), **defaults.pod_annotations},
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
            "template": {"metadata": template_metadata, "spec": pod_spec},
        },
    }


def scrape_annotations(port: int) -> dict[str, str]:
    """The annotations a plain Prometheus' `kubernetes_sd` pod job keeps by convention: scrape this
    pod's /metrics on the health port. (The chart's PodMonitor selects the pods by label instead.)"""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def scale_patch(replicas: int) -> dict[str, Any]:
    """The body that sets a Deployment's replicas (a patch of the Deployment or of its `scale`
    subresource)."""
    if replicas < 0:
        raise ValueError(f"replicas {replicas} must not be negative")
    return {"spec": {"replicas": replicas}}
