"""kompressor on a real node: the chart installed as a user would, the operator and the workers as
containers from the repository's Dockerfiles under a real kubelet (testbed/node.py).

What only a node shows: the operator runs in its pod with in-cluster configuration under the chart's
ServiceAccount; the workers run as containerd containers whose cgroup limits size their pool and
memory budget; the securityContext holds inside the container; the kubelet's SIGTERM and grace
period on a deleted pod lose no work; deleting a job collects every pod.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from kompressor_worker import resources
from kompressor_worker.settings import WorkerSettings
from testbed import KubeAPI, RabbitMQ, S3Server
from testbed.node import Node
from testbed.process import wait_until
from tests.corpus import gigapixel_png, real_photos
from tests.e2e.cluster import job_manifest
from tests.jobs import upload
from tests.node.chart import NAMESPACE, RELEASE_NAMESPACE, Installed, install

pytestmark = [pytest.mark.kube, pytest.mark.node]

POOL_LINE = re.compile(
    r"pool of (\d+) processes \(cpu quota ([\d.]+|None)\), memory budget per process (\d+|None) bytes"
)
# The reasons a task gets when its pool child died under it (the kernel's OOM kill among them).
CHILD_DIED = ("worker_crashed", "timeout")
# Run inside a worker container by `kubectl exec`: who it runs as, with which capabilities, and
# whether its root filesystem takes a write.
PROBE = """
import errno, json, os
try:
    open("/probe", "w")
    root = "writable"
except OSError as exc:
    root = errno.errorcode[exc.errno]
caps = {k: v.strip() for k, v in (l.split(":", 1) for l in open("/proc/self/status")) if k.startswith("Cap")}
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "root": root, "caps": caps}))
"""


@pytest.fixture(scope="module")
def installed(kube: KubeAPI, node: Node, rabbitmq: RabbitMQ, s3: S3Server) -> Iterator[Installed]:
    yield install(kube, node, rabbitmq, s3)


def _photos_bucket(s3: S3Server, count: int) -> str:
    bucket = f"node-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    photos = list(real_photos(max_side=900).items())
    upload(
        s3,
        bucket,
        {f"{i:03d}-{photos[i % len(photos)][0]}": photos[i % len(photos)][1] for i in range(count)},
    )
    return bucket


def _manifest_ids(s3: S3Server, url: str) -> list[int]:
    bucket, key = url.removeprefix("s3://").split("/", 1)
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return sorted(json.loads(line)["id"] for line in body.splitlines())


def _worker_pods(cluster: Installed, job: str) -> list[dict[str, Any]]:
    deployment = cluster.get("deployment", f"{job}-workers")
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    return cluster.get("pods", "-l", selector)["items"]


def _running(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses", [])
    return (
        bool(statuses) and "running" in statuses[0]["state"] and not pod["metadata"].get("deletionTimestamp")
    )


def test_the_operator_runs_in_its_pod_with_in_cluster_configuration(installed: Installed):
    pods = installed.kube.kubectl("get", "pods", "-n", RELEASE_NAMESPACE, "-o", "json").stdout
    (pod,) = json.loads(pods)["items"]
    status = pod["status"]["containerStatuses"][0]
    assert status["containerID"].startswith("containerd://") and status["ready"]
    assert status["image"] == "ghcr.io/kompressor/operator:0.1.0"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "kompressor"
    container = spec["containers"][0]
    # No kubeconfig anywhere: kopf finds the API server from the pod's environment and token.
    assert not any(e["name"] == "KUBECONFIG" for e in container.get("env", []))
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts
    logs = installed.kube.kubectl("logs", "-n", RELEASE_NAMESPACE, pod["metadata"]["name"]).stdout
    assert "configured in cluster with service account" in logs, logs[-2000:]


@pytest.mark.parametrize(
    ("cpu", "memory", "total"),
    [("1", "512Mi", 40), ("2", "1Gi", 16)],
    ids=["cpu1-512Mi", "cpu2-1Gi"],
)
def test_a_job_runs_in_worker_containers_scales_and_finishes_exactly(
    installed: Installed, cpu: str, memory: str, total: int
):
    s3 = installed.s3
    name = f"photos-{cpu}"
    bucket = _photos_bucket(s3, total)
    workers = {
        "maxReplicas": 3,
        "tasksPerReplica": 8,
        "processesPerPod": 0,
        "scaleDownDelaySeconds": 3,
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": cpu, "memory": memory},
        },
    }
    installed.kubectl("apply", "-f", "-", input=job_manifest(name, bucket, s3, workers=workers))
    wait_until(
        lambda: installed.kubectl("get", "deployment", f"{name}-workers", check=False).returncode == 0,
        60,
        "the worker Deployment",
    )

    # While the job runs: every worker pod seen running is probed once from inside, and its pool line read.
    probes: dict[str, dict[str, Any]] = {}
    most_replicas = 0

    def finished() -> bool:
        nonlocal most_replicas
        most_replicas = max(
            most_replicas, int(installed.get("deployment", f"{name}-workers")["spec"]["replicas"])
        )
        for pod in _worker_pods(installed, name):
            pod_name = pod["metadata"]["name"]
            if pod_name in probes or not _running(pod):
                continue
            logs = installed.kubectl("logs", pod_name, check=False).stdout
            pool = POOL_LINE.search(logs)
            inside = installed.kubectl("exec", pod_name, "--", "python", "-c", PROBE, check=False).stdout
            if pool and inside:
                probes[pod_name] = {
                    "container": pod["status"]["containerStatuses"][0]["containerID"],
                    "pool": pool.groups(),
                    "inside": json.loads(inside),
                }
        return installed.job_status(name).get("phase") in ("Succeeded", "Failed")

    wait_until(finished, 300, f"job {name} finished", interval=0.5)
    status = installed.job_status(name)
    assert (status["phase"], status["total"], status["succeeded"], status["failed"]) == (
        "Succeeded",
        total,
        total,
        0,
    )
    assert _manifest_ids(s3, status["manifest"]) == list(range(total))
    assert most_replicas >= 2

    # Back to zero: the Deployment scaled down and the kubelet removed every worker pod.
    wait_until(lambda: not _worker_pods(installed, name), 120, "worker pods gone")
    assert installed.get("deployment", f"{name}-workers")["spec"]["replicas"] == 0

    # Each probed worker: a containerd container, its pool and memory budget from its cgroup limits,
    # and the pod's securityContext holding inside it.
    assert probes, "no worker pod was seen running"
    limit = {"512Mi": 512 * 2**20, "1Gi": 2**30}[memory]
    processes = resources.pool_size(0, float(cpu), None)
    reserve = WorkerSettings.model_fields["memory_reserve_bytes"].default
    budget = resources.memory_budget(limit, processes, reserve)
    for probe in probes.values():
        assert probe["container"].startswith("containerd://")
        assert probe["pool"] == (str(processes), str(float(cpu)), str(budget))
        inside = probe["inside"]
        assert (inside["uid"], inside["gid"], inside["root"]) == (65532, 65532, "EROFS")
        assert int(inside["caps"]["CapEff"], 16) == 0 and int(inside["caps"]["CapBnd"], 16) == 0
    print(
        f"\n{name}: {len(probes)} worker pods probed, at most {most_replicas} replicas; "
        f"pool {processes}, budget {budget}"
    )


def test_deleting_a_job_mid_run_collects_every_pod(installed: Installed):
    s3 = installed.s3
    bucket = _photos_bucket(s3, 60)
    workers = {
        "maxReplicas": 2,
        "tasksPerReplica": 8,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    }
    installed.kubectl(
        "apply",
        "-f",
        "-",
        input=job_manifest("doomed", bucket, s3, workers=workers, output={"format": "avif", "quality": 40}),
    )
    wait_until(lambda: installed.job_status("doomed").get("succeeded", 0) >= 1, 180, "some progress")
    uid = installed.get("compjob", "doomed")["metadata"]["uid"].replace("-", "")[:8]
    pods = [p["metadata"]["uid"] for p in _worker_pods(installed, "doomed")]
    assert pods
    # Not `kubectl delete --wait`: the wrapper's own 60 s limit would cut it. The finalizer (the
    # operator's delete handler) may wait behind a step of the same job on a loaded machine.
    installed.kubectl("delete", "compjob", "doomed", "--wait=false")
    wait_until(
        lambda: installed.kubectl("get", "compjob", "doomed", check=False).returncode != 0,
        150,
        "the job deleted (its finalizer removed)",
    )
    wait_until(
        lambda: installed.kubectl("get", "deployment", "doomed-workers", check=False).returncode != 0,
        60,
        "the Deployment collected",
    )
    wait_until(lambda: not installed.get("pods")["items"], 180, "every worker pod gone")
    wait_until(
        lambda: f".doomed.{uid}." not in installed.rabbitmq.ctl("list_queues", "name"), 60, "queues deleted"
    )

    # Gone from the node too: no container of the job's pods is left in containerd (the kubelet's
    # container garbage collection, once a minute, removes the stopped ones).
    def left(pod_uid: str) -> str:
        return installed.node.ctr("containers", "ls", "-q", f'labels."io.kubernetes.pod.uid"=={pod_uid}')

    wait_until(lambda: not any(left(pod_uid) for pod_uid in pods), 150, "the pods' containers removed")


def test_a_worker_pod_deleted_mid_task_loses_nothing(installed: Installed):
    """The kubelet's SIGTERM with the pod's grace period: the worker drains its in-flight tasks, the
    rest is redelivered to the other pod, and every input ends exactly once."""
    s3 = installed.s3
    total = 30
    bucket = _photos_bucket(s3, total)
    workers = {
        "maxReplicas": 2,
        "tasksPerReplica": 4,
        "scaleDownDelaySeconds": 3,
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
    }
    output = {"format": "avif", "quality": 40}
    installed.kubectl(
        "apply", "-f", "-", input=job_manifest("victim", bucket, s3, workers=workers, output=output)
    )
    wait_until(lambda: installed.job_status("victim").get("succeeded", 0) >= 1, 240, "some progress")
    victim = next(p["metadata"]["name"] for p in _worker_pods(installed, "victim") if _running(p))
    follow = subprocess.Popen(
        ["kubectl", f"--kubeconfig={installed.kube.kubeconfig_path}", "-n", NAMESPACE, "logs", "-f", victim],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        installed.kubectl("delete", "pod", victim, "--wait=false")
        status = installed.job_status("victim")
        wait_until(
            lambda: installed.job_status("victim").get("phase") in ("Succeeded", "Failed"), 400, "job victim"
        )
        logs, _ = follow.communicate(timeout=120)
    finally:
        follow.kill()
    final = installed.job_status("victim")
    assert status.get("succeeded", 0) < total, "the job had finished before the pod was deleted"
    assert "stopping: draining" in logs, logs[-2000:]
    assert (final["phase"], final["succeeded"], final["failed"]) == ("Succeeded", total, 0)
    assert _manifest_ids(s3, final["manifest"]) == list(range(total))


def _bombs() -> dict[str, bytes]:
    """Inputs that are small on the wire and huge in memory, and a photo to show the pod still works."""

    def png(size: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (size, size), (120, 130, 140)).save(out, "PNG")
        return out.getvalue()

    small = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(small, "JPEG")
    jpeg = bytearray(small.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2  # height and width claim 60000 x 60000
    name, photo = next(iter(real_photos(max_side=900).items()))
    return {
        "flat-8000.png": png(8000),
        "flat-10000.png": png(10000),
        "claims-60000.jpg": bytes(jpeg),
        "gigapixel.png": gigapixel_png(),
        name: photo,
    }


@pytest.mark.parametrize("memory", ["512Mi", "2Gi"])
def test_bombs_end_with_a_reason_and_no_worker_is_oom_killed(installed: Installed, memory: str):
    s3 = installed.s3
    name = f"bombs-{memory.lower()}"
    bucket = f"node-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    inputs = _bombs()
    upload(s3, bucket, inputs)
    workers = {
        "maxReplicas": 1,
        "scaleDownDelaySeconds": 3,
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": memory},
        },
    }
    output = {"format": "avif", "quality": 40}
    installed.kubectl(
        "apply", "-f", "-", input=job_manifest(name, bucket, s3, workers=workers, output=output)
    )
    states: list[dict[str, Any]] = []
    logs: dict[str, str] = {}  # the latest log of each worker pod: what a failure shows

    def finished() -> bool:
        if installed.kubectl("get", "deployment", f"{name}-workers", check=False).returncode == 0:
            for pod in _worker_pods(installed, name):
                states.extend(pod.get("status", {}).get("containerStatuses", []))
                pod_name = pod["metadata"]["name"]
                latest = installed.kubectl("logs", pod_name, check=False).stdout
                logs[pod_name] = latest or logs.get(pod_name, "")
        return installed.job_status(name).get("phase") in ("Succeeded", "Failed")

    wait_until(finished, 500, f"job {name} finished", interval=1)
    status = installed.job_status(name)
    bucket_, key = status["manifest"].removeprefix("s3://").split("/", 1)
    body = s3.client().get_object(Bucket=bucket_, Key=key)["Body"].read().decode()
    lines = {line["source"].rsplit("/", 1)[-1]: line for line in map(json.loads, body.splitlines())}
    assert set(lines) == set(inputs)
    for source, line in lines.items():
        assert line["outcome"] == "done" or line["reason"], (source, line)
        # A pool child the kernel killed (its container survives, so restartCount stays 0) ends its
        # task as worker_crashed once its attempts are spent: admission must have refused it instead.
        assert line["reason"] not in CHILD_DIED, (source, line, "\n".join(logs.values())[-3000:])
    assert lines["claims-60000.jpg"]["reason"] == "too_many_pixels"
    assert lines["gigapixel.png"]["reason"] == "too_many_pixels"
    photo = next(n for n in inputs if not n.startswith(("flat-", "claims-", "gigapixel")))
    assert lines[photo]["outcome"] == "done"
    assert states, "no worker pod was seen"
    assert max(s["restartCount"] for s in states) == 0
    assert "OOMKilled" not in json.dumps(states)
    print(f"\n{name}: " + ", ".join(f"{s}: {line['outcome']} {line['reason']}" for s, line in lines.items()))
