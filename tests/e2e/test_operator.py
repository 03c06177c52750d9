"""The operator end to end on the real kube-apiserver, controller-manager, RabbitMQ and S3.

kopf runs the operator as the chart's ServiceAccount under the chart's RBAC; a node agent plays the
kubelet, running each worker Pod as a local process and draining it on deletion.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed import KubeAPI, RabbitMQ, S3Server
from testbed.process import wait_until
from tests.chaos.tools import S3Recorder
from tests.corpus import real_photos
from tests.dashboard import dashboard_series, missing_series
from tests.e2e.cluster import (
    HMAC_KEY,
    RELEASE_NAMESPACE,
    Cluster,
    install,
    job_manifest,
    replicas_over_time,
    scrape,
    step_runs,
)
from tests.jobs import upload
from tests.webhooks import Receiver, garbage, verified

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


def _timer_runs(cluster: Cluster, name: str) -> float:
    """How often the operator ran a job's step timer (its metric: kopf's log line for each run is
    held back, and the test checks it is)."""
    log = cluster.log_dir / f"operator-{cluster.operator_starts}.log"
    assert "Timer 'step' succeeded" not in log.read_text(errors="replace")
    return step_runs(cluster.metrics_port, NAMESPACE, name)


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

    # The status keeps telling the truth once the pods are gone, and then the job costs nothing:
    # its step timer has stopped (kopf logs each run of it).
    wait_until(lambda: cluster.job_status("catalog")["workers"]["ready"] == 0, 30, "WORKERS 0 in the status")
    runs = _timer_runs(cluster, "catalog")
    time.sleep(3)  # an observation window, not a synchronization: the 1 s timer would run ~3 times
    assert _timer_runs(cluster, "catalog") == runs > 0

    # Replicas followed the backlog: up while there was work, 0 at the end, never above maxReplicas.
    replicas = [r for _, r, _ in samples]
    assert max(replicas) >= 2 and max(replicas) <= 3 and replicas[-1] == 0
    scaled = [e["message"] for e in _events(cluster, "catalog") if e["reason"] == "Scaled"]
    assert scaled and "0 → " in scaled[0]
    reasons = {e["reason"] for e in _events(cluster, "catalog")}
    assert {"Started", "Listed", "Scaled", "Succeeded"} <= reasons

    # The real /metrics of the operator and of a worker pod hold every series the dashboard queries,
    # with its labels; the finished job's series are gone from the operator's, but for its step
    # count (kept until the job is deleted).
    assert missing_series(operator_metrics + worker_metrics, dashboard_series()) == []
    families = text_string_to_metric_families(operator_metrics + worker_metrics)
    jobs = {(s.labels["namespace"], s.labels["compressionjob"]) for f in families for s in f.samples}
    assert jobs == {(NAMESPACE, "catalog")}
    left = {
        family.name
        for family in text_string_to_metric_families(cluster.operator_metrics())
        for sample in family.samples
        if sample.labels.get("compressionjob") == "catalog"
    }
    assert "kompressor_steps" in left and left <= {"kompressor_steps", "kompressor_steps_created"}
    print(f"\napply → first scale-up: {first_scale_up:.1f}s")
    print("scale decisions:\n  " + "\n  ".join(scaled))


def test_a_hostile_webhook_receiver_cannot_keep_a_job_from_finishing(cluster: Cluster, s3: S3Server):
    """A receiver answering garbage: the job is Succeeded first, then Notified=False WebhookFailed
    after every attempt, each signed and with one webhook-id."""
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)  # no inputs: the job finishes at its first step
    hook = Receiver(garbage)
    try:
        notify = {"webhookURL": hook.url, "secretRef": "hook-hmac"}
        cluster.kubectl("apply", "-f", "-", input=job_manifest("hostile", bucket, s3, notify=notify))
        status = cluster.wait_phase("hostile", {"Succeeded", "Failed"}, 60)
        assert status["phase"] == "Succeeded"

        def notified() -> dict:
            conditions = cluster.job_status("hostile").get("conditions", [])
            return next((c for c in conditions if c["type"] == "Notified"), {})

        wait_until(lambda: notified().get("status") == "False", 60, "the webhook given up")
    finally:
        hook.stop()
    assert notified()["reason"] == "WebhookFailed"
    assert "BadStatusLine" in notified()["message"]
    assert cluster.job_status("hostile")["phase"] == "Succeeded"
    warnings = [e for e in _events(cluster, "hostile") if e["reason"] == "WebhookFailed"]
    assert [e["type"] for e in warnings] == ["Warning"]
    ids = {verified(headers, body, HMAC_KEY.encode()) for headers, body in hook.requests}
    assert len(hook.requests) == 5 and len(ids) == 1


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


class Listener:
    """A TCP listener that records every connection made to it and every byte sent."""

    def __init__(self, host: str):
        self._server = socket.create_server((host, 0))
        self.url = f"http://{host}:{self._server.getsockname()[1]}"
        self.received: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self._server.accept()
                with connection:
                    connection.settimeout(5)
                    self.received.append(b"")
                    with contextlib.suppress(OSError):
                        while chunk := connection.recv(65536):
                            self.received[-1] += chunk

    def close(self) -> None:
        self._server.close()


@pytest.mark.parametrize("secret", [None, "kompressor-storage"], ids=["operator-credentials", "own-secret"])
def test_a_job_naming_an_endpoint_not_allowed_fails_before_any_request(
    cluster: Cluster, s3: S3Server, secret
):
    """127.0.0.2 is outside the operator's storage endpoint allow-list (127.0.0.1/32 here): without a
    Secret of its own the job may not have the operator's credentials; with one, the address is
    still not allowed. Either way the endpoint sees nothing, the ledger's first read included."""
    listener = Listener("127.0.0.2")
    name = f"elsewhere-{'own' if secret else 'ours'}"
    storage = {"endpointURL": listener.url, **({"credentialsSecret": secret} if secret else {})}
    try:
        cluster.kubectl("apply", "-f", "-", input=job_manifest(name, "never-read", s3, storage=storage))
        status = cluster.wait_phase(name, {"Failed", "Succeeded"}, 60)
    finally:
        listener.close()
    [failed] = [c for c in status["conditions"] if c["type"] == "Failed"]
    assert (status["phase"], failed["reason"]) == ("Failed", "StorageEndpointRefused")
    assert ("credentialsSecret" if secret is None else "127.0.0.2") in failed["message"]
    wait_until(
        lambda: (
            "StorageEndpointRefused"
            in [e["reason"] for e in _events(cluster, name) if e["type"] == "Warning"]
        ),
        30,
        "a StorageEndpointRefused Warning Event",
    )
    assert listener.received == []  # no connection at all, so no Authorization header either
    assert cluster.kubectl("get", "deployment", f"{name}-workers", check=False).returncode != 0


def test_an_allowed_endpoint_with_the_jobs_own_secret_runs(cluster: Cluster, s3: S3Server):
    """A job's own endpoint inside the allow-list (a recording proxy to the S3 server on 127.0.0.1)
    with its own Secret: the operator and the workers all go there, with the job's credentials."""
    cluster.kubectl(
        "create", "secret", "generic", "job-s3",
        f"--from-literal=accessKeyId={s3.access_key}", f"--from-literal=secretAccessKey={s3.secret_key}",
    )  # fmt: skip
    bucket = _photos_bucket(s3, 6)
    recorder = S3Recorder(s3.port).start()
    storage = {"endpointURL": recorder.url, "credentialsSecret": "job-s3"}
    try:
        cluster.kubectl("apply", "-f", "-", input=job_manifest("own-endpoint", bucket, s3, storage=storage))
        status = cluster.wait_phase("own-endpoint", {"Failed", "Succeeded"}, 180)
    finally:
        recorder.stop()
    assert (status["phase"], status["succeeded"]) == ("Succeeded", 6)
    requests = [(e.method, e.path.split("?")[0]) for e in recorder.exchanges]
    assert any(method == "PUT" and f"/{bucket}/out/" in path for method, path in requests)  # workers
    assert any(f"/{bucket}/out/.kompressor/own-endpoint/" in path for _method, path in requests)  # operator
    [container] = cluster.get("deployment", "own-endpoint-workers")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KOMPRESSOR_STORAGE__ENDPOINT_URL"]["value"] == recorder.url
    assert env["KOMPRESSOR_STORAGE__ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "job-s3"


def test_a_job_does_not_take_over_a_deployment_it_does_not_own(cluster: Cluster, s3: S3Server):
    """A Deployment already named `<job>-workers` and not the job's is left as it is; the job says
    so (condition and Event) and waits; once the name is free it makes its own and runs."""
    foreign = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "squat-workers", "labels": {"app": "someone-else"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "someone-else"}},
            "template": {
                "metadata": {"labels": {"app": "someone-else"}},
                "spec": {"containers": [{"name": "c", "image": "someone-elses:1"}]},
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(foreign))
    bucket = _photos_bucket(s3, 4)
    cluster.kubectl("apply", "-f", "-", input=job_manifest("squat", bucket, s3))

    def refused() -> bool:
        conditions = cluster.job_status("squat").get("conditions", [])
        return any(
            c["type"] == "WorkerDeployment" and c["reason"] == "DeploymentNotOwned" for c in conditions
        )

    wait_until(refused, 60, "the WorkerDeployment=False condition")

    def warnings() -> list[str]:
        return [e["message"] for e in _events(cluster, "squat") if e["reason"] == "DeploymentNotOwned"]

    wait_until(lambda: bool(warnings()), 30, "a DeploymentNotOwned Warning Event")
    assert "squat-workers" in warnings()[0]
    left = cluster.get("deployment", "squat-workers")
    assert left["metadata"]["labels"] == {"app": "someone-else"}
    assert "ownerReferences" not in left["metadata"]
    assert left["spec"]["template"]["spec"]["containers"][0]["image"] == "someone-elses:1"
    assert cluster.job_status("squat").get("phase") in (None, "Pending")

    cluster.kubectl("delete", "deployment", "squat-workers", "--wait=true")
    status = cluster.wait_phase("squat", {"Failed", "Succeeded"}, 180)
    assert (status["phase"], status["succeeded"]) == ("Succeeded", 4)
    [condition] = [c for c in status["conditions"] if c["type"] == "WorkerDeployment"]
    assert (condition["status"], condition["reason"]) == ("True", "DeploymentOwned")
    owners = cluster.get("deployment", "squat-workers")["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == [cluster.get("compjob", "squat")["metadata"]["uid"]]


# What the operator may do in a watched namespace: exactly the calls it makes (kube.py, and kopf's
# list, watch and patches of its jobs). Everything else in VERBS x RESOURCES is refused.
GRANTED = {
    ("create", "events"),
    ("create", "events.events.k8s.io"),
    ("list", "compressionjobs.kompressor.dev"),
    ("watch", "compressionjobs.kompressor.dev"),
    ("patch", "compressionjobs.kompressor.dev"),
    ("delete", "compressionjobs.kompressor.dev"),
    ("patch", "compressionjobs.kompressor.dev/status"),
    ("get", "deployments.apps"),
    ("create", "deployments.apps"),
    ("update", "deployments.apps"),
    ("patch", "deployments.apps"),
    ("get", "secrets"),
}
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
RESOURCES = (
    "events",
    "events.events.k8s.io",
    "compressionjobs.kompressor.dev",
    "compressionjobs.kompressor.dev/status",
    "deployments.apps",
    "deployments.apps/scale",
    "replicasets.apps",
    "pods",
    "pods/exec",
    "secrets",
    "configmaps",
    "serviceaccounts",
)


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


def test_a_job_waits_for_the_worker_secret_of_the_installation(cluster: Cluster, s3: S3Server):
    """The chart's worker.storageSecret missing in the job's namespace: the job waits, Pending, instead
    of worker pods stuck in CreateContainerConfigError under a Running job."""
    bucket = _photos_bucket(s3, 3)
    cluster.kubectl("delete", "secret", "kompressor-storage")
    try:
        cluster.kubectl("apply", "-f", "-", input=job_manifest("defaults", bucket, s3))

        def condition() -> dict | None:
            found = {c["type"]: c for c in cluster.job_status("defaults").get("conditions", [])}
            return found.get("SecretsReady")

        wait_until(lambda: condition() is not None, 60, "the SecretsReady condition")
        assert (condition()["status"], condition()["reason"]) == ("False", "SecretMissing")
        assert "worker.storageSecret" in condition()["message"]
        assert cluster.job_status("defaults")["phase"] == "Pending"
    finally:
        cluster.kubectl(
            "create",
            "secret",
            "generic",
            "kompressor-storage",
            f"--from-literal=accessKeyId={s3.access_key}",
            f"--from-literal=secretAccessKey={s3.secret_key}",
        )
    status = cluster.wait_phase("defaults", {"Succeeded", "Failed"}, 180)
    assert (status["phase"], status["succeeded"]) == ("Succeeded", 3)


def test_the_operator_role_is_enough_and_no_more(cluster: Cluster, kube: KubeAPI):
    def can(*args: str) -> bool:
        result = kube.kubectl("auth", "can-i", *args, kubeconfig=cluster.operator_kubeconfig, check=False)
        return result.stdout.strip() == "yes"

    def can_here(verb: str, resource: str) -> bool:
        resource, _, subresource = resource.partition("/")
        extra = [f"--subresource={subresource}"] if subresource else []
        return can(verb, resource, *extra, "-n", NAMESPACE)

    granted = {(verb, resource) for verb in VERBS for resource in RESOURCES if can_here(verb, resource)}
    assert granted == GRANTED
    assert not can("get", "secrets", "-n", "default")
    assert not can("get", "secrets", "-n", RELEASE_NAMESPACE)
    assert not can("delete", "namespaces")
    assert Path(cluster.operator_kubeconfig).exists()


BAD_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Inn", "values": ["a"]}]}]
        }
    }
}


def test_a_job_whose_worker_pods_are_refused_fails_with_the_reason(cluster: Cluster, s3: S3Server):
    """The CRD keeps affinity terms unchecked; the API server's refusal of the Deployment becomes the
    job's SpecInvalid condition, not a retry for ever."""
    bucket = _photos_bucket(s3, 1)
    workers = {"maxReplicas": 1, "affinity": BAD_AFFINITY}
    cluster.kubectl("apply", "-f", "-", input=job_manifest("misplaced", bucket, s3, workers=workers))
    status = cluster.wait_phase("misplaced", {"Failed", "Succeeded"}, 60)
    assert status["phase"] == "Failed"
    [condition] = [c for c in status["conditions"] if c["reason"] == "SpecInvalid"]
    assert "spec.workers" in condition["message"] and "Inn" in condition["message"], condition


def test_placement_edits_reach_the_pods_and_a_refused_one_is_a_warning(cluster: Cluster, s3: S3Server):
    bucket = _photos_bucket(s3, 1)
    cluster.kubectl("apply", "-f", "-", input=job_manifest("placed", bucket, s3, suspend=True))
    cluster.wait_phase("placed", {"Suspended"}, 60)
    patch = {
        "spec": {"workers": {"nodeSelector": {"pool": "batch"}, "priorityClassName": "system-node-critical"}}
    }
    cluster.kubectl("patch", "compjob", "placed", "--type=merge", "-p", json.dumps(patch))

    def template() -> dict:
        return cluster.get("deployment", "placed-workers")["spec"]["template"]["spec"]

    wait_until(lambda: template().get("nodeSelector") == {"pool": "batch"}, 30, "the nodeSelector applied")
    assert template()["priorityClassName"] == "system-node-critical"
    bad = {"spec": {"workers": {"affinity": BAD_AFFINITY}}}
    cluster.kubectl("patch", "compjob", "placed", "--type=merge", "-p", json.dumps(bad))
    wait_until(
        lambda: any(e["reason"] == "WorkersRefused" for e in _events(cluster, "placed")),
        30,
        "a Warning Event",
    )
    assert "affinity" not in template() and template().get("nodeSelector") == {"pool": "batch"}
    assert cluster.job_status("placed")["phase"] == "Suspended"
