"""The worker in a container on a real node against the bare encoder under the same cgroup limits.

On the test bed's node (testbed/node.py: containerd, kubelet, the images built from the
Dockerfiles), for each CPU limit (1, then 2; memory 2Gi):

  (a) bare: a Pod of the worker image with those limits running `python -c` BARE: it downloads the
      inputs from S3 first (not timed), then a multiprocessing pool of `cpu` processes calls
      `kompressor_worker.codec.compress` on each (what a worker's pool child does, nothing else);
      it prints each completion's time;
  (b) pod: a CompressionJob of the same inputs, one worker replica with those limits (pool sized
      from the cgroup, processesPerPod 0), its completions timed by the worker pod's own
      `kompressor_tasks_total`, read every 0.1 s from the host (`status.succeeded`, which moves only
      at the operator's steps, when the pod's counter cannot be read).

Steady rate: completions after the first W (W = 3 x cpu, the warm-up) over the time from the W-th to
the last. End to end: inputs over the time from `kubectl apply` to the Pod's or the job's
Succeeded (image already on the node; it includes the pod's start, the bare pod's download and
the job's listing). Rounds interleave bare and pod; each figure is the median of the rounds.

Inputs: `--images` distinct ~4.5 MP photographs (2600x1733), each of tests.corpus.real_photos()
upscaled from its own crop and mirrored by index, JPEG q90; output JPEG q80 (and `--formats`).

    python bench/node.py                          # 60 images, JPEG, 3 rounds: ~15 minutes here
    python bench/node.py --images 240 --formats jpeg,webp

Needs root and the node (scripts/setup.sh kube node); takes the machine's node lock for its run.
Prints a table and writes bench/results/node.json.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from common import describe_machine, machine, table, write_json
from PIL import Image, ImageOps
from prometheus_client.parser import text_string_to_metric_families

from kompressor_operator.builders import JOB_LABEL
from testbed import start_kube, start_rabbitmq, start_s3
from testbed.node import claim_bridge, start_node
from testbed.process import wait_until
from tests.corpus import real_photos
from tests.e2e.cluster import job_manifest
from tests.node.chart import Installed, install

SIZE = (2600, 1733)
MEMORY = "2Gi"
WORKER_IMAGE = "ghcr.io/kompressor/worker:0.1.0"
# Run in the bare pod: download every input, then time compress() over them in a pool of `cpu`.
BARE = """
import json, multiprocessing, os, sys, time
import boto3
from kompressor.crd import Format, Limits, Output
from kompressor_worker.codec import compress
s3 = boto3.client("s3", endpoint_url=os.environ["S3"], region_name="us-east-1",
                  aws_access_key_id=os.environ["KEY"], aws_secret_access_key=os.environ["SECRET"])
bucket, fmt = os.environ["BUCKET"], os.environ["FORMAT"]
quality, cpu = int(os.environ["QUALITY"]), int(os.environ["CPU"])
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="in/", MaxKeys=1000)["Contents"]]
inputs = [s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]
output = Output(format=Format(fmt), quality=quality)
def one(data):
    return len(compress(data, output, Limits()).data)
with multiprocessing.Pool(cpu) as pool:
    start = time.monotonic()
    done = [time.monotonic() - start for _ in pool.imap_unordered(one, inputs)]
print(json.dumps({"done": done}))
"""


def photos(count: int) -> dict[str, bytes]:
    """`count` distinct ~4.5 MP photographs: each a crop of a real photo (offset by its index),
    upscaled to SIZE and mirrored on odd rounds through the corpus."""
    sources = list(real_photos().values())
    out: dict[str, bytes] = {}
    for i in range(count):
        with Image.open(io.BytesIO(sources[i % len(sources)])) as image:
            image = image.convert("RGB")
            shift = (i // len(sources)) % 8
            box = (shift * 4, shift * 3, image.width - (8 - shift) * 4, image.height - (8 - shift) * 3)
            big = image.crop(box).resize(SIZE, Image.Resampling.LANCZOS)
            if (i // len(sources)) % 2:
                big = ImageOps.mirror(big)
            buffer = io.BytesIO()
            big.save(buffer, "JPEG", quality=90)
            out[f"{i:04d}.jpg"] = buffer.getvalue()
    return out


def steady(times: list[float], cpu: int) -> float:
    """Completions after the warm-up over the time they took (see the module docstring)."""
    times = sorted(times)
    warm = 3 * cpu
    return (len(times) - warm) / (times[-1] - times[warm - 1])


def resources(cpu: int) -> dict[str, Any]:
    return {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": str(cpu), "memory": MEMORY}}


def run_bare(cluster: Installed, bucket: str, fmt: str, quality: int, cpu: int, count: int) -> dict[str, Any]:
    name = f"bare-{uuid.uuid4().hex[:8]}"
    s3 = cluster.s3
    env = {
        "S3": s3.endpoint_url,
        "KEY": s3.access_key,
        "SECRET": s3.secret_key,
        "BUCKET": bucket,
        "FORMAT": fmt,
        "QUALITY": str(quality),
        "CPU": str(cpu),
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "bare",
                    "image": WORKER_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", BARE],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "resources": resources(cpu),
                }
            ],
        },
    }
    applied = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def phase() -> str:
        return cluster.get("pod", name)["status"].get("phase", "")

    wait_until(lambda: phase() in ("Succeeded", "Failed"), 1800, f"pod {name}", interval=0.2)
    elapsed = time.monotonic() - applied
    ended = phase()
    logs = cluster.kubectl("logs", name).stdout
    cluster.kubectl("delete", "pod", name, "--wait=false")
    if ended != "Succeeded":
        raise RuntimeError(f"{name} failed:\n{logs[-3000:]}")
    done = json.loads(logs.strip().splitlines()[-1])["done"]
    assert len(done) == count
    return {"steady": steady(done, cpu), "end_to_end": count / elapsed, "seconds": elapsed}


def run_pod(cluster: Installed, bucket: str, fmt: str, quality: int, cpu: int, count: int) -> dict[str, Any]:
    name = f"node-{uuid.uuid4().hex[:8]}"
    workers = {
        "maxReplicas": 1,
        "tasksPerReplica": 1000,
        "processesPerPod": 0,
        "scaleDownDelaySeconds": 3,
        "resources": resources(cpu),
    }
    output = {"format": fmt, "quality": quality}
    # Its own destination: a later run must not find the outputs there and skip them.
    destination = {"s3": {"bucket": bucket, "prefix": f"out-{name}/"}}
    points: list[tuple[float, int]] = []
    applied = time.monotonic()
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=job_manifest(name, bucket, cluster.s3, workers=workers, output=output, destination=destination),
    )

    def finished() -> bool:
        status = cluster.job_status(name)
        points.append((time.monotonic() - applied, int(status.get("succeeded", 0))))
        return status.get("phase") in ("Succeeded", "Failed")

    clock = WorkerClock(cluster, name, applied)
    try:
        wait_until(finished, 1800, f"job {name}", interval=0.2)
    finally:
        clock.stop()
    elapsed = time.monotonic() - applied
    status = cluster.job_status(name)
    if (status["phase"], status["succeeded"]) != ("Succeeded", count):
        raise RuntimeError(f"job {name}: {status}")
    cluster.kubectl("delete", "compjob", name, "--wait=false")
    # Each completion's time: the first sample that counted it, from the worker pod's own counter
    # when it saw them all (status.succeeded moves only at the operator's steps).
    timed = clock.points if clock.points and clock.points[-1][1] >= count else points
    done = [next(t for t, n in timed if n > i) for i in range(count)]
    return {
        "steady": steady(done, cpu),
        "end_to_end": count / elapsed,
        "seconds": elapsed,
        "clock": "worker /metrics" if timed is clock.points else "status.succeeded",
    }


class WorkerClock:
    """Samples the job's worker pod's `kompressor_tasks_total` (every outcome: a task is counted once
    its result is confirmed and it is acked) every 0.1 s from the host, over the node's bridge:
    (seconds since apply, tasks ended) points, as precise as the bare pod's timestamps."""

    def __init__(self, cluster: Installed, job: str, applied: float, port: int = 8080):
        self.points: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(cluster, job, applied, port), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self, cluster: Installed, job: str, applied: float, port: int) -> None:
        address = None
        while not self._stop.is_set():
            if address is None:
                pods = cluster.get("pods", "-l", f"{JOB_LABEL}={job}")["items"]
                ips = [p["status"].get("podIP") for p in pods if p["status"].get("phase") == "Running"]
                address = next((ip for ip in ips if ip), None)
                if address is None:
                    self._stop.wait(0.2)
                continue
            try:
                with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=1) as response:
                    text = response.read().decode()
            except OSError:
                self._stop.wait(0.1)
                continue
            ended = sum(
                sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "kompressor_tasks"
                for sample in family.samples
                if sample.name == "kompressor_tasks_total"
            )
            self.points.append((time.monotonic() - applied, int(ended)))
            self._stop.wait(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--formats", default="jpeg", help="comma-separated output formats")
    parser.add_argument("--quality", type=int, default=80)
    parser.add_argument("--cpus", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    info = machine()
    print(describe_machine(info))
    inputs = photos(args.images)
    print(
        f"{len(inputs)} inputs, {sum(map(len, inputs.values())) / len(inputs) / 1e6:.2f} MB each", flush=True
    )

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kompressor-node-bench-") as tmp:
        run_dir = Path(tmp)
        bridge = claim_bridge()
        stoppers: list = [bridge.stop]
        try:
            rabbitmq = start_rabbitmq(run_dir / "rabbitmq", host=bridge.gateway)
            stoppers.append(rabbitmq.stop)
            s3 = start_s3(run_dir / "s3", host=bridge.gateway)
            stoppers.append(s3.stop)
            kube = start_kube(run_dir / "kube", address=bridge.gateway)
            stoppers.append(kube.stop)
            node = start_node(kube, bridge, run_dir / "node")
            stoppers.append(node.stop)
            cluster = install(kube, node, rabbitmq, s3)
            setup = time.monotonic() - started
            print(f"node up and chart installed in {setup:.0f}s", flush=True)
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            s3.client().create_bucket(Bucket=bucket)
            client = s3.client()
            for key, body in inputs.items():
                client.put_object(Bucket=bucket, Key=f"in/{key}", Body=body)

            runs: list[dict[str, Any]] = []
            for round_ in range(args.rounds):
                for fmt in args.formats.split(","):
                    for cpu in map(int, args.cpus.split(",")):
                        for mode, run in (("bare", run_bare), ("pod", run_pod)):
                            result = run(cluster, bucket, fmt, args.quality, cpu, len(inputs))
                            runs.append({"round": round_, "format": fmt, "cpu": cpu, "mode": mode, **result})
                            print(
                                f"round {round_} {fmt} cpu {cpu} {mode:4}: steady {result['steady']:.2f}/s, "
                                f"apply to Succeeded {result['seconds']:.1f}s"
                                + (f" (timed by {result['clock']})" if "clock" in result else ""),
                                flush=True,
                            )
        finally:
            for stop in reversed(stoppers):
                stop()

    rows, summary = [], []
    for fmt in args.formats.split(","):
        for cpu in map(int, args.cpus.split(",")):
            figures = {
                f"{mode}_{key}": statistics.median(
                    r[key] for r in runs if (r["format"], r["cpu"], r["mode"]) == (fmt, cpu, mode)
                )
                for mode in ("bare", "pod")
                for key in ("steady", "end_to_end")
            }
            ratios = {k: figures[f"pod_{k}"] / figures[f"bare_{k}"] for k in ("steady", "end_to_end")}
            summary.append({"format": fmt, "cpu": cpu, **figures, "ratios": ratios})
            rows.append(
                [
                    f"{fmt} q{args.quality}",
                    cpu,
                    figures["bare_steady"],
                    figures["pod_steady"],
                    f"{ratios['steady']:.2f}",
                    figures["bare_end_to_end"],
                    figures["pod_end_to_end"],
                    f"{ratios['end_to_end']:.2f}",
                ]
            )
    headers = [
        "output",
        "cpu limit",
        "bare steady img/s",
        "pod steady img/s",
        "pod/bare",
        "bare apply→Succeeded img/s",
        "pod apply→Succeeded img/s",
        "pod/bare",
    ]
    print()
    print(table(headers, rows))
    path = write_json(
        "node.json",
        {
            "machine": info,
            "images": len(inputs),
            "size": SIZE,
            "memory_limit": MEMORY,
            "setup_seconds": setup,
            "summary": summary,
            "runs": runs,
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
