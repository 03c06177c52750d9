"""Fan-out: list 100,000 S3 inputs and publish one confirmed task each, as the engine does.

Set-up (not timed): a bucket with N objects of empty bodies under `in/NNN/`, written through the test
bed's SeaweedFS filer (~2,000/s; boto3 put_object costs ~2.5 ms of client CPU each, so 100,000 of
them would take minutes) or, against an S3 server from the environment, with a boto3 thread pool.

Then, each timed on its own:

- listing: `listing.list_s3_sources` over the N keys (pages of 1000), with the product's client
  (`kompressor_s3.s3_client`, which parses timestamps with the standard library) and with the
  same client given botocore's own timestamp parser (dateutil: what the product used before);
- planning: `planning.plan_task` + `Task.encode` for the N sources, in memory (CPU only);
- publishing, bare: `broker.publish_tasks` on a BlockingChannel in confirm mode (one round trip per
  task: a sample, extrapolated) against `broker.ConfirmedPublisher` (batches of 1000 in flight);
- the engine: `JobEngine.step()` until the listing is done, maxOutstanding = 1,000,000 (no
  backpressure): the figure the target (< 15 s for 100,000) is about. Run --repeat times (2),
  interleaved with the same run given botocore's timestamp parser; the best run is reported
  and every run is in the JSON. After the first run the queue is drained to check that every id
  0..N-1 was published exactly once. Then one more run under py-spy (where the time goes).
- restart: a 10,000-task fan-out "crashes" at its 5th batch — once right after a cursor save, once
  between a batch's confirms and its cursor save — and a new engine resumes it from the ledger;
  the queue must hold every id, with duplicates only of the one batch confirmed but not yet saved.

CPU seconds of this process, RabbitMQ, SeaweedFS and everything else on the machine ("other") are
read from /proc for each timed part: on a shared machine "other" says how much the figures suffered.

    python bench/fanout.py                    # N = 100,000, ~4-5 minutes with the set-up
    python bench/fanout.py --tasks 20000 --no-profile

Prints tables and writes bench/results/fanout.json (and the raw py-spy stacks beside it).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

from common import (
    RESULTS,
    describe_machine,
    load_average,
    machine,
    profiled,
    summarize_profile,
    table,
    write_json,
)
from proc import Meter
from services import Services, put_empty_objects, running

from kompressor.crd import CompressionJobSpec, parse_spec
from kompressor.messages import JobRef, task_queue
from kompressor_operator import broker
from kompressor_operator.engine import PUBLISH_BATCH, JobEngine
from kompressor_operator.listing import list_s3_sources
from kompressor_operator.planning import plan_task
from kompressor_s3 import s3_client

TARGET_SECONDS = 15.0
TARGET_TASKS = 100_000
BUCKET = "fanout-bench"
BLOCKING_SAMPLE = 2000
RESTART_TASKS = 10_000
CRASH_AT_BATCH = 5

# py-spy frames -> where the engine's time goes (the innermost matching frame decides).
PROFILE_BUCKETS = {
    "listing: LastModified parsing (dateutil)": ["dateutil/", "parse_timestamp"],
    "listing: XML parsing (botocore)": ["botocore/parsers.py", "_handle_200_error"],
    "listing: HTTP, signing, paginator": ["list_s3_sources"],
    "publish: socket writes (pika)": ["_sigint_safe_send"],
    "tasks: plan_task + Task.encode": ["plan_task", "kompressor/messages.py", "pydantic/"],
    "publish: other pika (frames, acks, wait)": ["ConfirmedPublisher"],
    "cursor saves (S3 PUT per batch)": ["save_cursor"],
    "results, queue depth": ["_collect", "queue_depth"],
}


# --- set-up ---------------------------------------------------------------------------------------


def input_key(index: int) -> str:
    return f"in/{index // 1000:03d}/{index:07d}.jpg"


def create_inputs(found: Services, count: int) -> dict[str, Any]:
    """N empty objects under in/ (S3 key order = index order)."""
    seconds, how = put_empty_objects(found, BUCKET, [input_key(i) for i in range(count)])
    return {"objects": count, "body_bytes": 0, "how": how, "seconds": round(seconds, 1)}


def job_spec(prefix: str = "in/") -> CompressionJobSpec:
    return parse_spec(
        {
            "source": {"s3": {"bucket": BUCKET, "prefix": prefix}},
            "destination": {"s3": {"bucket": BUCKET, "prefix": "out/"}},
            "output": {"format": "webp", "quality": 80, "resize": {"maxWidth": 1600, "maxHeight": 1600}},
            "limits": {"maxOutstanding": 1_000_000},
        }
    )


def new_job(name: str) -> JobRef:
    return JobRef(namespace="bench", name=f"{name}-{uuid.uuid4().hex[:6]}", uid=str(uuid.uuid4()))


def botocore_timestamps_client(found: Services):
    """The product's client as it was before it parsed timestamps itself: botocore's parser
    (dateutil) in place of `kompressor_s3.parse_timestamp`, everything else the same."""
    from botocore.utils import parse_timestamp

    with mock.patch("kompressor_s3.parse_timestamp", parse_timestamp):
        return s3_client(found.storage_settings())


# --- the parts ------------------------------------------------------------------------------------


def measure_listing(found: Services, client, spec: CompressionJobSpec) -> tuple[Meter, list]:
    client.list_buckets()  # connect and load the service model outside the timing
    assert spec.source.s3 is not None
    with Meter(found.pids).measure() as meter:
        sources = list(list_s3_sources(client, spec.source.s3))
    return meter, sources


def measure_planning(found: Services, spec: CompressionJobSpec, sources: list) -> tuple[Meter, int]:
    job = new_job("plan")
    with Meter(found.pids).measure() as meter:
        size = 0
        for index, source in enumerate(sources):
            size += len(plan_task(job, spec, index, source).encode())
    return meter, size // max(1, len(sources))


def measure_blocking_publish(found: Services, spec: CompressionJobSpec, sources: list) -> Meter:
    """The previous way: BlockingChannel in confirm mode, one round trip per task."""
    job = new_job("blocking")
    tasks = [plan_task(job, spec, i, s) for i, s in enumerate(sources[:BLOCKING_SAMPLE])]
    connection = broker.connect(found.broker_url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        broker.declare_job_queues(channel, job, spec.limits)
        with Meter(found.pids).measure() as meter:
            broker.publish_tasks(channel, tasks)
        broker.delete_job_queues(channel, job)
    finally:
        connection.close()
    return meter


def measure_pipelined_publish(found: Services, spec: CompressionJobSpec, sources: list) -> Meter:
    job = new_job("pipelined")
    tasks = [plan_task(job, spec, i, s) for i, s in enumerate(sources)]
    connection = broker.connect(found.broker_url)
    try:
        channel = connection.channel()
        broker.declare_job_queues(channel, job, spec.limits)
        with Meter(found.pids).measure() as meter, broker.ConfirmedPublisher(found.broker_url) as publisher:
            for start in range(0, len(tasks), PUBLISH_BATCH):
                publisher.publish(tasks[start : start + PUBLISH_BATCH])
        depth = broker.queue_depth(channel, task_queue(job)).ready
        broker.delete_job_queues(channel, job)
    finally:
        connection.close()
    if depth != len(tasks):
        raise AssertionError(f"pipelined publish: {depth} tasks queued, {len(tasks)} published")
    return meter


def engine_fan_out(found: Services, client, spec: CompressionJobSpec, profile: Path | None = None):
    """JobEngine.step() until the listing is done; returns (meter, steps, published, job, engine)."""
    job = new_job("fanout")
    engine = JobEngine(job, spec, found.broker_url, client).open()
    steps = 0
    with profiled(profile), Meter(found.pids).measure() as meter:
        while True:
            progress = engine.step()
            steps += 1
            if progress.counts.listing_done:
                break
    return meter, steps, progress.counts.published, job, engine


def queue_ready(url: str, queue: str) -> int:
    connection = broker.connect(url)
    try:
        return broker.queue_depth(connection.channel(), queue).ready
    finally:
        connection.close()


def drain_ids(url: str, queue: str, expected: int) -> list[int]:
    """Consume (auto-ack) every task in the queue; return their ids in queue order."""
    ids: list[int] = []
    connection = broker.connect(url)
    try:
        channel = connection.channel()
        for method, _properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=3):
            if method is None:
                break
            ids.append(json.loads(body)["id"])
        channel.cancel()
    finally:
        connection.close()
    if len(ids) < expected:
        print(f"warning: drained {len(ids)} of {expected} tasks", file=sys.stderr)
    return ids


def check_ids(ids: list[int], count: int) -> dict[str, Any]:
    seen = Counter(ids)
    distinct = set(seen)
    missing = count - len(distinct & set(range(count)))
    duplicated = sorted(i for i, n in seen.items() if n > 1)
    return {
        "published": len(ids),
        "distinct": len(distinct),
        "missing": missing,
        "duplicates": len(ids) - len(distinct),
        "duplicated_ids": [duplicated[0], duplicated[-1]] if duplicated else [],
    }


class SimulatedCrash(Exception):
    """Not a transient error: JobEngine.step() does not retry it."""


def restart_check(found: Services, client, count: int, between_confirm_and_save: bool) -> dict[str, Any]:
    """Crash the fan-out at its CRASH_AT_BATCH-th batch, resume with a new engine, check the queue."""
    prefix = "in/00"  # in/000/ .. in/009/: the first 10,000 inputs
    spec = job_spec(prefix)
    job = new_job("restart")
    first = JobEngine(job, spec, found.broker_url, client).open()
    save = first.ledger.save_cursor
    saves = 0

    def crashing_save(cursor) -> None:
        nonlocal saves
        saves += 1
        if between_confirm_and_save and saves == CRASH_AT_BATCH:
            raise SimulatedCrash("after the batch's confirms, before its cursor save")
        save(cursor)
        if not between_confirm_and_save and saves == CRASH_AT_BATCH:
            raise SimulatedCrash("right after the cursor save")

    first.ledger.save_cursor = crashing_save
    try:
        while not first.step().counts.listing_done:
            pass
        raise AssertionError("the simulated crash did not happen")
    except SimulatedCrash:
        pass
    finally:
        first.close()
    second = JobEngine(job, spec, found.broker_url, client).open()
    resumed_at = second.ledger.cursor.next_id
    try:
        while not second.step().counts.listing_done:
            pass
        published = second.counts().published
        ids = drain_ids(found.broker_url, task_queue(job), count)
        second.delete_queues()
    finally:
        second.close()
    return {
        "crash": "between a batch's confirms and its cursor save"
        if between_confirm_and_save
        else "right after a cursor save",
        "tasks": count,
        "resumed_at_id": resumed_at,
        "cursor_total": published,
        **check_ids(ids, count),
    }


# --- main -----------------------------------------------------------------------------------------


def rate(count: int, meter: Meter) -> float:
    return count / meter.wall if meter.wall else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=TARGET_TASKS)
    parser.add_argument("--repeat", type=int, default=2, help="engine runs per variant (best is reported)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart check")
    parser.add_argument("--no-verify", action="store_true", help="do not drain the queue to check ids")
    parser.add_argument("--keep", action="store_true", help="keep the test bed's run directory")
    args = parser.parse_args(argv)
    count = args.tasks
    info = machine()
    print(f"machine: {describe_machine(info)}; load average {load_average()}", flush=True)
    report: dict[str, Any] = {"machine": info, "tasks": count, "target_seconds": TARGET_SECONDS}
    rows: list[list[Any]] = []

    with running(keep=args.keep) as found:
        report["services"] = {"source": found.source, "startup_seconds": found.startup_seconds}
        print(f"services: {found.source} {found.startup_seconds}", flush=True)
        setup = create_inputs(found, count)
        report["setup"] = setup
        print(f"set-up: {count} objects in {setup['seconds']} s ({setup['how']}, not timed)", flush=True)
        spec = job_spec()
        product_client = s3_client(found.storage_settings())
        botocore_client = botocore_timestamps_client(found)

        meter, sources = measure_listing(found, product_client, spec)
        if len(sources) != count:
            raise AssertionError(f"listed {len(sources)} inputs, created {count}")
        report["listing"] = {**meter.as_dict(), "rate_per_s": round(rate(count, meter))}
        rows.append(
            [
                "listing (list_s3_sources, product client)",
                count,
                meter.wall,
                rate(count, meter),
                meter.describe(),
            ]
        )
        meter, _ = measure_listing(found, botocore_client, spec)
        report["listing_botocore_timestamps"] = {**meter.as_dict(), "rate_per_s": round(rate(count, meter))}
        rows.append(
            [
                "listing, botocore's timestamp parser (before)",
                count,
                meter.wall,
                rate(count, meter),
                meter.describe(),
            ]
        )
        print("listing done", flush=True)

        meter, task_bytes = measure_planning(found, spec, sources)
        report["planning"] = {**meter.as_dict(), "us_per_task": round(meter.wall / count * 1e6, 1)}
        report["task_bytes"] = task_bytes
        rows.append(
            ["plan_task + Task.encode (in memory)", count, meter.wall, rate(count, meter), meter.describe()]
        )

        meter = measure_blocking_publish(found, spec, sources)
        blocking_rate = rate(BLOCKING_SAMPLE, meter)
        report["publish_blocking"] = {
            **meter.as_dict(),
            "tasks": BLOCKING_SAMPLE,
            "rate_per_s": round(blocking_rate),
            "extrapolated_seconds": round(count / blocking_rate, 1),
        }
        rows.append(
            [
                "publish, BlockingChannel confirm per task (before)",
                BLOCKING_SAMPLE,
                meter.wall,
                blocking_rate,
                meter.describe(),
            ]
        )
        meter = measure_pipelined_publish(found, spec, sources)
        report["publish_pipelined"] = {**meter.as_dict(), "rate_per_s": round(rate(count, meter))}
        rows.append(
            [
                f"publish, ConfirmedPublisher, {PUBLISH_BATCH} in flight",
                count,
                meter.wall,
                rate(count, meter),
                meter.describe(),
            ]
        )
        print("publishing done", flush=True)
        del sources

        # The engine runs, product and botocore-parser client interleaved: the best of --repeat runs is
        # what the machine can do, the spread what the other load on it did to the figures.
        engine_runs: dict[str, list[dict[str, Any]]] = {"product": [], "botocore_timestamps": []}
        for attempt in range(args.repeat):
            for variant, client in (("product", product_client), ("botocore_timestamps", botocore_client)):
                meter, steps, published, job, engine = engine_fan_out(found, client, spec)
                try:
                    run = {**meter.as_dict(), "rate_per_s": round(rate(published, meter)), "steps": steps}
                    run["published"] = published
                    run["queue_depth"] = queue_ready(found.broker_url, task_queue(job))
                    if variant == "product" and attempt == 0 and not args.no_verify:
                        run["verified"] = check_ids(
                            drain_ids(found.broker_url, task_queue(job), count), count
                        )
                    engine.delete_queues()
                finally:
                    engine.close()
                engine_runs[variant].append(run)
                print(
                    f"engine fan-out ({variant}): {published} in {meter.wall:.1f} s, {meter.describe()}",
                    flush=True,
                )
        for variant, label in (
            ("product", "ENGINE fan-out: step() until listed (product)"),
            ("botocore_timestamps", "engine fan-out, botocore's timestamp parser (before)"),
        ):
            runs = engine_runs[variant]
            best = min(runs, key=lambda r: r["wall_seconds"])
            walls = ", ".join(f"{r['wall_seconds']:.1f}" for r in runs)
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in best["cpu_seconds"].items())
            rows.append(
                [
                    f"{label}, best of {len(runs)} ({walls} s)",
                    best["published"],
                    best["wall_seconds"],
                    best["rate_per_s"],
                    cpu,
                ]
            )
            report["engine" if variant == "product" else "engine_botocore_timestamps"] = {
                "best": best,
                "runs": runs,
                "target_met": best["wall_seconds"] < TARGET_SECONDS,
            }

        if not args.no_profile:
            raw = RESULTS / "fanout-engine.pyspy.txt"
            raw.unlink(missing_ok=True)
            meter, _, published, job, engine = engine_fan_out(found, product_client, spec, profile=raw)
            engine.delete_queues()
            engine.close()
            report["engine_profiled"] = {
                **meter.as_dict(),
                "profile_raw": str(raw.relative_to(RESULTS.parent.parent)),
                **summarize_profile(raw, PROFILE_BUCKETS),
            }
            rows.append(
                [
                    "engine fan-out under py-spy (100 Hz)",
                    published,
                    meter.wall,
                    rate(published, meter),
                    meter.describe(),
                ]
            )

        if not args.no_restart and count >= RESTART_TASKS:
            report["restart"] = [
                restart_check(found, product_client, RESTART_TASKS, between_confirm_and_save=False),
                restart_check(found, product_client, RESTART_TASKS, between_confirm_and_save=True),
            ]

    report["load_average_after"] = load_average()
    print()
    print(f"Fan-out of {count:,} tasks — {describe_machine(info)}")
    print("(CPU seconds: bench = this process, rabbitmq/s3 = the test bed's servers, other = the rest)")
    print(table(["part", "tasks", "seconds", "tasks/s", "CPU seconds"], rows))
    engine_seconds = report["engine"]["best"]["wall_seconds"]
    verdict = "met" if engine_seconds < TARGET_SECONDS else "MISSED"
    print(f"\ntarget: {count:,} in < {TARGET_SECONDS:.0f} s: {verdict} ({engine_seconds:.1f} s)")
    if "engine_profiled" in report and report["engine_profiled"].get("share"):
        print("\nwhere the engine's time goes (py-spy samples of this process, innermost matching frame):")
        share = report["engine_profiled"]["share"]
        print(table(["part", "share of samples"], [[k, f"{v:.0%}"] for k, v in share.items()]))
    if "restart" in report:
        print("\nrestart: the fan-out crashes at its 5th batch, a new engine resumes from the ledger")
        print(
            table(
                ["crash", "resumed at id", "published", "distinct ids", "missing", "duplicates"],
                [
                    [
                        r["crash"],
                        r["resumed_at_id"],
                        r["published"],
                        r["distinct"],
                        r["missing"],
                        r["duplicates"],
                    ]
                    for r in report["restart"]
                ],
            )
        )
    path = write_json("fanout.json", report)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
