"""The node agent plays the kubelet well enough for a worker Deployment to run for real: the
controller-manager's ReplicaSet makes the Pod, the agent binds and runs it with the environment its
spec names (credentials from Secrets), the Deployment counts it ready, it compresses tasks from
RabbitMQ into S3, a crash restarts it, and scaling to 0 drains it (SIGTERM, exit 0) before the Pod goes.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from kompressor.crd import CompressionJobSpec
from kompressor.messages import JobRef, Outcome
from kompressor_operator import broker
from kompressor_operator.builders import JOB_LABEL, scale_patch, worker_deployment
from kompressor_operator.settings import WorkerDefaults
from testbed import KubeAPI, RabbitMQ, S3Server
from testbed.nodeagent import NodeAgent
from testbed.process import wait_until
from tests.corpus import real_photos
from tests.jobs import collect_results, job_spec, publish_job, upload

pytestmark = pytest.mark.kube

DEFAULTS = WorkerDefaults()  # Secrets kompressor-broker (url), kompressor-storage (accessKeyId, ...)


class Cluster:
    """The test's view of the API server, in one namespace of its own."""

    def __init__(self, kube: KubeAPI, namespace: str) -> None:
        self.namespace = namespace
        self.api = config.new_client_from_config(config_file=str(kube.kubeconfig_path))
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)

    def pods(self, job: JobRef) -> list[Any]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=f"{JOB_LABEL}={job.name}").items

    def pod(self, job: JobRef) -> Any:
        pods = self.pods(job)
        assert len(pods) == 1, [p.metadata.name for p in pods]
        return pods[0]

    def deployment(self, name: str) -> Any:
        return self.apps.read_namespaced_deployment(name, self.namespace)

    def put_secret(self, name: str, data: dict[str, str]) -> None:
        body = {"metadata": {"name": name}, "stringData": data}
        try:
            self.core.create_namespaced_secret(self.namespace, body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            self.core.replace_namespaced_secret(name, self.namespace, body)


@pytest.fixture
def cluster(kube: KubeAPI, tmp_path: Path) -> Iterator[tuple[Cluster, NodeAgent]]:
    """A namespace and a node agent for it. Teardown deletes the namespace while the agent still
    runs, so the namespace controller's Pod deletions are drained and finished by the agent."""
    namespace = f"agent-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", namespace)
    cluster = Cluster(kube, namespace)
    # The ServiceAccount admission plugin refuses Pods until the namespace's default account exists.
    wait_until(
        lambda: cluster.core.read_namespaced_service_account("default", namespace) is not None,
        30,
        f"serviceaccount {namespace}/default",
    )
    agent = NodeAgent(kube, log_dir=tmp_path / "pods", namespaces=[namespace])
    try:
        with agent:
            yield cluster, agent
            kube.kubectl("delete", "namespace", namespace, "--wait=false")
            wait_until(lambda: not cluster.core.list_namespaced_pod(namespace).items, 30, "pods deleted")
        assert agent.errors == []
    finally:
        cluster.api.close()


def _job(cluster: Cluster) -> JobRef:
    return JobRef(namespace=cluster.namespace, name=f"photos-{uuid.uuid4().hex[:6]}", uid=str(uuid.uuid4()))


def _spec(s3: S3Server, bucket: str) -> CompressionJobSpec:
    return job_spec(
        bucket,
        storage={"endpointURL": s3.endpoint_url, "region": s3.region},
        workers={"processesPerPod": 1},
    )


def _declare_queues(rabbitmq: RabbitMQ, job: JobRef, spec: CompressionJobSpec) -> None:
    connection = broker.connect(rabbitmq.url)
    try:
        broker.declare_job_queues(connection.channel(), job, spec.limits)
    finally:
        connection.close()


def _secrets(cluster: Cluster, rabbitmq: RabbitMQ, s3: S3Server) -> None:
    cluster.put_secret(DEFAULTS.broker_secret, {"url": rabbitmq.url})
    cluster.put_secret(
        DEFAULTS.storage_secret, {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key}
    )


def _create_deployment(cluster: Cluster, job: JobRef, spec: CompressionJobSpec) -> str:
    body = worker_deployment(job, spec, DEFAULTS, owner=None, replicas=1)
    cluster.apps.create_namespaced_deployment(cluster.namespace, body)
    return body["metadata"]["name"]


def _container_status(pod: Any) -> Any:
    statuses = pod.status.container_statuses or []
    assert [s.name for s in statuses] == ["worker"]
    return statuses[0]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _ready(cluster: Cluster, deployment: str) -> bool:
    return cluster.deployment(deployment).status.ready_replicas == 1


def test_a_deployment_pod_runs_serves_restarts_and_drains(
    cluster: tuple[Cluster, NodeAgent], rabbitmq: RabbitMQ, s3: S3Server, bucket: str
) -> None:
    kube, agent = cluster
    job, spec = _job(kube), _spec(s3, bucket)
    _secrets(kube, rabbitmq, s3)
    _declare_queues(rabbitmq, job, spec)
    deployment = _create_deployment(kube, job, spec)

    # The ReplicaSet's Pod is bound to the agent's node, runs, and the Deployment counts it ready.
    wait_until(lambda: _ready(kube, deployment), 30, "deployment readyReplicas == 1")
    pod = kube.pod(job)
    key = f"{kube.namespace}/{pod.metadata.name}"
    assert pod.spec.node_name == agent.node_name
    assert pod.metadata.owner_references[0].kind == "ReplicaSet"
    assert pod.status.phase == "Running"
    assert (pod.status.pod_ip, pod.status.host_ip) == ("127.0.0.1", "127.0.0.1")
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    status = _container_status(pod)
    assert (status.ready, status.started, status.restart_count) == (True, True, 0)
    assert status.state.running.started_at is not None
    assert agent.actions(key) == ["bound", "started", "ready"]
    assert agent.running_pods() == [key]

    # Its environment is exactly the pod spec's, credentials read from the Secrets, and its own
    # health port instead of the container's 8080 (every pod shares the host's ports).
    process = agent.process_of(key)
    assert process is not None
    env = _environ(process.pid)
    assert {name for name in env if name.startswith("KOMPRESSOR_")} == {
        var.name for var in pod.spec.containers[0].env
    }
    assert env["KOMPRESSOR_BROKER__URL"] == rabbitmq.url
    assert env["KOMPRESSOR_STORAGE__ACCESS_KEY_ID"] == s3.access_key
    assert env["KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY"] == s3.secret_key
    assert env["KOMPRESSOR_STORAGE__ENDPOINT_URL"] == s3.endpoint_url
    assert env["KOMPRESSOR_HEALTH_PORT"] not in ("8080", "0")

    # It does the work: every published task reports done.
    upload(s3, bucket, real_photos(limit=3, max_side=320))
    published = publish_job(rabbitmq, s3, job, spec)
    assert published == 3
    results = collect_results(rabbitmq, job, published, timeout=30).final()
    assert sorted(results) == [0, 1, 2]
    assert {r.outcome for r in results.values()} == {Outcome.done}, results

    # A crash (kill -9 of the worker and its pool) is restarted like restartPolicy Always.
    os.killpg(process.pid, signal.SIGKILL)

    def restarted_and_ready() -> bool:
        status = _container_status(kube.pod(job))
        return status.restart_count == 1 and status.ready and _ready(kube, deployment)

    wait_until(restarted_and_ready, 30, "the crashed worker restarted and ready")
    status = _container_status(kube.pod(job))
    assert status.last_state.terminated.exit_code == 128 + signal.SIGKILL
    assert agent.actions(key) == ["bound", "started", "ready", "exited 137", "started", "ready"]

    # Scale to 0: the Pod is deleted with grace, the agent SIGTERMs, the worker drains and exits 0,
    # and the agent removes the Pod for good.
    kube.apps.patch_namespaced_deployment_scale(deployment, kube.namespace, scale_patch(0))
    started = time.monotonic()
    wait_until(lambda: not kube.pods(job), 30, "the pod deleted")
    assert time.monotonic() - started < 20  # drained, not killed at the end of a 90 s grace period
    # The agent logs "deleted" after the API's delete returns: the pod may be gone a moment before.
    wait_until(lambda: agent.actions(key)[-1:] == ["deleted"], 10, "the agent logged the deletion")
    assert agent.actions(key)[-3:] == ["sigterm", "exited 0", "deleted"]
    assert agent.running_pods() == []
    wait_until(lambda: not kube.deployment(deployment).status.replicas, 10, "deployment status replicas 0")


def test_a_missing_secret_is_a_config_error_until_it_exists(
    cluster: tuple[Cluster, NodeAgent], rabbitmq: RabbitMQ, s3: S3Server, bucket: str
) -> None:
    kube, agent = cluster
    job, spec = _job(kube), _spec(s3, bucket)
    kube.put_secret(DEFAULTS.storage_secret, {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key})
    _declare_queues(rabbitmq, job, spec)
    deployment = _create_deployment(kube, job, spec)

    def waiting(message: str) -> bool:
        pod = kube.pod(job)
        state = _container_status(pod).state
        return (
            pod.status.phase == "Pending"
            and state.waiting is not None
            and (state.waiting.reason, state.waiting.message) == ("CreateContainerConfigError", message)
        )

    wait_until(
        lambda: waiting(f'secret "{DEFAULTS.broker_secret}" not found'), 30, "CreateContainerConfigError"
    )
    pod = kube.pod(job)
    key = f"{kube.namespace}/{pod.metadata.name}"
    assert pod.spec.node_name == agent.node_name
    assert agent.running_pods() == []
    assert not _container_status(pod).ready

    # The Secret exists but lacks the key: still an error, now naming the key.
    kube.put_secret(DEFAULTS.broker_secret, {"uri": rabbitmq.url})
    missing_key = f"couldn't find key url in Secret {kube.namespace}/{DEFAULTS.broker_secret}"
    wait_until(lambda: waiting(missing_key), 15, "CreateContainerConfigError naming the key")
    assert agent.running_pods() == []

    # Fixed: the agent retries, the container starts and becomes ready.
    kube.put_secret(DEFAULTS.broker_secret, {"url": rabbitmq.url})
    wait_until(lambda: _ready(kube, deployment), 30, "deployment readyReplicas == 1")
    assert agent.running_pods() == [key]
    assert agent.actions(key) == [
        "bound",
        f'CreateContainerConfigError: secret "{DEFAULTS.broker_secret}" not found',
        f"CreateContainerConfigError: {missing_key}",
        "started",
        "ready",
    ]
