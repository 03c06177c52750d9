"""The operator end to end on the real kube-apiserver, controller-manager, RabbitMQ and S3.

kopf runs the operator as the chart's ServiceAccount under the chart's RBAC; a node agent plays the
kubelet, running each worker Pod as a local process and draining it on deletion.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed import KubeAPI, RabbitMQ, S3Server
from testbed.process import wait_until
from tests.corpus import real_photos
from tests.dashboard import dashboard_series, missing_series
from tests.e2e.cluster import RELEASE_NAMESPACE, Cluster, install, job_manifest, replicas_over_time, scrape
from tests.jobs import upload

pytestmark = pytest.mark.kube

NAMESPACE = "shop"


@pytest.fixture(scope="module")
def cluster(kube: KubeAPI, rabbitmq: RabbitMQ, s3: S3Server, tmp_path_factory) -> Iterator[Cluster]:
    installed = install(kube, rabbitmq, s3, tmp_path_factory.mktemp("operator"), NAMESPACE)
    with installed.running():
        yield installed


def _photos_bucket(s3: S3Server, count: int) -> str:
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    photos = real_photos(max_side=900)
    files = {
        f"{i:03d}-{name}": body
        for i, (name, body) in enumerate(
            (n, b) for _ in range(count // len(photos) + 1) for n, b in photos.items()
        )
    }
    upload(s3, bucket, dict(list(files.items())[:count]))
    return bucket


def _manifest_ids(s3: S3Server, url: str) -> list[int]:
    bucket, key = url.removeprefix("s3://").split("/", 1)
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return sorted(json.loads(line)["id"] for line in body.splitlines())


def _events(cluster: Cluster, name: str) -> list[dict]:
    items = cluster.get("events", "--field-selector", f"involvedObject.name={name}")["items"]
    return sorted(items, key=lambda e: e.get("firstTimestamp") or "")


def _a_worker_metrics(cluster: Cluster, deployment: dict) -> str:
    """A running worker pod's /metrics, on the port its scrape annotation names, once it has ended a
    task (its task series exist from then on)."""
    port = int(deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"])
    scraped: list[str] = []

    def ended_a_task() -> bool:
        prefix = f"{cluster.namespace}/{deployment['metadata']['name']}-"
        for pod in cluster.agent.running_pods():
            host_port = cluster.agent.host_ports(pod).get(port)
            if pod.startswith(prefix) and host_port:
                text = scrape(host_port)
                if "kompressor_tasks_total{" in text:
                    scraped.append(text)
                    return True
        return False

    wait_until(ended_a_task, 60, "a worker pod that ended a task")
    return scraped[0]


def test_a_job_runs_scales_with_the_backlog_and_finishes_exactly(cluster: Cluster, s3: S3Server):
    total = 40
    bucket = _photos_bucket(s3, total)
    samples: list = []
    stop = threading.Event()
    sampler = threading.Thread(target=replicas_over_time, args=(cluster, "catalog", stop, samples))
    applied = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=job_manifest("catalog", bucket, s3, cluster.webhook))
    sampler.start()
    try:
        wait_until(
            lambda: cluster.kubectl("get", "deployment", "catalog-workers", check=False).returncode == 0,
            30,
            "the worker Deployment",
        )
        deployment = cluster.get("deployment", "catalog-workers")
        wait_until(
            lambda: int(cluster.get("deployment", "catalog-workers")["spec"].get("replicas", 0)) > 0,
            30,
            "a scale-up",
        )
        first_scale_up = time.monotonic() - applied
        worker_metrics = _a_worker_metrics(cluster, deployment)
        operator_metrics = cluster.operator_metrics()
        status = cluster.wait_phase("catalog", {"Succeeded", "Failed"}, 240)
        wait_until(lambda: not cluster.agent.running_pods(), 60, "worker pods drained")
    finally:
        stop.set()
        sampler.join()

    # The Deployment the operator made: owned by the job, least privilege, secrets by reference.
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "CompressionJob"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KOMPRESSOR_BROKER__URL"]["valueFrom"]["secretKeyRef"]["name"] == "kompressor-broker"
    assert "value" not in env["KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY"]
    assert pod["terminationGracePeriodSeconds"] > 120

    # Exact counts, a manifest line per input, workers back to zero, the webhook told and signed.
    assert (status["phase"], status["total"], status["succeeded"], status["failed"]) == (
        "Succeeded",
        total,
        total,
        0,
    )
    assert _manifest_ids(s3, status["manifest"]) == list(range(total))
    assert status["workers"]["desired"] == 0
    assert cluster.get("deployment", "catalog-workers")["spec"]["replicas"] == 0
    wait_until(lambda: len(cluster.webhook.received) >= 1, 30, "the finish webhook")
    headers, body = cluster.webhook.received[-1]
    assert cluster.webhook.signed_correctly(headers, body)
    assert json.loads(body)["status"]["succeeded"] == total

    # Replicas followed the backlog: up while there was work, 0 at the end, never above maxReplicas.
    replicas = [r for _, r, _ in samples]
    assert max(replicas) >= 2 and max(replicas) <= 3 and replicas[-1] == 0
    scaled = [e["message"] for e in _events(cluster, "catalog") if e["reason"] == "Scaled"]
    assert scaled and "0 → " in scaled[0]
    reasons = {e["reason"] for e in _events(cluster, "catalog")}
    assert {"Started", "Listed", "Scaled", "Succeeded"} <= reasons

    # The real /metrics of the operator and of a worker pod hold every series the dashboard queries,
    # with its labels; the finished job's series are gone from the operator's.
    assert missing_series(operator_metrics + worker_metrics, dashboard_series()) == []
    families = text_string_to_metric_families(operator_metrics + worker_metrics)
    jobs = {(s.labels["namespace"], s.labels["compressionjob"]) for f in families for s in f.samples}
    assert jobs == {(NAMESPACE, "catalog")}
    assert 'compressionjob="catalog"' not in cluster.operator_metrics()
    print(f"\napply → first scale-up: {first_scale_up:.1f}s")
    print("scale decisions:\n  " + "\n  ".join(scaled))


def test_suspend_keeps_the_queue_and_resume_finishes(cluster: Cluster, s3: S3Server):
    bucket = _photos_bucket(s3, 12)
    cluster.kubectl("apply", "-f", "-", input=job_manifest("paused", bucket, s3, suspend=True))
    status = cluster.wait_phase("paused", {"Suspended"}, 60)
    assert status["workers"]["desired"] == 0
    assert cluster.get("deployment", "paused-workers")["spec"]["replicas"] == 0
    cluster.kubectl("patch", "compjob", "paused", "--type=merge", "-p", '{"spec": {"suspend": false}}')
    status = cluster.wait_phase("paused", {"Succeeded", "Failed"}, 180)
    assert (status["phase"], status["succeeded"]) == ("Succeeded", 12)


def test_deleting_a_job_mid_run_leaves_nothing_behind(cluster: Cluster, rabbitmq: RabbitMQ, s3: S3Server):
    bucket = _photos_bucket(s3, 60)
    cluster.kubectl(
        "apply", "-f", "-", input=job_manifest("doomed", bucket, s3, output={"format": "avif", "quality": 40})
    )
    wait_until(lambda: cluster.job_status("doomed").get("succeeded", 0) >= 1, 120, "some progress")
    uid = cluster.get("compjob", "doomed")["metadata"]["uid"].replace("-", "")[:8]
    cluster.kubectl("delete", "compjob", "doomed", "--wait=true", "--timeout=90s")
    wait_until(lambda: f".doomed.{uid}." not in rabbitmq.ctl("list_queues", "name"), 30, "queues deleted")
    assert 'compressionjob="doomed"' not in cluster.operator_metrics()
    wait_until(
        lambda: cluster.kubectl("get", "deployment", "doomed-workers", check=False).returncode != 0,
        60,
        "the Deployment collected by owner reference",
    )
    wait_until(lambda: not [p for p in cluster.agent.running_pods() if "/doomed-" in p], 90, "pods gone")


def test_an_operator_killed_mid_job_resumes_with_exact_counts(cluster: Cluster, s3: S3Server):
    total = 48
    bucket = _photos_bucket(s3, total)
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=job_manifest("resumed", bucket, s3, output={"format": "avif", "quality": 45}),
    )
    wait_until(lambda: cluster.job_status("resumed").get("succeeded", 0) >= 4, 120, "some progress")
    cluster.kill_operator()
    done_at_kill = cluster.job_status("resumed").get("succeeded", 0)
    cluster.start_operator()
    status = cluster.wait_phase("resumed", {"Succeeded", "Failed"}, 240)
    assert done_at_kill < total
    assert (status["phase"], status["total"], status["succeeded"]) == ("Succeeded", total, total)
    assert _manifest_ids(s3, status["manifest"]) == list(range(total))


def test_a_job_waits_for_a_missing_secret_and_starts_when_it_appears(cluster: Cluster, s3: S3Server):
    bucket = _photos_bucket(s3, 6)
    storage = {"endpointURL": s3.endpoint_url, "credentialsSecret": "late-keys"}
    cluster.kubectl("apply", "-f", "-", input=job_manifest("patient", bucket, s3, storage=storage))

    def waiting() -> dict | None:
        conditions = {c["type"]: c for c in cluster.job_status("patient").get("conditions", [])}
        return conditions.get("SecretsReady")

    wait_until(lambda: waiting() is not None, 60, "the SecretsReady condition")
    condition = waiting()
    assert (condition["status"], condition["reason"]) == ("False", "SecretMissing")
    assert "spec.storage.credentialsSecret" in condition["message"] and "late-keys" in condition["message"]
    assert cluster.job_status("patient")["phase"] == "Pending"
    warnings = [e for e in _events(cluster, "patient") if e["reason"] == "SecretMissing"]
    assert warnings and warnings[0]["type"] == "Warning" and "late-keys" in warnings[0]["message"]

    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "late-keys",
        f"--from-literal=accessKeyId={s3.access_key}",
        f"--from-literal=secretAccessKey={s3.secret_key}",
    )
    status = cluster.wait_phase("patient", {"Succeeded", "Failed"}, 180)
    assert (status["phase"], status["succeeded"]) == ("Succeeded", 6)
    assert waiting()["status"] == "True"


def test_the_operator_role_is_enough_and_no_more(cluster: Cluster, kube: KubeAPI):
    def can(*args: str) -> bool:
        result = kube.kubectl("auth", "can-i", *args, kubeconfig=cluster.operator_kubeconfig, check=False)
        return result.stdout.strip() == "yes"

    assert can("patch", "deployments/scale", "-n", NAMESPACE)
    assert can("patch", "compressionjobs.kompressor.dev", "--subresource=status", "-n", NAMESPACE)
    assert can("get", "secrets", "-n", NAMESPACE)
    assert not can("get", "secrets", "-n", "default")
    assert not can("get", "secrets", "-n", RELEASE_NAMESPACE)
    assert not can("delete", "namespaces")
    assert not can("create", "pods", "-n", NAMESPACE)
    assert not can("delete", "deployments", "-n", NAMESPACE)
    assert Path(cluster.operator_kubeconfig).exists()
