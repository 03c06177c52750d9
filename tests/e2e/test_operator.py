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

from testbed import KubeAPI, RabbitMQ, S3Server
from testbed.process import wait_until
from tests.corpus import real_photos
from tests.e2e.cluster import RELEASE_NAMESPACE, Cluster, install, job_manifest, replicas_over_time
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


def test_an_external_scaler_owns_the_replicas_and_the_job_still_finishes(
    cluster: Cluster, rabbitmq: RabbitMQ, s3: S3Server
):
    """The test plays KEDA: it sets the replicas; the operator accounts and finishes, never scales."""
    total = 24
    bucket = _photos_bucket(s3, total)
    workers = {"scaler": "external", "maxReplicas": 3, "tasksPerReplica": 8, "processesPerPod": 1}
    cluster.kubectl("apply", "-f", "-", input=job_manifest("handed", bucket, s3, workers=workers))
    wait_until(lambda: cluster.job_status("handed").get("queue"), 60, "status.queue")
    status = cluster.job_status("handed")
    uid = cluster.get("compjob", "handed")["metadata"]["uid"]
    assert status["queue"].endswith(".tasks") and uid.replace("-", "")[:8] in status["queue"]
    assert status["queue"] in rabbitmq.ctl("list_queues", "name").split()
    # Made without replicas: the API server's default of 1 stands until the scaler acts.
    assert cluster.get("deployment", "handed-workers")["spec"]["replicas"] == 1
    cluster.kubectl("scale", "deployment", "handed-workers", "--replicas=2")
    generation = cluster.get("deployment", "handed-workers")["metadata"]["generation"]

    status = cluster.wait_phase("handed", {"Succeeded", "Failed"}, 240)

    assert (status["phase"], status["succeeded"], status["backlog"]) == ("Succeeded", total, 0)
    assert _manifest_ids(s3, status["manifest"]) == list(range(total))
    deployment = cluster.get("deployment", "handed-workers")
    # Not one spec change after the scaler's: not on a step, not on finish.
    assert (deployment["spec"]["replicas"], deployment["metadata"]["generation"]) == (2, generation)
    assert "Scaled" not in {e["reason"] for e in _events(cluster, "handed")}
    cluster.kubectl("delete", "compjob", "handed", "--wait=true", "--timeout=90s")
    wait_until(lambda: not [p for p in cluster.agent.running_pods() if "/handed-" in p], 90, "pods gone")


def test_deleting_a_job_mid_run_leaves_nothing_behind(cluster: Cluster, rabbitmq: RabbitMQ, s3: S3Server):
    bucket = _photos_bucket(s3, 60)
    cluster.kubectl(
        "apply", "-f", "-", input=job_manifest("doomed", bucket, s3, output={"format": "avif", "quality": 40})
    )
    wait_until(lambda: cluster.job_status("doomed").get("succeeded", 0) >= 1, 120, "some progress")
    uid = cluster.get("compjob", "doomed")["metadata"]["uid"].replace("-", "")[:8]
    cluster.kubectl("delete", "compjob", "doomed", "--wait=true", "--timeout=90s")
    wait_until(lambda: f".doomed.{uid}." not in rabbitmq.ctl("list_queues", "name"), 30, "queues deleted")
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
