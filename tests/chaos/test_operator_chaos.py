"""The operator end to end (tests/e2e/cluster.py: the chart's CRD and RBAC on the real API server,
kopf as the chart's ServiceAccount, the node agent running worker Pods) under chaos: worker Pods and
pool processes killed again and again, RabbitMQ restarted, S3 frozen, the operator kill -9ed and
started again. Then: bad CompressionJob specs at `kubectl apply` and at the operator, and the same
specs at `kompressor run`. See runs.py for what each figure means.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed import KubeAPI, RabbitMQ, S3Server
from tests.chaos.runs import (
    INPUTS,
    KILLS_UNTIL,
    OPERATOR_KILL_AT,
    PAUSE_AT,
    RESTART_AT,
    S3_PAUSE_SECONDS,
    account,
    job_spec,
    manifest,
)
from tests.chaos.tools import (
    Firehose,
    Monkey,
    S3Recorder,
    broker_user,
    count_objects,
    find_secrets,
    photo_inputs,
    queues_of,
    read_logs,
    restart_broker,
    upload_parallel,
    wait_for,
    worker_crashes,
)
from tests.e2e.cluster import Cluster, install, job_manifest

pytestmark = pytest.mark.kube

NAMESPACE = "chaos"
NAME = "chaos-run"


@dataclass
class BrokerAs(RabbitMQ):
    """The session's broker, reached as another user (whose password is a secret to search for)."""

    user_url: str = ""

    @property
    def url(self) -> str:
        return self.user_url


@pytest.fixture(scope="module")
def cluster(kube: KubeAPI, rabbitmq: RabbitMQ, s3: S3Server, tmp_path_factory) -> Iterator[Cluster]:
    url, password = broker_user(rabbitmq)
    broker = BrokerAs(rabbitmq.port, rabbitmq.run_dir, rabbitmq.env, rabbitmq.service, user_url=url)
    installed = install(kube, broker, s3, tmp_path_factory.mktemp("chaos-operator"), NAMESPACE)
    installed.broker_password = password  # type: ignore[attr-defined]
    with installed.running():
        yield installed


def _bucket(s3: S3Server) -> str:
    name = f"chaos-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=name)
    return name


def _pod_workers(cluster: Cluster) -> list[int]:
    pids = []
    for pod in cluster.agent.running_pods():
        process = cluster.agent.process_of(pod)
        if process is not None:
            pids.append(process.pid)
    return pids


def test_operator_loses_nothing_under_chaos(
    cluster: Cluster,
    rabbitmq: RabbitMQ,
    s3: S3Server,
    chaos_report,
    firehose: Firehose,
    recorder: S3Recorder,
):
    bucket = _bucket(s3)
    inputs = photo_inputs(INPUTS)
    upload_parallel(s3, bucket, inputs)
    spec = job_spec(bucket, recorder.url, maxReplicas=3)
    started = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=job_manifest(NAME, bucket, s3, **spec))
    monkey = Monkey(
        lambda: _pod_workers(cluster), lambda: count_objects(s3, bucket, "out/"), until=KILLS_UNTIL
    )
    faults: list[str] = []

    def outputs_at_least(n: int):
        def check() -> bool:
            phase = cluster.job_status(NAME).get("phase")
            if phase in ("Succeeded", "Failed"):
                raise AssertionError(f"the job ended ({phase}) before {n} outputs")
            return count_objects(s3, bucket, "out/") >= n

        return check

    def at() -> str:
        return f"{time.monotonic() - started:.0f}s"

    try:
        wait_for(lambda: bool(_pod_workers(cluster)), 90, "a worker Pod running")
        monkey.start()
        wait_for(outputs_at_least(RESTART_AT), 180, f"{RESTART_AT} outputs")
        took = restart_broker(rabbitmq, firehose)
        faults.append(f"RabbitMQ restarted at {at()} (took {took:.1f}s)")
        wait_for(outputs_at_least(PAUSE_AT), 180, f"{PAUSE_AT} outputs")
        faults.append(f"S3 frozen for {S3_PAUSE_SECONDS}s at {at()}")
        s3.pause()
        time.sleep(S3_PAUSE_SECONDS)
        s3.resume()
        wait_for(outputs_at_least(OPERATOR_KILL_AT), 180, f"{OPERATOR_KILL_AT} outputs")
        cluster.kill_operator()
        faults.append(f"operator kill -9ed at {at()}")
        # The data plane goes on without the control plane: workers keep storing outputs.
        wait_for(outputs_at_least(OPERATOR_KILL_AT + 20), 120, "outputs stored while the operator is down")
        cluster.start_operator()
        status = cluster.wait_phase(NAME, {"Succeeded", "Failed"}, 300)
    finally:
        monkey.stop()
        s3.resume()
    seconds = time.monotonic() - started
    wait_for(lambda: not cluster.agent.running_pods(), 90, "worker Pods drained")
    recorder.stop()
    uid8 = cluster.get("compjob", NAME)["metadata"]["uid"].replace("-", "")[:8]
    queue_base = f"kompressor.{NAMESPACE}.{NAME}.{uid8}."
    traffic = firehose.read(queue_base)
    result = account(s3, bucket, inputs, status, recorder.writes(bucket, "out/"), traffic)

    # Secrets: nowhere in the logs, the status, the Events, the worker Deployment or the messages.
    pod_logs = read_logs(cluster.log_dir / "pods")
    operator_logs = {str(p): p.read_text(errors="replace") for p in cluster.log_dir.glob("operator-*.log")}
    events = cluster.kubectl("get", "events", "-o", "json").stdout
    leaks = find_secrets(
        {
            **pod_logs,
            **operator_logs,
            "CompressionJob (status)": json.dumps(cluster.get("compjob", NAME)),
            "Events": events,
            "worker Deployment": json.dumps(cluster.get("deployment", f"{NAME}-workers")),
            "manifest": json.dumps(manifest(s3, status["manifest"])),
            "task and result messages": b"\n".join(traffic.bodies),
        },
        {"S3 secret key": s3.secret_key, "broker password": cluster.broker_password},  # type: ignore[attr-defined]
    )

    crashed = worker_crashes(pod_logs, monkey.killed_logs)
    operator_died = [code for code in [cluster.operator.poll()] if code is not None]  # type: ignore[union-attr]
    handler_errors = sum(text.count("failed with an exception") for text in operator_logs.values())
    reconnects = sum(text.count("broker connection lost") for text in pod_logs.values())
    pool_breaks = sum(text.count("stopping to be restarted") for text in pod_logs.values())

    # A deleted job leaves no queues behind.
    cluster.kubectl("delete", "compjob", NAME, "--wait=true", "--timeout=90s")
    wait_for(lambda: not queues_of(rabbitmq, queue_base), 30, "the job's queues deleted")

    chaos_report.add(
        "operator: 500 inputs",
        inputs=INPUTS,
        kills=monkey.kills + 1,
        restarts="RabbitMQ 1, S3 frozen 1, operator 1",
        lost=result.lost,
        duplicates=result.duplicates,
        crashes=len(crashed) + len(operator_died),
        seconds=round(seconds),
    )
    chaos_report.note(
        f"operator: {monkey.worker_kills} worker Pods and {monkey.child_kills} pool children killed, the "
        f"operator once; {'; '.join(faults)}; {reconnects} worker reconnects, {pool_breaks} workers "
        f"restarted for a broken pool, {handler_errors} kopf handler errors; {result.summary()}"
        f"{'; CRASHED: ' + repr(crashed + operator_died) if crashed or operator_died else ''}"
    )
    assert not result.problems, result.problems
    assert not crashed and not operator_died, (crashed, operator_died)
    assert not leaks, leaks
    assert traffic.messages > 2 * INPUTS and len(pod_logs) > 2  # the search covered real traffic and logs
    assert monkey.worker_kills >= 5


# --- bad specs at every door ---------------------------------------------------------------------------


def _spec_cases(bucket: str) -> list[tuple[str, str, Any]]:
    """(case, the field the refusal must name, how to change a valid spec)."""

    def setting(path: str, value: Any):
        def change(spec: dict) -> None:
            *parents, last = path.split(".")
            node = spec
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value

        return change

    return [
        ("quality 0", "spec.output.quality", setting("output.quality", 0)),
        ("quality 101", "spec.output.quality", setting("output.quality", 101)),
        ("format bmp", "spec.output.format", setting("output.format", "bmp")),
        ("no source", "spec.source", setting("source", {})),
        ("two sources", "spec.source", setting("source.urls", {"items": ["https://example.com/a.jpg"]})),
        (
            "ftp URL",
            "spec.source.urls.items",
            setting("source", {"urls": {"items": ["ftp://example.com/a"]}}),
        ),
        ("bucket name", "spec.destination.s3.bucket", setting("destination.s3.bucket", "Bad_Bucket")),
        ("prefix ..", "spec.destination.s3.prefix", setting("destination.s3.prefix", "../up/")),
        ("maxInputBytes", "spec.limits.maxInputBytes", setting("limits.maxInputBytes", "lots")),
        ("maxAttempts 0", "spec.limits.maxAttempts", setting("limits.maxAttempts", 0)),
        ("min > max replicas", "spec.workers", setting("workers.minReplicas", 5)),
        ("quality and SSIM", "spec.output", setting("output.targetSSIM", 0.98)),
        ("overlapping prefixes", "spec.destination", setting("destination.s3.prefix", "in/out/")),
        (
            "cpu not a quantity",
            "spec.workers.resources.requests.cpu",
            setting("workers.resources.requests.cpu", "lots"),
        ),
        (
            "requests above limits",
            "spec.workers.resources",
            setting("workers.resources", {"requests": {"cpu": "4"}, "limits": {"cpu": "2"}}),
        ),
        ("unreachable maxReplicas", "spec.workers.maxReplicas", setting("workers.maxReplicas", 50)),
        ("unknown field", "spec.output.colour", setting("output.colour", "red")),
    ]


def _names(error: str, field_name: str) -> bool:
    """Does the error name the field: `spec.output.colour`, or kubectl's client-side validation's
    `CompressionJob.spec.output: unknown field "colour"`."""
    parent, _, leaf = field_name.rpartition(".")
    return field_name in error or (f"{parent})" in error and f'"{leaf}"' in error)


def _valid_spec(bucket: str) -> dict:
    return {
        "source": {"s3": {"bucket": bucket, "prefix": "in/"}},
        "destination": {"s3": {"bucket": bucket, "prefix": "out/"}},
        "output": {"format": "webp", "quality": 70},
        "limits": {"maxOutstanding": 100},
        "workers": {"maxReplicas": 2, "tasksPerReplica": 10},
    }


def test_every_invalid_field_is_named_at_apply_by_the_operator_and_by_local_mode(
    cluster: Cluster, rabbitmq: RabbitMQ, s3: S3Server, tmp_path: Path, chaos_report
):
    bucket = _bucket(s3)
    cases = _spec_cases(bucket)
    documents = {}
    for i, (case, _field, change) in enumerate(cases):
        spec = _valid_spec(bucket)
        change(spec)
        documents[case] = {
            "apiVersion": "kompressor.dev/v1alpha1",
            "kind": "CompressionJob",
            "metadata": {"name": f"bad-{i}"},
            "spec": spec,
        }
    # Local mode first, all at once (each stops before touching the broker or S3).
    env = {**os.environ, "KOMPRESSOR_BROKER__URL": rabbitmq.url, **s3.env()}
    runs = {}
    for case, document in documents.items():
        path = tmp_path / f"{document['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(document))
        runs[case] = subprocess.Popen(
            [sys.executable, "-m", "kompressor_operator.cli", "run", str(path), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    problems, where = [], {}
    for case, field_name, _change in cases:
        _out, err = runs[case].communicate(timeout=60)
        if runs[case].returncode != 2 or field_name not in err or len(err.strip().splitlines()) != 1:
            problems.append(f"kompressor run, {case}: exit {runs[case].returncode}: {err.strip()[-300:]}")

    # kubectl apply: refused by the API server's schema, or accepted and failed by the operator.
    for case, field_name, _change in cases:
        document = documents[case]
        name = document["metadata"]["name"]
        applied = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(document), check=False)
        if applied.returncode != 0:
            where[case] = "apply"
            if not _names(applied.stderr, field_name):
                problems.append(
                    f"apply, {case}: the error does not name {field_name}: {applied.stderr.strip()}"
                )
            continue
        where[case] = "operator"
        try:
            status = cluster.wait_phase(name, {"Failed", "Succeeded", "Running"}, 30)
        except TimeoutError:
            status = cluster.job_status(name)
        condition = next((c for c in status.get("conditions", []) if c["type"] == "Failed"), {})
        events = cluster.get("events", "--field-selector", f"involvedObject.name={name}")["items"]
        warned = [e["message"] for e in events if e["reason"] == "SpecInvalid"]
        if status.get("phase") != "Failed" or field_name not in condition.get("message", ""):
            problems.append(f"operator, {case}: {status.get('phase')} {condition.get('message')!r}")
        elif not any(field_name in message for message in warned):
            problems.append(f"operator, {case}: no SpecInvalid Warning Event naming {field_name}")
        cluster.kubectl("delete", "compjob", name, "--wait=false", check=False)
    tried = 2 * len(cases)
    chaos_report.add("bad CompressionJob specs", bad_inputs=tried, lost="-", duplicates="-", crashes=0)
    by_schema = ", ".join(c for c, w in where.items() if w == "apply")
    by_operator = ", ".join(c for c, w in where.items() if w == "operator")
    chaos_report.note(
        f"specs: {len(cases)} invalid specs, each through `kompressor run` (exit 2, one line naming the "
        f"field) and kubectl apply (refused by the schema: {by_schema}; failed by the operator with a "
        f"SpecInvalid condition and Warning Event: {by_operator})"
    )
    assert not problems, "\n".join(problems)
