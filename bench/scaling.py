"""Scaling in local mode: replicas against backlog over time, scale-up and scale-down latencies.

One CompressionJob of real photographs (tests.corpus.real_photos(), repeated under distinct keys)
runs through `kompressor_operator.local.run_job`, in this process, with the default
scaleDownDelaySeconds (30): the same engine and scaling policy as the operator, worker processes
instead of pods. Three observers record the run:

- `on_update(status)`: after each scaling decision (every second), status.workers.desired and
  status.outstanding (published - accounted);
- the engine's own steps (local.JobEngine is wrapped): the broker's ready count per step, and the
  moment the first batch of tasks is confirmed (the backlog appears);
- a thread reading /proc every 0.1 s: how many `kompressor-worker` processes are alive (the
  moment the first one starts, the moment the last one has exited).

Targets: a scale-up decision within 5 s of a backlog appearing; zero workers within 35 s of the
queue draining. "Drained" is reported two ways: the broker's ready count reaching 0 (every task
delivered, some still in flight) and every task accounted for (the job is finished).

    python bench/scaling.py                     # 240 images, maxReplicas 3, ~1-2 minutes
    python bench/scaling.py --images 480 --tasks-per-replica 40

Prints a table and writes bench/results/scaling.json and bench/results/scaling.png.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import threading
import time
from dataclasses import dataclass, field
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

from kompressor.crd import CompressionJobSpec, parse_spec
from kompressor_operator import engine as engine_module
from kompressor_operator import local
from kompressor_operator.engine import JobEngine
from tests.corpus import real_photos

BUCKET = "scaling-bench"
SCALE_UP_TARGET = 5.0
SCALE_DOWN_TARGET = 35.0


@dataclass
class Timeline:
    """Everything observed, in seconds since run_job was called."""

    started: float = field(default_factory=time.monotonic)
    updates: list[tuple[float, int, int, int, str]] = field(
        default_factory=list
    )  # t, desired, ready, outst., phase
    steps: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, ready, published, accounted
    processes: list[tuple[float, int]] = field(default_factory=list)  # t, worker processes alive
    first_confirmed: float | None = None  # the first batch of tasks confirmed: the backlog exists
    engine: JobEngine | None = None

    def now(self) -> float:
        return time.monotonic() - self.started


def recording_engine(timeline: Timeline) -> type[JobEngine]:
    class RecordingEngine(JobEngine):
        def open(self) -> RecordingEngine:
            super().open()
            timeline.engine = self
            save = self.ledger.save_cursor

            def saved(cursor) -> None:
                save(cursor)
                if timeline.first_confirmed is None and cursor.next_id > 0:
                    timeline.first_confirmed = timeline.now()

            self.ledger.save_cursor = saved
            return self

        def step(self):
            progress = super().step()
            counts = progress.counts
            timeline.steps.append((timeline.now(), progress.ready, counts.published, counts.accounted))
            return progress

    return RecordingEngine


def _worker_processes(parent: int) -> int:
    """Live `kompressor-worker` processes started by `parent` (zombies do not count)."""
    alive = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            after = stat.rsplit(")", 1)[1].split()
            if int(after[1]) != parent or after[0] == "Z":
                continue
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if b"kompressor-worker" in command or b"kompressor_worker" in command:
            alive += 1
    return alive


def watch_processes(timeline: Timeline, stop: threading.Event) -> None:
    parent = os.getpid()
    while not stop.is_set():
        timeline.processes.append((timeline.now(), _worker_processes(parent)))
        stop.wait(0.1)


def upload(found, photos: dict[str, bytes], images: int, prefix: str) -> list[str]:
    client = found.s3_client(pool=16)
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    names = sorted(photos)
    keys = [
        (f"{prefix}{i // len(names):03d}/{names[i % len(names)]}", names[i % len(names)])
        for i in range(images)
    ]

    def put(item: tuple[str, str]) -> None:
        client.put_object(Bucket=BUCKET, Key=item[0], Body=photos[item[1]], ContentType="image/jpeg")

    with concurrent.futures.ThreadPoolExecutor(16) as executor:
        list(executor.map(put, keys))
    return [key for key, _ in keys]


def job_spec(prefix: str, args: argparse.Namespace) -> CompressionJobSpec:
    return parse_spec(
        {
            "source": {"s3": {"bucket": BUCKET, "prefix": prefix}},
            "destination": {"s3": {"bucket": BUCKET, "prefix": f"out-{prefix}"}},
            "output": {"format": "webp", "quality": 80, "resize": {"maxWidth": 1280, "maxHeight": 1280}},
            "workers": {
                "minReplicas": 0,
                "maxReplicas": args.max_replicas,
                "tasksPerReplica": args.tasks_per_replica,
                "processesPerPod": 1,
            },
        }
    )


def first(items, predicate, default=None):
    return next((item for item in items if predicate(item)), default)


def analyse(timeline: Timeline, run: local.Run, returned_at: float) -> dict[str, Any]:
    updates, steps, processes = timeline.updates, timeline.steps, timeline.processes
    decision = first(updates, lambda u: u[1] > 0)
    first_worker = first(processes, lambda p: p[1] > 0)
    first_result = first(steps, lambda s: s[3] > 0)
    backlog = timeline.first_confirmed
    busy_from = first_result[0] if first_result else 0.0
    ready_zero = first(steps, lambda s: s[0] >= busy_from and s[2] > 0 and s[1] == 0)
    accounted = first(steps, lambda s: s[2] > 0 and s[3] >= s[2])
    last_alive = max((p[0] for p in processes if p[1] > 0), default=None)
    zero_workers = first(processes, lambda p: last_alive is not None and p[0] > last_alive)
    peak = max((u[1] for u in updates), default=0)
    result: dict[str, Any] = {
        "backlog_appears_s": _round(backlog),
        "first_scale_up_decision_s": _round(decision[0] if decision else None),
        "first_worker_process_s": _round(first_worker[0] if first_worker else None),
        "first_result_s": _round(first_result[0] if first_result else None),
        "queue_ready_zero_s": _round(ready_zero[0] if ready_zero else None),
        "all_accounted_s": _round(accounted[0] if accounted else None),
        "zero_workers_s": _round(zero_workers[0] if zero_workers else None),
        "run_job_returned_s": _round(returned_at),
        "peak_desired": peak,
        "peak_processes": max((p[1] for p in processes), default=0),
    }
    if backlog is not None and decision is not None:
        result["scale_up_latency_s"] = _round(decision[0] - backlog)
    if ready_zero is not None and zero_workers is not None:
        result["zero_workers_after_queue_empty_s"] = _round(zero_workers[0] - ready_zero[0])
    if accounted is not None and zero_workers is not None:
        result["zero_workers_after_all_accounted_s"] = _round(zero_workers[0] - accounted[0])
    result["decisions"] = [
        {"t": t, "replicas": replicas, "reason": reason} for t, replicas, reason in run.decisions
    ]
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def plot(
    timeline: Timeline, result: dict[str, Any], path: Path, spec: CompressionJobSpec, images: int
) -> Path:
    desired = [(t, d) for t, d, _r, _o, _p in timeline.updates]
    outstanding = [(t, o) for t, _d, _r, o, _p in timeline.updates]
    ready = [(t, r) for t, r, _p, _a in timeline.steps]
    alive = timeline.processes
    marks = []
    for key, label in (
        ("first_scale_up_decision_s", "scale-up decision"),
        ("first_worker_process_s", "first worker"),
        ("queue_ready_zero_s", "queue empty (ready 0)"),
        ("all_accounted_s", "all accounted"),
        ("zero_workers_s", "zero workers"),
    ):
        if result.get(key) is not None:
            marks.append((result[key], f"{label} {result[key]:.1f}s"))
    workers = spec.workers
    return line_plot(
        path,
        f"local mode, {images} photos -> WebP q80: maxReplicas {workers.max_replicas}, tasksPerReplica "
        f"{workers.tasks_per_replica}, scaleDownDelaySeconds {workers.scale_down_delay_seconds}",
        [
            Series("worker processes alive", alive, (240, 150, 20), "left", step=True),
            Series("desired replicas", desired, (200, 30, 30), "left", step=True),
            Series("outstanding (published - accounted)", outstanding, (30, 80, 200), "right"),
            Series("queue ready", ready, (90, 170, 90), "right"),
        ],
        "seconds since run_job was called",
        "workers",
        "tasks",
        marks,
    )


class _Stop(Exception):
    """Raised from on_update to end a run after its first scale-up decision."""


def run_local(found, spec: CompressionJobSpec, name: str, stop_at_first_decision: bool = False):
    """run_job in this process with the three observers; returns (timeline, run or None, returned)."""
    job_file = local.JobFile(name=name, spec=spec)
    settings = found.operator_settings()
    timeline = Timeline()
    stop = threading.Event()
    watcher = threading.Thread(target=watch_processes, args=(timeline, stop), daemon=True)

    def on_update(status) -> None:
        workers = status.workers
        timeline.updates.append(
            (timeline.now(), workers.desired, workers.ready, status.outstanding, status.phase.value)
        )
        if stop_at_first_decision and workers.desired > 0:
            raise _Stop

    original = local.JobEngine
    local.JobEngine = recording_engine(timeline)
    run = None
    try:
        timeline.started = time.monotonic()
        watcher.start()
        try:
            run = local.run_job(
                job_file, settings, on_update=on_update, log_dir=RESULTS / f"{name}-worker-logs"
            )
        except _Stop:
            if timeline.engine is not None:
                timeline.engine.delete_queues()
                timeline.engine.close()
        returned = timeline.now()
        time.sleep(1.0)  # let the watcher see the last exits
    finally:
        local.JobEngine = original
        stop.set()
        watcher.join(5)
    return timeline, run, returned


def large_listing(found, inputs: int, bounded: bool) -> dict[str, Any]:
    """A job of `inputs` empty objects: how long after its backlog appears is the first decision?"""
    prefix = "large/"
    spec = parse_spec(
        {
            "source": {"s3": {"bucket": BUCKET, "prefix": prefix}},
            "destination": {"s3": {"bucket": BUCKET, "prefix": "out-large/"}},
            "output": {"format": "webp", "quality": 80},
            "workers": {"maxReplicas": 1, "processesPerPod": 1},
        }
    )
    saved = engine_module.FAN_OUT_SECONDS
    if not bounded:
        engine_module.FAN_OUT_SECONDS = float("inf")  # as before: the whole first fan-out in one step
    try:
        timeline, _run, _returned = run_local(found, spec, "scaling-large", stop_at_first_decision=True)
    finally:
        engine_module.FAN_OUT_SECONDS = saved
    decision = first(timeline.updates, lambda u: u[1] > 0)
    first_step = timeline.steps[0] if timeline.steps else None
    backlog = timeline.first_confirmed
    return {
        "inputs": inputs,
        "fan_out_per_step": f"{saved:g} s" if bounded else "unbounded (before)",
        "backlog_appears_s": _round(backlog),
        "first_decision_s": _round(decision[0] if decision else None),
        "scale_up_latency_s": _round(decision[0] - backlog if decision and backlog is not None else None),
        "published_before_decision": first_step[2] if first_step else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--max-replicas", type=int, default=3)
    parser.add_argument("--tasks-per-replica", type=int, default=20)
    parser.add_argument("--large-inputs", type=int, default=30_000, help="0 skips the large-listing runs")
    parser.add_argument("--keep", action="store_true", help="keep the test bed's run directory")
    args = parser.parse_args(argv)
    info = machine()
    print(f"machine: {describe_machine(info)}; load average {load_average()}", flush=True)
    photos = real_photos()
    if not photos:
        print("no photos: install Debian's opencv-doc (tests/corpus.py)", file=sys.stderr)
        return 1
    report: dict[str, Any] = {
        "machine": info,
        "load_average_before": load_average(),
        "corpus": f"tests.corpus.real_photos(): {len(photos)} photos, repeated to {args.images} images",
    }
    with running(keep=args.keep) as found:
        report["services"] = {"source": found.source, "startup_seconds": found.startup_seconds}
        prefix = f"run-{int(time.time())}/"
        upload(found, photos, args.images, prefix)
        spec = job_spec(prefix, args)
        timeline, run, returned = run_local(found, spec, "scaling-bench")
        assert run is not None
        large = []
        if args.large_inputs:
            seconds, how = put_empty_objects(
                found, BUCKET, [f"large/{i // 1000:03d}/{i:07d}.jpg" for i in range(args.large_inputs)]
            )
            print(f"large listing: {args.large_inputs} empty objects in {seconds:.0f} s ({how})", flush=True)
            large = [large_listing(found, args.large_inputs, bounded) for bounded in (True, False)]
    report["large_listing"] = large
    status = run.status
    report["job"] = {
        "images": args.images,
        "spec_workers": spec.workers.model_dump(by_alias=True, exclude={"resources"}),
        "phase": status.phase.value,
        "succeeded": status.succeeded,
        "failed": status.failed,
        "skipped": status.skipped,
    }
    result = analyse(timeline, run, returned)
    report["result"] = result
    report["timeline"] = {
        "updates": timeline.updates,
        "steps": timeline.steps,
        "processes": timeline.processes[::5],
    }
    report["load_average_after"] = load_average()
    png = plot(timeline, result, RESULTS / "scaling.png", spec, args.images)

    up = result.get("scale_up_latency_s")
    down = result.get("zero_workers_after_queue_empty_s")
    rows = [
        ["backlog appears (first batch confirmed)", result["backlog_appears_s"], ""],
        ["first scale-up decision", result["first_scale_up_decision_s"], f"{up} s after the backlog"],
        ["first worker process running", result["first_worker_process_s"], "job start -> first worker"],
        ["first result accounted", result["first_result_s"], ""],
        ["queue empty (broker ready = 0)", result["queue_ready_zero_s"], ""],
        ["every task accounted (finished)", result["all_accounted_s"], ""],
        ["zero worker processes", result["zero_workers_s"], f"{down} s after the queue emptied"],
        ["run_job returned", result["run_job_returned_s"], "after the manifest and queue deletion"],
    ]
    print()
    print(
        f"Local mode, {args.images} photos (WebP q80, fit 1280), maxReplicas {args.max_replicas}, "
        f"tasksPerReplica {args.tasks_per_replica}, scaleDownDelaySeconds 30 — {describe_machine(info)}"
    )
    print(f"job: {status.phase.value}, {status.succeeded} succeeded, {status.failed} failed")
    print(table(["event", "seconds since run_job", "note"], rows))
    print("\ndecisions (local mode's own log, seconds since its loop started):")
    decisions = [[d["t"], d["replicas"], d["reason"]] for d in result["decisions"]]
    print(table(["t", "replicas", "reason"], decisions))
    if large:
        print(
            f"\nlarge listing: {args.large_inputs} inputs, first scale-up decision after the backlog appears"
        )
        print(
            table(
                ["fan-out per step", "backlog appears", "first decision", "latency", "published by then"],
                [
                    [
                        r["fan_out_per_step"],
                        r["backlog_appears_s"],
                        r["first_decision_s"],
                        r["scale_up_latency_s"],
                        r["published_before_decision"],
                    ]
                    for r in large
                ],
            )
        )
    latencies = [up] + [
        r["scale_up_latency_s"] for r in large if r["fan_out_per_step"] != "unbounded (before)"
    ]
    worst_up = max((value for value in latencies if value is not None), default=None)
    up_ok = worst_up is not None and worst_up <= SCALE_UP_TARGET
    down_ok = down is not None and down <= SCALE_DOWN_TARGET
    verdict_up = "met" if up_ok else "MISSED"
    print(
        f"\ntarget: scale-up decision within {SCALE_UP_TARGET:.0f} s of a backlog: "
        f"{verdict_up} ({worst_up} s)"
    )
    print(
        f"target: zero workers within {SCALE_DOWN_TARGET:.0f} s of the queue draining: "
        f"{'met' if down_ok else 'MISSED'} ({down} s)"
    )
    report["targets"] = {"scale_up_met": up_ok, "scale_down_met": down_ok, "worst_scale_up_s": worst_up}
    path = write_json("scaling.json", report)
    print(f"\nwrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
