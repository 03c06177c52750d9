"""Many CompressionJobs at once through the operator on the test bed: the worker budget in a burst.

The test bed of tests/e2e (a real kube-apiserver and controller-manager, RabbitMQ, SeaweedFS S3),
the chart's RBAC, the operator run by kopf as in the chart (`--standalone`), and real workers: the
node agent of testbed/nodeagent.py runs each worker Pod as a `kompressor-worker` process. N jobs
of a few tiny images each (distinct 64×64 JPEGs), priorities 10 / 5 / 0 (1 in 10, 1 in 10, the
rest), `maxReplicas` 2 each, are applied in one `kubectl apply`, with `maxTotalWorkers` far below
the 2·N workers they would ask for.

Sampled every second from the API server: the Deployments' spec.replicas summed (the workers ASKED
FOR, which must never exceed the budget) and their ready pods; each job's time from the apply to
its first worker asked for and its first worker ready; the operator's CPU and RSS (/proc);
every 15 s RabbitMQ's queue count and memory (rabbitmqctl). The API server's request counters
(apiserver_request_total, all clients: the operator, the node agent, the controller-manager and
this sampler) before and after. Once every job has ended, the operator's CPU over a minute, and how
many step timers it ran in that minute (finished jobs must cost nothing).

    python bench/jobs.py                        # 30 jobs, budget 4; 20 jobs took ~10 min at load 25
    python bench/jobs.py --jobs 100 --budget 6

Prints a table and writes bench/results/jobs.json.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from common import describe_machine, load_average, machine, table, write_json
from PIL import Image
from proc import tree_cpu_seconds

from testbed import start_kube, start_rabbitmq, start_s3
from tests.e2e.cluster import Cluster, install, step_runs

NAMESPACE = "bench"
BUCKET = "jobs-bench"
PRIORITIES = (10, 5, 0)
IDLE_SECONDS = 60


def priority_of(index: int) -> int:
    return 10 if index % 10 == 0 else 5 if index % 5 == 0 else 0


def tiny_jpeg(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (64, 64))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(64 * 64)])
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def manifests(count: int, images: int, endpoint: str) -> str:
    docs = []
    for i in range(count):
        name = f"job-{i:03d}"
        spec = {
            "source": {"s3": {"bucket": BUCKET, "prefix": f"{name}/in/"}},
            "destination": {"s3": {"bucket": BUCKET, "prefix": f"{name}/out/"}},
            "storage": {"endpointURL": endpoint},
            "output": {"format": "webp", "quality": 75},
            "priority": priority_of(i),
            "workers": {
                "maxReplicas": 2,
                "tasksPerReplica": max(1, images // 2),
                "processesPerPod": 1,
                "scaleDownDelaySeconds": 0,
            },
        }
        body = {"apiVersion": "kompressor.dev/v1alpha1", "kind": "CompressionJob"}
        docs.append(yaml.safe_dump({**body, "metadata": {"name": name}, "spec": spec}))
    return "\n---\n".join(docs)


@dataclass
class Samples:
    started: float
    asked: list[tuple[float, int]] = field(default_factory=list)
    ready: list[tuple[float, int]] = field(default_factory=list)
    first_asked: dict[str, float] = field(default_factory=dict)
    first_ready: dict[str, float] = field(default_factory=dict)
    operator_cpu: list[tuple[float, float]] = field(default_factory=list)
    operator_rss: list[int] = field(default_factory=list)
    queues: list[tuple[float, int]] = field(default_factory=list)
    broker_memory: list[int] = field(default_factory=list)
    phases: dict[str, str] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def sample(cluster: Cluster, operator_pid: int, samples: Samples, stop: threading.Event) -> None:
    tick = 0
    while not stop.is_set():
        try:
            sample_once(cluster, operator_pid, samples, tick)
        except (
            OSError,
            RuntimeError,
            ValueError,
            subprocess.SubprocessError,
        ) as exc:  # a loaded machine: a missed sample, counted
            samples.missed.append(f"{type(exc).__name__}: {exc}")
        tick += 1
        stop.wait(1.0)


def sample_once(cluster: Cluster, operator_pid: int, samples: Samples, tick: int) -> None:
    kube = cluster.kube
    now = time.monotonic() - samples.started
    code, body = kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments")
    if code == 200:
        asked = ready = 0
        for item in json.loads(body)["items"]:
            job = item["metadata"]["name"].removesuffix("-workers")
            replicas = item["spec"].get("replicas") or 0
            up = item.get("status", {}).get("readyReplicas") or 0
            asked, ready = asked + replicas, ready + up
            if replicas:
                samples.first_asked.setdefault(job, now)
            if up:
                samples.first_ready.setdefault(job, now)
        samples.asked.append((now, asked))
        samples.ready.append((now, ready))
    code, body = kube.get(f"/apis/kompressor.dev/v1alpha1/namespaces/{NAMESPACE}/compressionjobs")
    if code == 200:
        for item in json.loads(body)["items"]:
            samples.phases[item["metadata"]["name"]] = (item.get("status") or {}).get("phase", "")
    samples.operator_cpu.append((now, tree_cpu_seconds(operator_pid)))
    samples.operator_rss.append(rss_bytes(operator_pid))
    if tick % 15 == 0:  # rabbitmqctl starts an Erlang VM: a second of CPU each
        lines = cluster.rabbitmq.ctl("list_queues", "-q", "name").split()
        samples.queues.append((now, len(lines)))
        memory = cluster.rabbitmq.ctl("eval", "erlang:memory(total).").strip()
        if memory.isdigit():
            samples.broker_memory.append(int(memory))


def request_counts(cluster: Cluster) -> Counter:
    """apiserver_request_total summed by (verb, resource), all clients."""
    code, body = cluster.kube.get("/metrics")
    counts: Counter = Counter()
    if code != 200:
        return counts
    for line in body.decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        resource = labels.get("resource", "") + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        counts[(labels.get("verb", ""), resource)] += float(line.rsplit(" ", 1)[1])
    return counts


def run(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    kube = start_kube(run_dir / "kube")
    rabbitmq = start_rabbitmq(run_dir / "rabbitmq")
    s3 = start_s3(run_dir / "s3")
    operator, cluster = None, None
    try:
        os.environ["KOMPRESSOR_MAX_TOTAL_WORKERS"] = str(args.budget)
        cluster = install(kube, rabbitmq, s3, run_dir / "operator", NAMESPACE)
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        inputs = 0
        for i in range(args.jobs):
            for k in range(args.images):
                client.put_object(Bucket=BUCKET, Key=f"job-{i:03d}/in/{k}.jpg", Body=tiny_jpeg(i * 1000 + k))
                inputs += 1
        cluster.agent.start()
        operator = cluster.spawn_operator("--standalone", log_name="operator")
        log = cluster.log_dir / "operator.log"
        # The operator is up once kopf has logged its startup (then it serves the jobs as they come).
        deadline = time.monotonic() + 120
        while "Activity 'configure' succeeded" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise TimeoutError("the operator did not start within 120 s")
            time.sleep(0.2)
        requests_before, api_started = request_counts(cluster), time.monotonic()
        samples = Samples(started=time.monotonic())
        stop = threading.Event()
        sampler = threading.Thread(target=sample, args=(cluster, operator.pid, samples, stop), daemon=True)
        kube.kubectl(
            "-n", NAMESPACE, "apply", "-f", "-", input=manifests(args.jobs, args.images, s3.endpoint_url)
        )
        sampler.start()
        deadline = time.monotonic() + args.timeout
        ended = {"Succeeded", "Failed"}
        while not (len(samples.phases) == args.jobs and set(samples.phases.values()) <= ended):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"jobs not all ended after {args.timeout} s: {Counter(samples.phases.values())}"
                )
            time.sleep(1)
        all_ended = time.monotonic() - samples.started
        requests_after, api_seconds = request_counts(cluster), time.monotonic() - api_started
        # Finished jobs: wait for their workers to be gone, then a minute of the operator at rest.
        while samples.ready and samples.ready[-1][1] > 0 and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(5)
        runs_before, cpu_before, idle_started = (
            step_runs(cluster.metrics_port),
            tree_cpu_seconds(operator.pid),
            time.monotonic(),
        )
        time.sleep(IDLE_SECONDS)
        idle_cpu = tree_cpu_seconds(operator.pid) - cpu_before
        idle_runs = round(step_runs(cluster.metrics_port) - runs_before)
        idle_seconds = time.monotonic() - idle_started
        stop.set()
        sampler.join(30)
        statuses = json.loads(kube.kubectl("-n", NAMESPACE, "get", "compressionjobs", "-o", "json").stdout)
        return analyse(
            args, samples, statuses, all_ended, requests_before, requests_after, api_seconds,
            idle_cpu, idle_seconds, idle_runs, inputs,
        )  # fmt: skip
    finally:
        if operator is not None and operator.poll() is None:
            operator.terminate()
            operator.wait(30)
        if cluster is not None:
            cluster.agent.stop()
            cluster.webhook.stop()
        s3.stop()
        rabbitmq.stop()
        kube.stop()


def analyse(
    args, samples, statuses, all_ended, before, after, api_seconds, idle_cpu, idle_seconds, idle_runs, inputs
) -> dict[str, Any]:
    exact = []
    for item in statuses["items"]:
        status = item.get("status") or {}
        exact.append(
            status.get("phase") == "Succeeded"
            and status.get("total") == args.images
            and status.get("succeeded") == args.images
            and not status.get("failed")
        )
    by_priority: dict[int, dict[str, Any]] = {}
    for priority in PRIORITIES:
        names = [f"job-{i:03d}" for i in range(args.jobs) if priority_of(i) == priority]
        asked = [samples.first_asked[n] for n in names if n in samples.first_asked]
        ready = [samples.first_ready[n] for n in names if n in samples.first_ready]
        by_priority[priority] = {
            "jobs": len(names),
            "first_worker_asked_median_s": round(statistics.median(asked), 1) if asked else None,
            "first_worker_asked_max_s": round(max(asked), 1) if asked else None,
            "first_worker_ready_median_s": round(statistics.median(ready), 1) if ready else None,
        }
    deltas = {key: after[key] - before.get(key, 0) for key in after if after[key] - before.get(key, 0) > 0}
    total_requests = sum(deltas.values())
    top = sorted(deltas.items(), key=lambda kv: -kv[1])[:8]
    cpu = samples.operator_cpu
    busy = [(t, c) for t, c in cpu if t <= all_ended]
    operator_cpu_run = busy[-1][1] - busy[0][1] if len(busy) > 1 else None
    return {
        "jobs": args.jobs,
        "images_per_job": args.images,
        "inputs": inputs,
        "budget": args.budget,
        "asked_if_unbounded": 2 * args.jobs,
        "all_exact": all(exact) and len(exact) == args.jobs,
        "exact_jobs": sum(exact),
        "all_ended_s": round(all_ended, 1),
        "asked_max": max(n for _, n in samples.asked),
        "asked_over_budget_samples": sum(n > args.budget for _, n in samples.asked),
        "samples": len(samples.asked),
        "samples_missed": len(samples.missed),
        "sample_gap_max_s": round(max(b - a for (a, _), (b, _) in itertools.pairwise(samples.asked)), 1),
        "ready_max": max(n for _, n in samples.ready),
        "by_priority": by_priority,
        "operator_cpu_s_during_run": round(operator_cpu_run, 1) if operator_cpu_run is not None else None,
        "operator_cpu_share_during_run": round(operator_cpu_run / all_ended, 3) if operator_cpu_run else None,
        "operator_rss_max_mb": round(max(samples.operator_rss) / 2**20, 1),
        "api_requests_per_s_all_clients": round(total_requests / api_seconds, 1),
        "api_top_requests": [{"verb": v, "resource": r, "count": int(n)} for (v, r), n in top],
        "rabbitmq_queues_max": max((n for _, n in samples.queues), default=None),
        "rabbitmq_memory_max_mb": round(max(samples.broker_memory) / 2**20, 1)
        if samples.broker_memory
        else None,
        "idle_operator_cpu_s": round(idle_cpu, 2),
        "idle_seconds": round(idle_seconds, 1),
        "idle_operator_cpu_share": round(idle_cpu / idle_seconds, 4),
        "idle_step_timer_runs": idle_runs,
        "asked_series": samples.asked,
        "ready_series": samples.ready,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--images", type=int, default=4, help="tiny images per job")
    parser.add_argument("--budget", type=int, default=4, help="maxTotalWorkers")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    info = machine()
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="kompressor-jobs-bench-") as tmp:
        result = run(args, Path(tmp))
    result["machine"] = info
    result["load_average_at_start"] = load
    rows = [
        ["jobs × images", f"{result['jobs']} × {result['images_per_job']}"],
        ["budget / workers asked if unbounded", f"{result['budget']} / {result['asked_if_unbounded']}"],
        ["all ended with exact counts", f"{result['all_exact']} ({result['exact_jobs']}/{result['jobs']})"],
        ["apply → all ended", f"{result['all_ended_s']} s"],
        ["workers asked for, max of samples", f"{result['asked_max']} ({result['samples']} samples, "
         f"{result['asked_over_budget_samples']} over budget; longest gap {result['sample_gap_max_s']} s)"],
    ]  # fmt: skip
    for priority, figures in result["by_priority"].items():
        rows.append(
            [
                f"priority {priority} ({figures['jobs']} jobs): first worker asked / ready, median",
                f"{figures['first_worker_asked_median_s']} s / {figures['first_worker_ready_median_s']} s",
            ]
        )
    rows += [
        ["operator CPU during the run", f"{result['operator_cpu_s_during_run']} s "
         f"({result['operator_cpu_share_during_run']} of a core)"],
        ["operator RSS, max", f"{result['operator_rss_max_mb']} MB"],
        ["API requests/s (all clients)", result["api_requests_per_s_all_clients"]],
        ["RabbitMQ queues / memory, max",
         f"{result['rabbitmq_queues_max']} / {result['rabbitmq_memory_max_mb']} MB"],
        [f"all ended: operator CPU over {result['idle_seconds']} s",
         f"{result['idle_operator_cpu_s']} s ({result['idle_operator_cpu_share']} of a core), "
         f"{result['idle_step_timer_runs']} step timer runs"],
    ]  # fmt: skip
    print(describe_machine(info), f"load average at start {load}")
    print(table(["measure", "value"], rows))
    print("top API requests:", json.dumps(result["api_top_requests"]))
    path = write_json("jobs.json", result)
    print(f"wrote {path}")
    return 0 if result["all_exact"] and not result["asked_over_budget_samples"] else 1


if __name__ == "__main__":
    sys.exit(main())
