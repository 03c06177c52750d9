"""A million inputs: the operator's path for one job of N S3 objects on the test bed.

The test bed's SeaweedFS and RabbitMQ are started here (as bench/fanout.py does); N empty objects
are written through the filer (parallel PUTs, timed apart). Then the *operator process* — a child
running what `Controller.step` runs for one job without the Kubernetes API: `JobEngine.step()`,
`reconcile()` and the status it would write, once per poll interval (3 s, the chart's default) —
lists and fans the job out, accounts every result, writes the manifest and ends.

- Phase 1, fan-out: maxOutstanding = N (nothing holds the fan-out back), no consumer; the fan-out
  time is from the first step to the listing's end.
- Phase 2, accounting: a *results publisher* (another child) takes every task off the task queue
  and publishes its Result onto the results queue in the worker's exact format (`Result.encode()`,
  persistent, the worker's content type) — the results are the benchmark's, no image is encoded.
  The operator records them in its ledger (compacted as it grows), then writes manifest.jsonl.
- Restarts: the operator is killed (SIGKILL) at several points (half-way through the fan-out, at
  25/50/75 % accounted, and once all are accounted before the manifest) and started again; the
  resume time is from the new process's start to its first step done (ledger read, queues declared).

Sampled every second: the operator process's RSS (VmRSS, and VmHWM for the peak), its published /
accounted counts, and the status writes (one per due step, as the kopf timer patches). At the end the
manifest is read back: every id 0..N-1 exactly once.

    python bench/million.py --inputs 100000           # ~5 minutes here
    python bench/million.py --inputs 1000000          # the upload alone is ~10 minutes

Writes bench/results/million-<N>.json and million-<N>.png (RSS and throughput over time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    Series,
    describe_machine,
    line_plot,
    load_average,
    machine,
    table,
    write_json,
)
from services import put_empty_objects, running

BUCKET = "million"
POLL_SECONDS = 3.0  # the chart's pollIntervalSeconds
RESTART_ACCOUNTED = (0.25, 0.50, 0.75, 0.95)
RSS_GOAL_MB = 256


def input_key(index: int) -> str:
    return f"in/{index // 1000:04d}/{index:07d}.jpg"


def job_document(inputs: int) -> dict[str, Any]:
    return {
        "job": {"namespace": "bench", "name": f"million-{uuid.uuid4().hex[:6]}", "uid": str(uuid.uuid4())},
        "spec": {
            "source": {"s3": {"bucket": BUCKET, "prefix": "in/"}},
            "destination": {"s3": {"bucket": BUCKET, "prefix": "out/"}},
            "output": {"format": "webp", "quality": 80},
            "limits": {"maxOutstanding": min(max(inputs, 1), 1_000_000)},
        },
    }


# --- the operator process ------------------------------------------------------------------------


def operator_main(job_file: Path, broker_url: str) -> int:
    """What Controller.step does for one job, without the API server; one JSON line per step on
    stdout. Ends after writing the manifest."""
    from kompressor.crd import CompressionJobStatus, parse_spec
    from kompressor.messages import JobRef
    from kompressor_operator.engine import JobEngine
    from kompressor_operator.reconcile import Budget, Memory, Observation, next_step_in, reconcile
    from kompressor_s3 import s3_client

    started = time.monotonic()
    document = json.loads(job_file.read_text())
    job, spec = JobRef(**document["job"]), parse_spec(document["spec"])
    from kompressor.settings import StorageSettings

    prefix = "KOMPRESSOR_STORAGE__"
    storage = {k.removeprefix(prefix).lower(): v for k, v in os.environ.items() if k.startswith(prefix)}
    client = s3_client(StorageSettings(**storage))
    engine = JobEngine(job, spec, broker_url, client).open()
    loaded = time.monotonic()

    def say(**line: Any) -> None:
        print(json.dumps({"t": time.time(), **line}), flush=True)

    say(
        event="opened",
        load_seconds=round(loaded - started, 3),
        objects_read=engine.ledger.objects_read,
        published=engine.counts().published,
        accounted=engine.ledger.tally.accounted,
        cpu=round(time.process_time(), 3),
    )
    previous, memory, writes, first = CompressionJobStatus(), Memory(), 0, True
    created = time.time()
    while True:
        time.sleep(next_step_in(memory, time.monotonic(), POLL_SECONDS))
        step_started = time.monotonic()
        progress = engine.step()
        observed = Observation(
            counts=progress.counts,
            sample=progress.sample(suspended=False),
            accounted_now=progress.accounted_now,
            workers_ready=0,
            publishing=progress.publishing,
        )
        plan = reconcile(
            spec,
            previous,
            observed,
            memory,
            refused=[],
            generation=1,
            job=job,
            created=created,
            budget=Budget(10, {}),
            now=time.monotonic(),
            wall=datetime.now(UTC),
        )
        memory = plan.memory
        changed = plan.status != previous
        writes += 1  # the kopf timer patches the status each due step
        previous = plan.status
        counts = progress.counts
        say(
            event="step",
            seconds=round(time.monotonic() - step_started, 3),
            published=counts.published,
            accounted=counts.accounted,
            listing_done=counts.listing_done,
            ready=progress.ready,
            status_writes=writes,
            status_changed=changed,
            first=first,
            cpu=round(time.process_time(), 3),  # the whole process: listing thread, pika, planning
        )
        first = False
        if progress.finished:
            break
    manifest_started = time.monotonic()
    url = engine.finish()
    say(event="finished", manifest=url, manifest_seconds=round(time.monotonic() - manifest_started, 2))
    engine.close()
    return 0


# --- the results publisher ----------------------------------------------------------------------


def results_main(job_file: Path, broker_url: str) -> int:
    """Take each task off the task queue and publish its Result as a worker does (body and
    properties), done; acks in batches. Runs until killed."""
    import pika

    from kompressor.messages import Outcome, Result, Task, result_queue, task_queue
    from kompressor_operator import broker
    from kompressor_operator.broker import CONTENT_TYPE

    document = json.loads(job_file.read_text())
    from kompressor.messages import JobRef

    job = JobRef(**document["job"])
    connection = broker.connect(broker_url)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=2000)
    properties = pika.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2)
    unacked = last = 0
    for method, _properties, body in channel.consume(task_queue(job), inactivity_timeout=1.0):
        if method is None:
            if unacked:
                channel.basic_ack(last, multiple=True)
                unacked = 0
            continue
        task = Task.decode(body)
        result = Result(
            job=task.job,
            id=task.id,
            outcome=Outcome.done,
            source=task.source.describe(),
            dest=f"s3://{task.dest_bucket}/{task.dest_key}",
            bytes_in=1000,
            bytes_out=400,
            attempts=1,
        )
        channel.basic_publish("", result_queue(task.job), result.encode(), properties)
        last, unacked = method.delivery_tag, unacked + 1
        if unacked >= 500:
            channel.basic_ack(last, multiple=True)
            unacked = 0
    return 0


# --- the benchmark -------------------------------------------------------------------------------


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in kB; (0, 0) once it is gone."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return 0, 0


class Operator:
    """One operator process; a thread reads its JSON lines."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.started = time.monotonic()
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, text=True)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for text in self.process.stdout:
            if text.startswith("{"):
                self._lines.put(json.loads(text))

    def poll(self) -> list[dict[str, Any]]:
        new = []
        while not self._lines.empty():
            new.append(self._lines.get())
        return new

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    count = args.inputs
    info = machine()
    print(f"machine: {describe_machine(info)}; load average {load_average()}", flush=True)
    report: dict[str, Any] = {"machine": info, "inputs": count, "results": "published by the benchmark"}
    with running() as found:
        seconds, how = put_empty_objects(found, BUCKET, [input_key(i) for i in range(count)], threads=64)
        report["upload"] = {"seconds": round(seconds, 1), "how": how, "per_second": round(count / seconds)}
        print(f"upload: {count} objects in {seconds:.0f} s ({how})", flush=True)
        job_file = found.run_dir / "job.json"
        job_file.write_text(json.dumps(job_document(count)))
        env = {**os.environ, **found.storage.env()}
        me = [sys.executable, str(Path(__file__).resolve())]
        operator_argv = [*me, "operator", str(job_file), found.broker.url]
        samples: list[dict[str, Any]] = []
        restarts: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        fan_out: dict[str, Any] = {}
        # (label, published fraction, accounted fraction): restart once both are reached
        pending = [("fan-out half-way", 0.5, 0.0)] + [
            (f"{round(f * 100)} % accounted", 1.0, f) for f in RESTART_ACCOUNTED
        ]
        last = {"published": 0, "accounted": 0, "listing_done": False}
        finished: dict[str, Any] | None = None
        peak_kb = 0
        t0 = time.monotonic()
        operator = Operator(operator_argv, env)
        publisher = None
        try:
            while finished is None:
                time.sleep(0.5)
                rss, hwm = rss_kb(operator.process.pid)
                peak_kb = max(peak_kb, hwm)
                for line in operator.poll():
                    if args.verbose:
                        print(line, file=sys.stderr, flush=True)
                    if line["event"] == "opened" and restarts:
                        restarts[-1].update(
                            load_seconds=line["load_seconds"], objects_read=line["objects_read"]
                        )
                    elif line["event"] == "finished":
                        finished = line
                    elif line["event"] == "step":
                        steps.append(line)
                        last = line
                        if line["first"] and restarts:
                            restarts[-1]["resume_seconds"] = round(line["t"] - restarts[-1]["killed"], 2)
                            print(
                                f"restart at {restarts[-1]['at']}: resumed in "
                                f"{restarts[-1]['resume_seconds']} s",
                                flush=True,
                            )
                        fan_out.setdefault("first_step", line["t"] - line["seconds"])
                        if "seconds" not in fan_out:
                            fan_out["step_seconds"] = fan_out.get("step_seconds", 0) + line["seconds"]
                        # with maxOutstanding = N the listing's end shows once results free room:
                        # the fan-out is over when all N are published
                        if line["published"] >= count and "seconds" not in fan_out:
                            fan_out["seconds"] = round(line["t"] - fan_out["first_step"], 1)
                            fan_out["published"] = line["published"]
                            print(f"fan-out: {line['published']} in {fan_out['seconds']} s", flush=True)
                samples.append(
                    {
                        "t": round(time.monotonic() - t0, 1),
                        "rss_mb": round(rss / 1024, 1),
                        "published": last["published"],
                        "accounted": last["accounted"],
                    }
                )
                if finished is None and operator.process.poll() is not None:
                    raise RuntimeError(f"the operator exited with {operator.process.returncode}")
                if "seconds" in fan_out and publisher is None:
                    publisher = subprocess.Popen([*me, "results", str(job_file), found.broker.url], env=env)
                resumed = not restarts or "resume_seconds" in restarts[-1]
                if pending and resumed and finished is None:
                    label, published, accounted = pending[0]
                    if published < 1.0 and "seconds" in fan_out:
                        pending.pop(0)  # the fan-out ended between two samples
                    elif last["published"] >= published * count and last["accounted"] >= accounted * count:
                        pending.pop(0)
                        operator.kill()
                        restarts.append(
                            {
                                "at": label,
                                "published": last["published"],
                                "accounted": last["accounted"],
                                "killed": time.time(),
                            }
                        )
                        operator = Operator(operator_argv, env)
        finally:
            for process in (publisher, operator.process):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
        report["peak_rss_mb"] = round(peak_kb / 1024, 1)
        report["fan_out"] = fan_out
        report["restarts"] = restarts
        report["finished"] = finished
        report["total_seconds"] = round(time.monotonic() - t0, 1)
        report["samples"] = samples
        report["steps"] = steps
        report["status_writes"] = status_rate(steps)
        report["manifest"] = check_manifest(found, finished["manifest"], count)
    return report


def fan_out_round(found, count: int, tree: Path, env: dict[str, str]) -> dict[str, Any]:
    """One job's fan-out alone, by the operator of the source tree `tree` (its own
    bench/million.py, so its own step loop): from its first step to the step that has published all
    `count`; then the process is stopped and the job's queues deleted. No restart, no accounting."""
    from kompressor.messages import JobRef
    from kompressor_operator import broker

    document = job_document(count)
    job_file = found.run_dir / f"job-{document['job']['name']}.json"
    job_file.write_text(json.dumps(document))
    paths = [str(tree / part) for part in ("", "operator", "worker")]
    child_env = {**env, "PYTHONPATH": os.pathsep.join(paths)}  # ahead of the editable install
    argv = [sys.executable, str(tree / "bench" / "million.py"), "operator", str(job_file), found.broker.url]
    operator = Operator(argv, child_env)
    steps: list[dict[str, Any]] = []
    opened: dict[str, Any] = {}
    peak_kb = 0
    try:
        while not steps or steps[-1]["published"] < count:
            time.sleep(0.2)
            peak_kb = max(peak_kb, rss_kb(operator.process.pid)[1])
            for line in operator.poll():
                if line["event"] == "opened":
                    opened = line
                elif line["event"] == "step":
                    steps.append(line)
            if operator.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {operator.process.returncode}")
    finally:
        operator.kill()
        connection = broker.connect(found.broker.url)
        try:
            broker.delete_job_queues(connection.channel(), JobRef(**document["job"]))
        finally:
            connection.close()
    first = steps[0]["t"] - steps[0]["seconds"]
    return {
        "tree": str(tree),
        "seconds": round(steps[-1]["t"] - first, 2),
        "step_seconds": round(sum(step["seconds"] for step in steps), 2),
        # from the ledger read to the last publish (the interpreter's start-up left out)
        "cpu_seconds": round(steps[-1]["cpu"] - opened["cpu"], 2),
        "steps": len(steps),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "status_writes": status_rate(steps),
        "step_durations": [step["seconds"] for step in steps],
    }


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """--fan-out-only: the inputs uploaded once, then `rounds` fan-outs of a new job each by each
    tree, interleaved (this tree first in even rounds, last in odd ones)."""
    count = args.inputs
    info = machine()
    print(f"machine: {describe_machine(info)}; load average {load_average()}", flush=True)
    trees = [Path(__file__).resolve().parents[1], *(path.resolve() for path in args.compare)]
    report: dict[str, Any] = {"machine": info, "inputs": count, "rounds": []}
    with running() as found:
        seconds, how = put_empty_objects(found, BUCKET, [input_key(i) for i in range(count)], threads=64)
        report["upload"] = {"seconds": round(seconds, 1), "how": how}
        print(f"upload: {count} objects in {seconds:.0f} s ({how})", flush=True)
        env = {**os.environ, **found.storage.env()}
        for index in range(args.rounds):
            for tree in trees if index % 2 == 0 else trees[::-1]:  # ABBA: neither always first
                result = {
                    "round": index,
                    "load_average": load_average(),
                    **fan_out_round(found, count, tree, env),
                }
                report["rounds"].append(result)
                print(json.dumps(result), flush=True)
    report["median"] = {
        str(tree): {
            key: statistics.median(r[key] for r in report["rounds"] if r["tree"] == str(tree))
            for key in ("seconds", "step_seconds", "cpu_seconds", "peak_rss_mb")
        }
        | {
            "status_writes_mean_per_minute": statistics.median(
                r["status_writes"]["mean_per_minute"] or 0 for r in report["rounds"] if r["tree"] == str(tree)
            )
        }
        for tree in trees
    }
    return report


def status_rate(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Status writes per minute: the most in any 60 s window, and the mean."""
    times = sorted(step["t"] for step in steps)
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > 60:
            start += 1
        most = max(most, end - start + 1)
    # n writes are n - 1 intervals: a short run's first write would count a whole extra interval
    mean = (len(times) - 1) / ((times[-1] - times[0]) / 60) if len(times) > 1 else None
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "writes": len(times),
        "max_per_minute": most,
        "mean_per_minute": round(mean, 1) if mean is not None else None,
        "shortest_gap_seconds": round(min(gaps), 2) if gaps else None,
    }


def check_manifest(found, url: str, count: int) -> dict[str, Any]:
    """Every id 0..count-1 once in manifest.jsonl (read as a stream)."""
    client = found.storage.client()
    bucket, key = url.removeprefix("s3://").split("/", 1)
    seen = bytearray(count)
    lines = duplicates = 0
    for line in client.get_object(Bucket=bucket, Key=key)["Body"].iter_lines(chunk_size=2**20):
        n = json.loads(line)["id"]
        lines += 1
        duplicates += seen[n]
        seen[n] = 1
    return {"lines": lines, "distinct": sum(seen), "duplicates": duplicates, "missing": count - sum(seen)}


def sparkline(values: list[float], width: int = 60) -> str:
    if not values:
        return ""
    step = max(1, len(values) // width)
    picked = [max(values[i : i + step]) for i in range(0, len(values), step)]
    top = max(picked) or 1
    return "".join("▁▂▃▄▅▆▇█"[min(7, int(v / top * 7.999))] for v in picked)


def summarize(report: dict[str, Any]) -> None:
    count = report["inputs"]
    rows = [
        ["inputs (empty S3 objects)", f"{count:,}"],
        ["upload (not timed in the job)", f"{report['upload']['seconds']} s, {report['upload']['how']}"],
        ["fan-out: list + publish, no backpressure", f"{report['fan_out'].get('seconds')} s"],
        [
            "job, first step to manifest written",
            f"{report['total_seconds']} s (incl. {len(report['restarts'])} restarts)",
        ],
        ["results", "published by the benchmark in the worker's format (no encodes)"],
        [
            "operator peak RSS (VmHWM, any of its processes)",
            f"{report['peak_rss_mb']} MB (goal < {RSS_GOAL_MB})",
        ],
        ["status writes / minute (max over 60 s windows)", report["status_writes"]["max_per_minute"]],
        [
            "manifest",
            f"{report['manifest']['lines']:,} lines, {report['manifest']['missing']} missing, "
            f"{report['manifest']['duplicates']} duplicates; "
            f"written in {report['finished']['manifest_seconds']} s",
        ],
    ]
    print(table(["", ""], rows))
    print(
        table(
            ["restart at", "published", "accounted", "ledger objects read", "ledger load s", "resume s"],
            [
                [
                    r["at"],
                    r["published"],
                    r["accounted"],
                    r.get("objects_read"),
                    r.get("load_seconds"),
                    r.get("resume_seconds"),
                ]
                for r in report["restarts"]
            ],
        )
    )
    samples = report["samples"]
    print(
        "RSS      ", sparkline([s["rss_mb"] for s in samples]), f"max {max(s['rss_mb'] for s in samples)} MB"
    )
    rates = [max(0, b["accounted"] - a["accounted"]) for a, b in itertools.pairwise(samples)]
    print("accounted/s", sparkline(rates), f"max {max(rates or [0])}/s")


def plot(report: dict[str, Any]) -> Path:
    samples = report["samples"]
    return line_plot(
        RESULTS / f"million-{report['inputs']}.png",
        f"One job of {report['inputs']:,} inputs: the operator's RSS and its counts",
        [
            Series("RSS (MB)", [(s["t"], s["rss_mb"]) for s in samples], (200, 40, 40)),
            Series(
                "published (k)", [(s["t"], s["published"] / 1000) for s in samples], (40, 90, 200), "right"
            ),
            Series(
                "accounted (k)", [(s["t"], s["accounted"] / 1000) for s in samples], (40, 160, 60), "right"
            ),
        ],
        "seconds",
        "MB",
        "thousands",
        marks=[(0, "start")],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode")
    child = sub.add_parser("operator")
    child.add_argument("job_file", type=Path)
    child.add_argument("broker_url")
    child = sub.add_parser("results")
    child.add_argument("job_file", type=Path)
    child.add_argument("broker_url")
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--verbose", action="store_true", help="print the operator's lines")
    parser.add_argument(
        "--fan-out-only",
        action="store_true",
        help="time the fan-out alone (no restart, no accounting), --rounds times, interleaved with --compare",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        help="with --fan-out-only: another source tree (e.g. `git worktree add` of a baseline commit) "
        "whose operator runs every other round",
    )
    args = parser.parse_args(argv)
    if args.mode == "operator":
        return operator_main(args.job_file, args.broker_url)
    if args.mode == "results":
        return results_main(args.job_file, args.broker_url)
    # stopped with SIGTERM: stop the test bed's services too (the `services` context's finally)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.fan_out_only:
        report = compare(args)
        report["load_average_after"] = load_average()
        path = write_json(f"million-fan-out-{args.inputs}.json", report)
        print(json.dumps(report["median"], indent=2))
        print(f"wrote {path}")
        return 0
    report = run(args)
    report["load_average_after"] = load_average()
    path = write_json(f"million-{args.inputs}.json", report)
    summarize(report)
    print(f"wrote {path} and {plot(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
