"""Test helpers that set up a job on the real test bed: inputs in S3, queues and tasks in RabbitMQ,
worker processes, and a reader that collects each task's results."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kompressor.crd import CompressionJobSpec, parse_spec
from kompressor.messages import JobRef, Result, task_queue
from kompressor_operator import broker
from kompressor_operator.listing import list_s3_sources
from kompressor_operator.planning import plan_tasks
from kompressor_operator.workerprocs import WorkerProcesses
from testbed import RabbitMQ, S3Server


def new_job(name: str = "job") -> JobRef:
    return JobRef(namespace="test", name=f"{name}-{uuid.uuid4().hex[:6]}", uid=str(uuid.uuid4()))


def job_spec(bucket: str, **overrides: Any) -> CompressionJobSpec:
    spec: dict[str, Any] = {
        "source": {"s3": {"bucket": bucket, "prefix": "in/", "include": ["*"]}},
        "destination": {"s3": {"bucket": bucket, "prefix": "out/"}},
        "output": {"format": "webp", "quality": 75, "resize": {"maxWidth": 640, "maxHeight": 640}},
        "limits": {"maxPixels": 50_000_000, "taskTimeoutSeconds": 60, "maxAttempts": 3},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_spec(spec)


def upload(s3: S3Server, bucket: str, files: Mapping[str, bytes], prefix: str = "in/") -> None:
    client = s3.client()
    for name, body in files.items():
        client.put_object(Bucket=bucket, Key=prefix + name, Body=body)


@dataclass
class Results:
    """Every result read for a job, kept per task id (a redelivered task may report twice)."""

    by_id: dict[int, list[Result]] = field(default_factory=lambda: defaultdict(list))

    def final(self) -> dict[int, Result]:
        return {task_id: results[-1] for task_id, results in self.by_id.items()}


def publish_job(rabbitmq: RabbitMQ, s3: S3Server, job: JobRef, spec: CompressionJobSpec) -> int:
    assert spec.source.s3 is not None
    connection = broker.connect(rabbitmq.url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        broker.declare_job_queues(channel, job, spec.limits)
        tasks = plan_tasks(job, spec, list_s3_sources(s3.client(), spec.source.s3))
        return broker.publish_tasks(channel, tasks)
    finally:
        connection.close()


def collect_results(
    rabbitmq: RabbitMQ, job: JobRef, expected: int, timeout: float, results: Results | None = None, until=None
) -> Results:
    """Read results until `expected` distinct ids have one (or `until(results)` holds); fail after
    `timeout` seconds naming what is missing."""
    results = results or Results()
    connection = broker.connect(rabbitmq.url)
    deadline = time.monotonic() + timeout
    try:
        channel = connection.channel()
        while True:
            for tag, result, _body in broker.drain_results(channel, job):
                assert result is not None
                results.by_id[result.id].append(result)
                channel.basic_ack(tag)
            done = until(results) if until else len(results.by_id) >= expected
            if done:
                return results
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(results.by_id)}/{expected} tasks reported after {timeout}s")
            connection.process_data_events(time_limit=0.2)
    finally:
        connection.close()


def worker_env(rabbitmq: RabbitMQ, s3: S3Server, job: JobRef, **extra: str) -> dict[str, str]:
    return {
        "KOMPRESSOR_BROKER__URL": rabbitmq.url,
        **s3.env(),
        "KOMPRESSOR_QUEUE": task_queue(job),
        "KOMPRESSOR_JOB_NAMESPACE": job.namespace,
        "KOMPRESSOR_JOB_NAME": job.name,
        "KOMPRESSOR_PROCESSES": "2",
        "KOMPRESSOR_HEALTH_PORT": "0",
        "KOMPRESSOR_GRACE_SECONDS": "60",
        "KOMPRESSOR_LOG_FORMAT": "text",
        **extra,
    }


def workers(rabbitmq: RabbitMQ, s3: S3Server, job: JobRef, log_dir: Path, **extra: str) -> WorkerProcesses:
    return WorkerProcesses(env=worker_env(rabbitmq, s3, job, **extra), log_dir=log_dir, grace_seconds=60)


def process_tree() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the pool's forkserver and its children), from /proc."""
    children = process_tree()
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def start_kompressor_run(job: dict, tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    """`kompressor run --json` on `job` (written to tmp_path/job.yaml), worker logs in tmp_path/logs."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    command = [sys.executable, "-m", "kompressor_operator.cli", "run", str(path), "--json"]
    return subprocess.Popen(
        [*command, "--log-dir", str(tmp_path / "logs"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
