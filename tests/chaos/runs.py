"""What the two chaos runs (local mode and the operator) share: the job, the schedule of faults,
and the accounting afterwards.

A run compresses `INPUTS` small real photographs (WebP, quality 70). While it runs, a `Monkey`
kill -9s worker process groups and pool children every couple of seconds; once some outputs exist
RabbitMQ is restarted; later the S3 server is frozen for `S3_PAUSE_SECONDS`; the operator run also
kill -9s the operator. The accounting then checks, and the report shows:

- lost: inputs without exactly one manifest line (and status counts that do not add up to the total);
- duplicates: manifest lines beyond one per input, plus output objects written more than once — a
  write being a PUT of the output's key that S3 answered with a 2xx, counted by `S3Recorder`;
- published twice: task ids the fan-out published more than once to the task queue, counted by
  the firehose (reported, not a failure: the at-least-once design allows a batch to be published
  again when the publisher dies between the broker's confirms and saving its cursor);
- duplicate results: results beyond the first per task id, counted by the firehose (a worker killed
  between publishing a result and acking the task redelivers it; the ledger counts each id once);
- over the default limit: tasks whose successful delivery was their 4th or later (manifest
  `attempts` >= 4), i.e. tasks the broker would have dead-lettered with the default maxAttempts 3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from testbed import S3Server
from tests.chaos.tools import Traffic, undecodable_outputs

INPUTS = 500
MAX_ATTEMPTS = 10
S3_PAUSE_SECONDS = 20
RESTART_AT, PAUSE_AT, OPERATOR_KILL_AT = 60, 200, 320  # outputs stored when each fault starts
# Kills stop near the end: with a few tasks left, every kill would hit the same ones until their
# attempts run out (each kill returns a worker's prefetched tasks, counted as a delivery).
KILLS_UNTIL = INPUTS - 25


def job_spec(bucket: str, endpoint_url: str | None = None, **workers: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"s3": {"bucket": bucket, "prefix": "in/"}},
        "destination": {"s3": {"bucket": bucket, "prefix": "out/"}},
        "output": {"format": "webp", "quality": 70},
        # Fan-out in small batches all along the run, so the faults also hit publishing.
        "limits": {"maxAttempts": MAX_ATTEMPTS, "taskTimeoutSeconds": 60, "maxOutstanding": 100},
        "workers": {
            "maxReplicas": 2,
            "tasksPerReplica": 10,
            "processesPerPod": 1,
            "scaleDownDelaySeconds": 3,
            **workers,
        },
    }
    if endpoint_url:  # not the operator's own endpoint: the job brings its own credentials
        spec["storage"] = {"endpointURL": endpoint_url, "credentialsSecret": "kompressor-storage"}
    return spec


def manifest(s3: S3Server, url: str) -> list[dict]:
    bucket, key = url.removeprefix("s3://").split("/", 1)
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


@dataclass
class Accounting:
    """The figures of one run, from its status, manifest, outputs, S3 writes and broker traffic."""

    inputs: int
    status: dict[str, Any]
    lines: list[dict]
    output_keys: list[str]
    writes: dict[str, int]
    traffic: Traffic
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        ids = {line["id"] for line in self.lines}
        return self.inputs - len(ids & set(range(self.inputs)))

    @property
    def manifest_duplicates(self) -> int:
        return len(self.lines) - len({line["id"] for line in self.lines})

    @property
    def written_twice(self) -> int:
        return sum(count - 1 for count in self.writes.values() if count > 1)

    @property
    def duplicates(self) -> int:
        return self.manifest_duplicates + self.written_twice

    @property
    def over_default_limit(self) -> int:
        return sum(1 for line in self.lines if line.get("attempts", 1) >= 4)

    def summary(self) -> str:
        t = self.traffic
        return (
            f"lost {self.lost}, manifest duplicates {self.manifest_duplicates}, outputs written twice "
            f"{self.written_twice} ({sum(self.writes.values())} output PUTs for "
            f"{len(self.output_keys)} outputs), "
            f"tasks published twice {t.published_twice()} (ids seen published {len(t.task_publishes)}/"
            f"{self.inputs}), duplicate results {t.duplicate_results()} (ids seen with a result "
            f"{len(t.result_publishes)}/{self.inputs}), task deliveries "
            f"{sum(t.task_deliveries.values())}, over the default maxAttempts 3: {self.over_default_limit}"
        )


def account(
    s3: S3Server,
    bucket: str,
    inputs: dict[str, bytes],
    status: dict[str, Any],
    writes: dict[str, int],
    traffic: Traffic,
) -> Accounting:
    """Check everything a chaos run must leave exact; return the figures (problems listed in it)."""
    writes = {key: n for key, n in writes.items() if not key.startswith("out/.kompressor/")}
    lines = manifest(s3, status["manifest"])
    paginator = s3.client().get_paginator("list_objects_v2")
    keys = [
        o["Key"]
        for page in paginator.paginate(Bucket=bucket, Prefix="out/")
        for o in page.get("Contents", [])
    ]
    output_keys = [key for key in keys if not key.startswith("out/.kompressor/")]
    result = Accounting(len(inputs), status, lines, output_keys, writes, traffic)
    problems = result.problems
    total = len(inputs)
    counted = status.get("succeeded", 0) + status.get("skipped", 0) + status.get("failed", 0)
    if (status.get("phase"), status.get("total"), counted) != ("Succeeded", total, total):
        problems.append(f"status {status.get('phase')} total {status.get('total')} counted {counted}")
    if status.get("failed"):
        problems.append(f"{status['failed']} failed: {status.get('failuresByReason')}")
    if sorted(line["id"] for line in lines) != list(range(total)):
        problems.append(f"manifest ids are not 0..{total - 1} once each ({len(lines)} lines)")
    sources = sorted(line["source"] for line in lines)
    if sources != sorted(f"s3://{bucket}/in/{name}" for name in inputs):
        problems.append("manifest sources are not the inputs, once each")
    expected = sorted(f"out/{name.rsplit('.', 1)[0]}.webp" for name in inputs)
    if sorted(output_keys) != expected:
        missing = sorted(set(expected) - set(output_keys))
        by_dest = {line["dest"].removeprefix(f"s3://{bucket}/"): line for line in lines}
        lost_outputs = [by_dest.get(key, key) for key in missing[:5]]
        problems.append(f"{len(output_keys)} outputs for {total} inputs; missing: {lost_outputs}")
    if broken := undecodable_outputs(s3, bucket, output_keys):
        problems.append(f"outputs that do not decode: {broken[:5]}")
    if set(expected) - set(writes):
        problems.append(f"outputs without a recorded write: {sorted(set(expected) - set(writes))[:5]}")
    if set(writes) - set(expected):
        problems.append(f"unexpected keys written: {sorted(set(writes) - set(expected))[:5]}")
    if result.written_twice:
        problems.append(f"outputs written twice: {sorted(k for k, n in writes.items() if n > 1)[:10]}")
    return result
