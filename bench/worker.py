"""Worker throughput: `kompressor-worker` end to end against the bare encoder, in one run.

For each output setting (webp q80 and jpeg q80, resize 1600x1600) and each pool size N (1, 2):

  (a) bare encoder: a multiprocessing pool of N processes calling `kompressor_worker.codec.compress`
      on the in-memory corpus (no queue, no storage);
  (b) the worker: the job's tasks published to RabbitMQ first, then one `kompressor-worker` process
      with KOMPRESSOR_PROCESSES=N, its results read from the results queue as they arrive.

Both are timed the same way: the first W completions (W = 3 x N) are the warm-up, and the steady
rate is (completions after the W-th) / (time from the W-th completion to the last). Start-up (pool
creation or `Popen` to the first completion) is reported separately. Results are consumed with
basic_consume, so each arrival is timestamped to the millisecond (tests.jobs.collect_results polls
every 0.2 s, a 2 % error on a 10 s run).

RabbitMQ and SeaweedFS come from the test bed (started in a temp dir), or from the environment
(KOMPRESSOR_BROKER__URL; KOMPRESSOR_STORAGE__ENDPOINT_URL/ACCESS_KEY_ID/SECRET_ACCESS_KEY/REGION).
On the test bed, the CPU time each process tree uses during the steady window is read from /proc,
so the share taken by the broker and S3 server (which run on the same cores here) is visible.

A serial breakdown follows: per task, S3 HEAD / GET / PUT, encode, and a confirmed result publish.
Stalls (gaps between results far above the median, e.g. pool children being recycled) and the time
each process group waited for a CPU (schedstat run delay: contention) are reported too.

    python bench/worker.py                      # both settings, N = 1 and 2, ~2 minutes
    python bench/worker.py --formats webp --repeat 3
    python bench/worker.py --worker-env KOMPRESSOR_PREFETCH=8 --py-spy bench/results/profiles

Prints a table and writes bench/results/worker.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import bare_encodes, describe_machine, machine  # noqa: E402
from proc import CLK_TCK, CpuMeter, cmdline, parent_pids, system_busy_ticks  # noqa: E402
from services import Services, Storage, start  # noqa: E402

from kompressor.crd import CompressionJobSpec, parse_spec  # noqa: E402
from kompressor.formats import CONTENT_TYPES  # noqa: E402
from kompressor.messages import JobRef, Result, Task, result_queue  # noqa: E402
from kompressor_operator import broker as broker_adapter  # noqa: E402
from kompressor_operator.listing import list_s3_sources  # noqa: E402
from kompressor_operator.planning import plan_tasks  # noqa: E402
from kompressor_operator.workerprocs import worker_command  # noqa: E402
from kompressor_worker.codec import compress  # noqa: E402
from kompressor_worker.storage import (  # noqa: E402
    existing_output,
    output_metadata,
    read_source,
    write_output,
)
from tests.corpus import OPENCV_DATA, real_photos  # noqa: E402
from tests.jobs import new_job, publish_job, worker_env  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "worker.json"
TARGET_RATIO = 0.95
# Images per setting, rounded up to whole repetitions of the corpus. JPEG encodes ~4x faster than
# WebP method 4 here, so it gets more images for a run of similar length.
DEFAULT_IMAGES = {"webp": 200, "jpeg": 600}


# --- machine and corpus ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    output: dict[str, Any]
    images: int


def settings_for(formats: list[str], images: int | None) -> list[Setting]:
    return [
        Setting(
            name=f"{fmt} q80 fit 1600",
            output={"format": fmt, "quality": 80, "resize": {"maxWidth": 1600, "maxHeight": 1600}},
            images=images or DEFAULT_IMAGES.get(fmt, 200),
        )
        for fmt in formats
    ]


def corpus_keys(photos: dict[str, bytes], images: int) -> list[tuple[str, str]]:
    """(relative key, photo name) for `images` rounded up to whole repetitions, in S3 key order."""
    reps = math.ceil(images / len(photos))
    keys = [(f"r{rep:03d}/{name}", name) for rep in range(reps) for name in photos]
    return sorted(keys)


def describe_corpus(photos: dict[str, bytes]) -> dict[str, Any]:
    import io

    from PIL import Image

    items = []
    for name, data in photos.items():
        with Image.open(io.BytesIO(data)) as image:
            items.append({"name": name, "bytes": len(data), "width": image.width, "height": image.height})
    pixels = [item["width"] * item["height"] / 1e6 for item in items]
    sizes = [item["bytes"] for item in items]
    return {
        "source": f"tests.corpus.real_photos(): Debian opencv-doc sample photographs in {OPENCV_DATA}",
        "photos": len(items),
        "bytes_total": sum(sizes),
        "bytes_min": min(sizes),
        "bytes_median": int(statistics.median(sizes)),
        "bytes_max": max(sizes),
        "megapixels_min": round(min(pixels), 3),
        "megapixels_median": round(statistics.median(pixels), 3),
        "megapixels_max": round(max(pixels), 3),
        "largest": max(items, key=lambda item: item["width"] * item["height"]),
        "note": "no photo is larger than 1600 px, so resize 1600 is a no-op: the work is decode + encode",
        "items": items,
    }


def job_spec(bucket: str, prefix: str, dest_prefix: str, output: dict[str, Any]) -> CompressionJobSpec:
    return parse_spec(
        {
            "source": {"s3": {"bucket": bucket, "prefix": prefix, "include": ["*"]}},
            "destination": {"s3": {"bucket": bucket, "prefix": dest_prefix}},
            "output": output,
        }
    )


def upload(storage: Storage, bucket: str, prefix: str, keys, photos: dict[str, bytes]) -> float:
    started = time.monotonic()
    client = storage.client()

    def put(item: tuple[str, str]) -> None:
        key, name = item
        client.put_object(Bucket=bucket, Key=prefix + key, Body=photos[name], ContentType="image/jpeg")

    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        list(executor.map(put, keys))
    return time.monotonic() - started


def wait_for_quiet(limit: float, patience: float) -> float:
    """Wait (up to `patience` s) until the machine's busy CPU, sampled over 2 s, is under `limit`
    cores; returns the last figure. Other work on the same cores skews every rate measured here."""
    deadline = time.monotonic() + patience
    while True:
        before = system_busy_ticks()
        time.sleep(2.0)
        busy = (system_busy_ticks() - before) / CLK_TCK / 2.0
        if busy < limit or time.monotonic() > deadline:
            return busy
        print(f"machine busy ({busy:.2f} cores used by others); waiting", file=sys.stderr)


# --- (a) the bare encoder -------------------------------------------------------------------------


def steady_rate(times: list[float], warmup: int) -> tuple[float, float]:
    """(images/s, seconds) from the `warmup`-th completion to the last."""
    window = times[-1] - times[warmup - 1]
    return (len(times) - warmup) / window, window


def run_bare(
    services: Services,
    spec: CompressionJobSpec,
    photos: dict[str, bytes],
    names: list[str],
    processes: int,
    warmup: int,
):
    meter = CpuMeter({"rabbitmq": services.broker.pid, "s3": services.storage.pid})
    started = time.monotonic()
    times: list[float] = []
    encode: list[float] = []
    for when, seconds in bare_encodes(photos, names, spec.output, spec.limits, processes):
        times.append(when)
        encode.append(seconds)
        if len(times) == warmup:
            meter.start()
        elif len(times) == len(names):
            meter.sample()
    rate, window = steady_rate(times, warmup)
    steady_encode = encode[warmup:]
    return {
        "images": len(times),
        "rate": rate,
        "window_seconds": window,
        "startup_seconds": times[0] - started,
        "encode_ms_mean": 1000 * statistics.fmean(steady_encode),
        "busy": sum(steady_encode) / (processes * window),
        **_cpu_report(meter, len(times) - warmup, window),
    }


def _cpu_report(meter: CpuMeter, images: int, window: float) -> dict[str, Any]:
    cpu = meter.seconds()
    return {
        "cpu_wait_ms_per_image": {
            group: round(1000 * seconds / images, 2) for group, seconds in sorted(meter.run_delay().items())
        },
        "cpu_ms_per_image": {
            group: round(1000 * seconds / images, 2) for group, seconds in sorted(cpu.items())
        },
        "cpu_cores_used": {group: round(seconds / window, 3) for group, seconds in sorted(cpu.items())},
    }


# --- (b) the worker end to end --------------------------------------------------------------------


class ResultClock:
    """Consumes a job's results queue and timestamps each arrival."""

    def __init__(self, url: str, job: JobRef, on_arrival):
        self.connection = broker_adapter.connect(url)
        self.channel = self.connection.channel()
        self.channel.basic_qos(prefetch_count=1000)
        self.arrivals: list[tuple[float, Result]] = []
        self.ids: set[int] = set()
        self.first_of_id: list[float] = []  # arrival time of each id's first result, in order
        self.on_arrival = on_arrival
        self.channel.basic_consume(result_queue(job), self._on_message, auto_ack=True)

    def _on_message(self, _channel, _method, _properties, body: bytes) -> None:
        now = time.monotonic()
        result = Result.decode(body)
        self.arrivals.append((now, result))
        if result.id not in self.ids:
            self.ids.add(result.id)
            self.first_of_id.append(now)
            self.on_arrival(len(self.first_of_id))

    def wait(self, expected: int, timeout: float, alive, tick) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ids) < expected:
            self.connection.process_data_events(time_limit=0.05)
            tick()
            if not alive():
                raise RuntimeError(f"the worker exited after {len(self.ids)}/{expected} results")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.ids)}/{expected} results after {timeout:.0f}s")

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def run_worker(
    services: Services,
    setting: Setting,
    bucket: str,
    source_prefix: str,
    processes: int,
    warmup: int,
    log_dir: Path,
    extra_env: dict[str, str],
    py_spy: Path | None,
    source: Path | None = None,
) -> dict[str, Any]:
    """`source`: run the worker from this source tree (`--baseline`) instead of the installed one."""
    job = new_job(f"bench-p{processes}")
    spec = job_spec(bucket, source_prefix, f"out/{job.uid8}/", setting.output)
    published_at = time.monotonic()
    expected = publish_job(services.broker, services.storage, job, spec)  # type: ignore[arg-type]
    publish_seconds = time.monotonic() - published_at

    env = {
        **os.environ,
        **worker_env(services.broker, services.storage, job),  # type: ignore[arg-type]
        "KOMPRESSOR_PROCESSES": str(processes),
        **extra_env,
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{job.name}.log"
    command = worker_command()
    if source is not None:  # its packages first; -m puts the working directory first on sys.path
        command = [sys.executable, "-m", "kompressor_worker"]
        env["PYTHONPATH"] = os.pathsep.join([str(source / "worker"), str(source)])
    if py_spy is not None:
        py_spy.mkdir(parents=True, exist_ok=True)
        profile = py_spy / f"{setting.name.split()[0]}-p{processes}-{job.uid8}.txt"
        command = [
            "py-spy", "record", "--subprocesses", "--format", "raw",
            "--rate", "200", "-o", str(profile), "--", *command,
        ]  # fmt: skip

    meter = CpuMeter({"rabbitmq": services.broker.pid, "s3": services.storage.pid})
    marks: dict[str, float] = {}

    def on_arrival(count: int) -> None:
        if count == warmup:
            meter.start()
        elif count == expected:
            meter.sample()
            marks["cpu_end"] = time.monotonic()

    clock = ResultClock(services.broker.url, job, on_arrival)
    with log_path.open("ab") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=source,
        )  # fmt: skip
    worker_pid = process.pid
    if py_spy is not None:  # the worker is py-spy's child
        meter.add_root("py-spy", process.pid)
        worker_pid = _child_running(process.pid, "kompressor-worker", timeout=10)
    meter.add_root("worker", worker_pid)
    last_tick = [0.0]

    def tick() -> None:
        if time.monotonic() - last_tick[0] > 0.2:
            meter.sample()
            last_tick[0] = time.monotonic()

    try:
        clock.wait(
            expected, timeout=max(120.0, expected * 1.0), alive=lambda: process.poll() is None, tick=tick
        )
    finally:
        clock.close()
        if process.poll() is None:
            # The worker drains (nothing is in flight) and exits; py-spy then writes its profile.
            if py_spy is not None:  # found again: py-spy's first child is not always the worker
                worker_pid = _child_running(process.pid, "kompressor-worker", timeout=10)
            os.kill(worker_pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        connection = broker_adapter.connect(services.broker.url)
        try:
            broker_adapter.delete_job_queues(connection.channel(), job)
        finally:
            connection.close()

    times = clock.first_of_id
    rate, window = steady_rate(times, warmup)
    steady_ids = {result.id for when, result in clock.arrivals if when > times[warmup - 1]}
    steady = [result for _when, result in clock.arrivals if result.id in steady_ids]
    outcomes: dict[str, int] = {}
    for _when, result in clock.arrivals:
        key = result.outcome.value + (f":{result.reason}" if result.reason else "")
        outcomes[key] = outcomes.get(key, 0) + 1
    images = len(times) - warmup
    # Stalls: gaps between arrivals far above the typical one, e.g. a pool child being recycled
    # after KOMPRESSOR_MAX_TASKS_PER_CHILD tasks (with N = 1 nothing runs meanwhile). The corpus's
    # largest photos take ~4x the median on their own, hence the margin.
    gaps = [later - earlier for earlier, later in itertools.pairwise(times[warmup - 1 :])]
    typical = statistics.median(gaps)
    stalls = [
        {"after_result": warmup + index, "seconds": round(gap, 3)}
        for index, gap in enumerate(gaps)
        if gap > max(0.4, 8 * typical)
    ]
    return {
        "images": len(times),
        "rate": rate,
        "window_seconds": window,
        "startup_seconds": times[0] - started,
        "warmup_seconds": times[warmup - 1] - started,
        "publish_seconds": publish_seconds,
        "redelivered": len(clock.arrivals) - len(times),
        "median_gap_ms": round(1000 * typical, 2),
        "stalls": stalls,
        "stall_seconds": round(sum(stall["seconds"] - typical for stall in stalls), 3),
        "outcomes": outcomes,
        "task_ms_mean": 1000 * statistics.fmean(result.seconds for result in steady),
        "busy": sum(result.seconds for result in steady) / (processes * window),
        **_cpu_report(meter, images, window),
        "log": f"{log_path} (removed with the test bed unless --keep)",
    }


def _child_running(pid: int, command: str, timeout: float) -> int:
    """The child of `pid` whose command line has `command` (py-spy starts helpers of its own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child, parent in sorted(parent_pids().items()):
            if parent == pid and command in cmdline(child):
                return child
        time.sleep(0.01)
    raise TimeoutError(f"process {pid} started no {command} in {timeout}s")


# --- serial breakdown of one task -----------------------------------------------------------------


def breakdown(services: Services, setting: Setting, bucket: str, source_prefix: str, samples: int):
    """Per task, serially in this process, the steps of kompressor_worker.task._run, each timed in
    wall and in this process's CPU time: decode the task, S3 HEAD (the output is absent), GET,
    encode, PUT, encode the result; then the latency of one confirmed result publish to a quorum
    results queue (what the worker's parent waits for before it acks). The client is built as the
    worker builds it (kompressor_s3.s3_client)."""
    client = services.storage.client()
    job = new_job("bench-breakdown")
    spec = job_spec(bucket, source_prefix, f"out/{job.uid8}/", setting.output)
    assert spec.source.s3 is not None
    tasks = list(plan_tasks(job, spec, list_s3_sources(client, spec.source.s3)))[: samples + 2]
    steps = ("task_decode", "s3_head", "s3_get", "encode", "s3_put", "result_encode")
    wall: dict[str, list[float]] = {step: [] for step in steps}
    cpu: dict[str, list[float]] = {step: [] for step in steps}
    for index, task in enumerate(tasks):
        marks = [(time.perf_counter(), time.process_time())]

        def mark() -> None:
            marks.append((time.perf_counter(), time.process_time()))  # noqa: B023

        decoded = Task.decode(task.encode())
        mark()
        found = existing_output(client, decoded.dest_bucket, decoded.dest_key)
        mark()
        assert decoded.source.key is not None
        data, etag = read_source(client, bucket, decoded.source.key, decoded.limits.max_input_bytes)
        mark()
        compressed = compress(data, decoded.output, decoded.limits)
        mark()
        stored = output_metadata(decoded, etag, len(data), compressed.stored_original)
        write_output(
            client, decoded, compressed.data, CONTENT_TYPES[compressed.format], stored, replaces=found
        )
        mark()
        Result(job=job, id=task.id, outcome="done", source=task.source.describe()).encode()
        mark()
        if index < 2:
            continue  # the first requests open connections
        for step, (before, after) in zip(steps, itertools.pairwise(marks), strict=True):
            wall[step].append(after[0] - before[0])
            cpu[step].append(after[1] - before[1])

    connection = broker_adapter.connect(services.broker.url)
    publish: list[float] = []
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        broker_adapter.declare_job_queues(channel, job, spec.limits)
        payload = Result(job=job, id=0, outcome="done", source="s3://x/y").encode()
        for _ in range(105):
            begin = time.perf_counter()
            channel.basic_publish("", result_queue(job), payload, broker_adapter.PERSISTENT, mandatory=True)
            publish.append(time.perf_counter() - begin)
        broker_adapter.delete_job_queues(channel, job)
    finally:
        connection.close()
    publish = sorted(publish[5:])

    def ms(values: list[float]) -> float:
        return round(1000 * statistics.fmean(values), 2)

    wall_ms = {step: ms(values) for step, values in wall.items()}
    cpu_ms = {step: ms(values) for step, values in cpu.items()}
    s3 = ("s3_head", "s3_get", "s3_put")
    task_wall = sum(wall_ms.values())
    return {
        "setting": setting.name,
        "samples": len(wall["encode"]),
        "wall_ms": wall_ms,
        "cpu_ms": cpu_ms,
        "s3_wall_ms": round(sum(wall_ms[step] for step in s3), 2),
        "s3_client_cpu_ms": round(sum(cpu_ms[step] for step in s3), 2),
        "non_encode_share_of_task_wall": round(1 - wall_ms["encode"] / task_wall, 3),
        "result_publish_confirmed_ms": {
            "mean": ms(publish),
            "p50": round(1000 * publish[len(publish) // 2], 2),
            "p90": round(1000 * publish[int(0.9 * len(publish))], 2),
        },
    }


# --- report ---------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


BARE_GROUPS = ("bare pool", "bench forkserver")
WORKER_GROUPS = ("worker parent", "worker forkserver", "worker pool")
SERVICE_GROUPS = ("rabbitmq", "s3")


def _group_ms(cpu: dict[str, float], groups: tuple[str, ...]) -> float:
    return sum(cpu.get(group, 0.0) for group in groups)


def other_cores(run: dict[str, Any]) -> float:
    """Cores used by processes outside this bench during the run's two windows (the larger)."""
    return max(run[kind]["cpu_cores_used"].get("other", 0.0) for kind in ("bare", "worker"))


def summarise(runs: list[dict[str, Any]], settings: list[Setting], process_counts: list[int], quiet: float):
    """Median and range per (setting, N), over the runs during which other processes used fewer
    than `quiet` cores when there are any, else over all runs (`clean_runs` says which)."""
    summary: dict[str, Any] = {}
    for setting in settings:
        per_n: dict[str, Any] = {}
        for n in process_counts:
            mine = [run for run in runs if run["setting"] == setting.name and run["processes"] == n]
            if not mine:
                continue
            clean = [run for run in mine if other_cores(run) < quiet]
            use = clean or mine
            per_n[str(n)] = {
                "runs": len(mine),
                "clean_runs": len(clean),
                "bare_rate": spread([run["bare"]["rate"] for run in use]),
                "worker_rate": spread([run["worker"]["rate"] for run in use]),
                "ratio": spread([run["ratio"] for run in use]),
                "bare_startup_seconds": spread([run["bare"]["startup_seconds"] for run in use]),
                "worker_startup_seconds": spread([run["worker"]["startup_seconds"] for run in use]),
                "bare_encode_ms": spread([run["bare"]["encode_ms_mean"] for run in use]),
                "worker_task_ms": spread([run["worker"]["task_ms_mean"] for run in use]),
                "worker_busy": spread([run["worker"]["busy"] for run in use]),
                "worker_stall_seconds": spread([run["worker"]["stall_seconds"] for run in use]),
                "bare_cpu_ms_per_image": spread(
                    [_group_ms(run["bare"]["cpu_ms_per_image"], BARE_GROUPS) for run in use]
                ),
                "worker_cpu_ms_per_image": spread(
                    [_group_ms(run["worker"]["cpu_ms_per_image"], WORKER_GROUPS) for run in use]
                ),
                "services_cpu_ms_per_image": spread(
                    [_group_ms(run["worker"]["cpu_ms_per_image"], SERVICE_GROUPS) for run in use]
                ),
                "bare_cpu_wait_ms_per_image": spread(
                    [_group_ms(run["bare"].get("cpu_wait_ms_per_image", {}), BARE_GROUPS) for run in use]
                ),
                "worker_cpu_wait_ms_per_image": spread(
                    [_group_ms(run["worker"].get("cpu_wait_ms_per_image", {}), WORKER_GROUPS) for run in use]
                ),
                "worker_parent_cpu_ms_per_image": spread(
                    [run["worker"]["cpu_ms_per_image"].get("worker parent", 0.0) for run in use]
                ),
                # The worker's own CPU besides the encode: all of its processes less the bare pool's.
                "overhead_cpu_ms_per_image": spread(
                    [
                        _group_ms(run["worker"]["cpu_ms_per_image"], WORKER_GROUPS)
                        - _group_ms(run["bare"]["cpu_ms_per_image"], BARE_GROUPS)
                        for run in use
                    ]
                ),
                "other_cores": spread([other_cores(run) for run in use]),
            }
        scaling = {}
        if "1" in per_n and "2" in per_n:
            for kind in ("bare_rate", "worker_rate"):
                scaling[kind.removesuffix("_rate")] = per_n["2"][kind]["median"] / per_n["1"][kind]["median"]
        summary[setting.name] = {"per_processes": per_n, "scaling_2_over_1": scaling}
    return summary


def print_report(report: dict[str, Any]) -> None:
    for variant, summary in report["summaries"].items():
        print_summary(report, summary, variant)
    print_breakdown(report)


def print_summary(report: dict[str, Any], summary: dict[str, Any], variant: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=max(170, shutil.get_terminal_size().columns))

    def fmt(s: dict[str, float], digits: int = 1) -> str:
        if s["n"] == 1:
            return f"{s['median']:.{digits}f}"
        return escape(f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]")

    m = report["machine"]
    title = (
        f"kompressor-worker ({variant}) vs the bare encoder — {describe_machine(m)}; median [min–max]; "
        f"target ratio ≥ {TARGET_RATIO}"
    )
    table = Table(title=escape(title))
    headers = [
        "setting", "N", "runs (clean)", "bare img/s", "worker img/s", "ratio", "start-up bare s",
        "start-up worker s", "encode ms", "task ms", "pool busy", "stalls s", "other cores",
    ]  # fmt: skip
    for header in headers:
        table.add_column(header, justify="left" if header == "setting" else "right")
    for name, entry in summary.items():
        for n, s in entry["per_processes"].items():
            mark = "" if s["ratio"]["median"] >= TARGET_RATIO else " ✗"
            table.add_row(
                name, n, f"{s['runs']} ({s['clean_runs']})", fmt(s["bare_rate"]), fmt(s["worker_rate"]),
                fmt(s["ratio"], 3) + mark, fmt(s["bare_startup_seconds"], 2),
                fmt(s["worker_startup_seconds"], 2), fmt(s["bare_encode_ms"]), fmt(s["worker_task_ms"]),
                fmt(s["worker_busy"], 2), fmt(s["worker_stall_seconds"], 2), fmt(s["other_cores"], 2),
            )  # fmt: skip
        if entry["scaling_2_over_1"]:
            sc = entry["scaling_2_over_1"]
            table.add_row(name, "2/1", "", f"×{sc['bare']:.2f}", f"×{sc['worker']:.2f}", *[""] * 8)
    console.print(table)

    cpu = Table(title=f"CPU ms per image in the steady window (from /proc), {variant}")
    for header in (
        "setting", "N", "bare pool", "worker (parent+pool)", "worker parent", "worker − bare",
        "rabbitmq + s3", "bare / worker", "bare / (worker + services)", "bare waited for CPU",
        "worker waited for CPU",
    ):  # fmt: skip
        cpu.add_column(header, justify="left" if header == "setting" else "right")
    for name, entry in summary.items():
        for n, s in entry["per_processes"].items():
            bare, worker = s["bare_cpu_ms_per_image"]["median"], s["worker_cpu_ms_per_image"]["median"]
            services = s["services_cpu_ms_per_image"]["median"]
            cpu.add_row(
                name, n, fmt(s["bare_cpu_ms_per_image"]), fmt(s["worker_cpu_ms_per_image"]),
                fmt(s["worker_parent_cpu_ms_per_image"]), fmt(s["overhead_cpu_ms_per_image"]),
                fmt(s["services_cpu_ms_per_image"]), f"{bare / worker:.3f}" if worker else "",
                f"{bare / (worker + services):.3f}" if worker else "",
                fmt(s["bare_cpu_wait_ms_per_image"]), fmt(s["worker_cpu_wait_ms_per_image"]),
            )  # fmt: skip
    console.print(cpu)


def print_breakdown(report: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(width=max(170, shutil.get_terminal_size().columns))
    for item in report.get("breakdown", []):
        steps = ", ".join(
            f"{step} {item['wall_ms'][step]} / {item['cpu_ms'][step]}" for step in item["wall_ms"]
        )
        console.print(
            f"serial breakdown of one task, {item['setting']} ({item['samples']} tasks), ms wall / ms CPU: "
            f"{steps}. S3 total {item['s3_wall_ms']} ms wall, {item['s3_client_cpu_ms']} ms client CPU; "
            f"not encoding {100 * item['non_encode_share_of_task_wall']:.0f}% of the task's wall time; "
            f"confirmed result publish ms {item['result_publish_confirmed_ms']}",
            highlight=False,
            markup=False,
        )


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--formats", default="webp,jpeg", help="comma-separated output formats (webp,jpeg)")
    parser.add_argument(
        "--images", type=int, default=None, help="images per setting (default webp 200, jpeg 600)"
    )
    parser.add_argument("--processes", default="1,2", help="comma-separated pool sizes")
    parser.add_argument("--repeat", type=int, default=1, help="measure every (setting, N) this many times")
    parser.add_argument("--warmup-per-process", type=int, default=3, help="warm-up completions per process")
    parser.add_argument("--breakdown-samples", type=int, default=48, help="tasks timed serially (0 = skip)")
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="KEY=VALUE", help="extra worker environment"
    )
    parser.add_argument("--py-spy", type=Path, default=None, help="record the worker runs with py-spy here")
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.15,
        help="before each measurement, wait until other processes use fewer cores than this",
    )
    parser.add_argument(
        "--quiet-patience", type=float, default=30, help="longest wait for a quiet machine (s)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="also run the worker from this source tree (e.g. `git archive` of an older commit), "
        "interleaved with the installed one, against the same bare runs",
    )
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--run-dir", type=Path, default=None, help="test bed directory (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the test bed directory (logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    photos = real_photos()
    if not photos:
        print("no corpus: apt-get install opencv-doc", file=sys.stderr)
        return 2
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    process_counts = [int(n) for n in args.processes.split(",")]
    settings = settings_for(formats, args.images)
    extra_env = dict(item.split("=", 1) for item in args.worker_env)

    services = start(args.run_dir)
    log_dir = (services.run_dir or Path(tempfile.mkdtemp(prefix="kompressor-bench-"))) / "workers"
    print(
        f"services ({services.source}) {services.startup_seconds}; worker logs in {log_dir}", file=sys.stderr
    )
    report: dict[str, Any] = {
        "benchmark": "worker",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "services": {"source": services.source, "startup_seconds": services.startup_seconds},
        "corpus": describe_corpus(photos),
        "method": {
            "warmup_completions": {str(n): args.warmup_per_process * n for n in process_counts},
            "rate": "completions after the warm-up / seconds from the last warm-up completion to the last",
            "startup": "pool creation (bare) or Popen (worker) to the first completion",
            "clean_run": f"other processes used < {args.quiet_cores} cores in both windows",
            "worker_env": extra_env,
        },
        "repeat": args.repeat,
        "settings": [],
        "runs": [],
    }
    try:
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        services.storage.client().create_bucket(Bucket=bucket)
        prepared = []
        for index, setting in enumerate(settings):
            prefix = f"in{index}/"
            keys = corpus_keys(photos, setting.images)
            seconds = upload(services.storage, bucket, prefix, keys, photos)
            spec = job_spec(bucket, prefix, "unused/", setting.output)
            names = [name for _key, name in keys]
            prepared.append((setting, prefix, spec, names))
            report["settings"].append(
                {"name": setting.name, "output": setting.output, "images": len(keys),
                 "repetitions_of_corpus": len(keys) // len(photos), "upload_seconds": round(seconds, 2)}
            )  # fmt: skip
            print(f"{setting.name}: {len(keys)} images uploaded in {seconds:.1f}s", file=sys.stderr)

        variants: list[tuple[str, Path | None]] = [("current", None)]
        if args.baseline is not None:
            variants.append(("baseline", args.baseline.resolve()))
        for repeat in range(args.repeat):
            for setting, prefix, spec, names in prepared:
                for n in process_counts:
                    warmup = args.warmup_per_process * n
                    background = wait_for_quiet(args.quiet_cores, args.quiet_patience)
                    bare = run_bare(services, spec, photos, names, n, warmup)
                    # Alternate which variant follows the bare run, so neither always gets that slot.
                    for variant, source in variants if repeat % 2 == 0 else variants[::-1]:
                        worker = run_worker(
                            services, setting, bucket, prefix, n, warmup, log_dir, extra_env, args.py_spy,
                            source,
                        )  # fmt: skip
                        ratio = worker["rate"] / bare["rate"]
                        report["runs"].append(
                            {"repeat": repeat, "variant": variant, "setting": setting.name, "processes": n,
                             "warmup": warmup, "background_cores_before": round(background, 3), "bare": bare,
                             "worker": worker, "ratio": ratio}
                        )  # fmt: skip
                        print(
                            f"[{repeat + 1}/{args.repeat}] {setting.name} N={n} {variant}: "
                            f"bare {bare['rate']:.1f}/s, worker {worker['rate']:.1f}/s, ratio {ratio:.3f} "
                            f"(start-up bare {bare['startup_seconds']:.2f}s, "
                            f"worker {worker['startup_seconds']:.2f}s; "
                            f"other processes {bare['cpu_cores_used'].get('other', 0):.2f} / "
                            f"{worker['cpu_cores_used'].get('other', 0):.2f} cores)",
                            file=sys.stderr,
                        )
        report["summaries"] = {
            variant: summarise(
                [run for run in report["runs"] if run["variant"] == variant],
                settings,
                process_counts,
                args.quiet_cores,
            )
            for variant, _source in variants
        }
        report["summary"] = report["summaries"]["current"]
        if args.breakdown_samples:
            report["breakdown"] = [
                breakdown(services, setting, bucket, prefix, args.breakdown_samples)
                for setting, prefix, _spec, _names in prepared
            ]
    finally:
        services.stop(keep=args.keep)

    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
