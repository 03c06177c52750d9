"""The pipeline end to end against the bare encoder, on the same corpus and cores, in one run.

For each N in --processes (1 and 2):

  bare:     `kompressor_worker.codec.compress` with the job's settings on the in-memory photos, in a
            pool of N processes: no queue, no storage (bench/common.py: bare_encodes);
  pipeline: `kompressor run` in this process (local mode: S3 listing, fan-out to RabbitMQ, one
            worker of N processes fetching from and writing to S3, results into the ledger, status)
            on the same photos uploaded to S3, the job's workers pinned to one worker of N.

Two figures per run. Steady throughput: images/s while the pipeline is full, fitted (least squares)
to the done count against time between 10 % and 90 % of the job, sampled every status update (1 s),
against the bare pool's rate over the same share of its images. End to end: the job's whole wall
time (start-up, fan-out, the last results, writing the manifest) against the bare pool's, start-up
included. Targets: pipeline >= 0.95x bare at each N (steady), and 2 processes >= 1.9x 1 process.

Also: CPU seconds per image of the test bed's RabbitMQ and SeaweedFS and of everything else (the
worker and the engine) read from /proc, so what the services cost on these shared cores is visible.

    python bench/pipeline.py                    # webp q80, N = 1 and 2, ~3 minutes
    python bench/pipeline.py --format jpeg --images 960 --repeat 2

Prints a table, writes bench/results/pipeline.json and bench/results/pipeline.png.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    Series,
    bare_encodes,
    describe_machine,
    line_plot,
    load_average,
    machine,
    table,
    write_json,
)
from proc import Meter
from services import Services, running

from kompressor.crd import parse_spec
from kompressor_operator.local import JobFile, run_job
from tests.corpus import OPENCV_DATA, real_photos

TARGET_RATIO = 0.95
TARGET_SCALING = 1.9
BUCKET = "bench-pipeline"


def spec_for(fmt: str, quality: int, prefix: str, processes: int):
    return parse_spec(
        {
            "source": {"s3": {"bucket": BUCKET, "prefix": prefix, "include": ["*"]}},
            "destination": {"s3": {"bucket": BUCKET, "prefix": f"out/{uuid.uuid4().hex[:8]}/"}},
            "output": {"format": fmt, "quality": quality, "resize": {"maxWidth": 1600, "maxHeight": 1600}},
            "workers": {"minReplicas": 1, "maxReplicas": 1, "processesPerPod": processes},
        }
    )


def steady_rate(points: list[tuple[float, float]], total: int) -> float:
    """Images/s fitted to (seconds, done) between 10 % and 90 % of `total` (least squares)."""
    window = [(t, done) for t, done in points if 0.1 * total <= done <= 0.9 * total]
    if len(window) < 3:
        raise RuntimeError(f"only {len(window)} samples in the steady window: use more --images")
    mean_t = statistics.fmean(t for t, _ in window)
    mean_d = statistics.fmean(d for _, d in window)
    covariance = sum((t - mean_t) * (d - mean_d) for t, d in window)
    return covariance / sum((t - mean_t) ** 2 for t, _ in window)


def run_bare(photos: dict[str, bytes], names: list[str], spec, processes: int, found: Services):
    meter = Meter(found.pids)
    points: list[tuple[float, float]] = []
    with meter.measure():
        started = time.monotonic()
        for done, (when, _seconds) in enumerate(
            bare_encodes(photos, names, spec.output, spec.limits, processes), 1
        ):
            points.append((when - started, done))
    return {
        "wall_seconds": round(meter.wall, 2),
        "steady_rate": steady_rate(points, len(names)),
        "cpu_ms_per_image": {k: round(1000 * v / len(names), 2) for k, v in meter.cpu.items()},
        "points": points,
    }


def run_pipeline(found: Services, spec, total: int, log_dir: Path):
    meter = Meter(found.pids)
    points: list[tuple[float, float]] = []
    started = time.monotonic()

    def on_update(status) -> None:
        points.append((time.monotonic() - started, status.succeeded + status.skipped))

    with meter.measure():
        run = run_job(
            JobFile(name=f"bench-{uuid.uuid4().hex[:6]}", spec=spec),
            found.operator_settings(),
            on_update=on_update,
            log_dir=log_dir,
        )
    status = run.status
    if (status.succeeded, status.failed) != (total, 0):
        raise RuntimeError(
            f"the job ended {status.phase}: {status.succeeded}/{total} done, {status.failed} failed"
        )
    return {
        "wall_seconds": round(meter.wall, 2),
        "steady_rate": steady_rate(points, total),
        "first_done_seconds": next((t for t, done in points if done > 0), None),
        "cpu_ms_per_image": {k: round(1000 * v / total, 2) for k, v in meter.cpu.items()},
        "bytes_in": status.bytes_in,
        "bytes_out": status.bytes_out,
        "points": points,
    }


def upload(found: Services, photos: dict[str, bytes], prefix: str, images: int) -> list[str]:
    """`images` inputs (the corpus repeated) under `prefix`; returns the photo name of each."""
    import concurrent.futures

    reps = math.ceil(images / len(photos))
    items = [(f"{prefix}r{rep:03d}/{name}", name) for rep in range(reps) for name in photos][:images]
    client = found.s3_client(pool=16)
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    with concurrent.futures.ThreadPoolExecutor(16) as executor:
        list(
            executor.map(
                lambda item: client.put_object(Bucket=BUCKET, Key=item[0], Body=photos[item[1]]), items
            )
        )
    return [name for _key, name in items]


def plot(path: Path, runs: dict[int, dict[str, Any]], title: str) -> None:
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    series = []
    for index, (processes, run) in enumerate(sorted(runs.items())):
        series.append(
            Series(f"pipeline N={processes}", run["pipeline"]["points"], colours[2 * index % 4], step=True)
        )
        series.append(
            Series(
                f"bare N={processes}",
                run["bare"]["points"][:: max(1, len(run["bare"]["points"]) // 200)],
                colours[(2 * index + 1) % 4],
            )
        )
    line_plot(path, title, series, x_label="seconds", left_label="images done")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--format", default="webp", choices=["webp", "jpeg", "avif"])
    parser.add_argument("--quality", type=int, default=80)
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--processes", default="1,2", help="pool sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="runs per N, interleaved; the median is shown")
    parser.add_argument("--keep", action="store_true", help="keep the test bed's run directory")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.processes.split(",")]
    photos = real_photos()
    info = machine()
    report: dict[str, Any] = {
        "machine": info,
        "load_average_before": load_average(),
        "corpus": f"{args.images} inputs: the {len(photos)} photographs of tests.corpus.real_photos() "
        f"({OPENCV_DATA}, {sum(map(len, photos.values())):,} bytes) repeated",
        "setting": f"{args.format} q{args.quality} fit 1600x1600",
        "runs": {},
    }
    with running(keep=args.keep) as found:
        report["services"] = {"source": found.source, "startup_seconds": found.startup_seconds}
        prefix = f"in/{uuid.uuid4().hex[:8]}/"
        names = upload(found, photos, prefix, args.images)
        log_dir = Path(tempfile.mkdtemp(prefix="kompressor-bench-pipeline-"))
        repeats: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
        for attempt in range(args.repeat):
            for processes in counts:
                spec = spec_for(args.format, args.quality, prefix, processes)
                bare = run_bare(photos, names, spec, processes, found)
                pipeline = run_pipeline(found, spec, len(names), log_dir / f"p{processes}-{attempt}")
                ratio = pipeline["steady_rate"] / bare["steady_rate"]
                repeats[processes].append(
                    {
                        "bare": bare,
                        "pipeline": pipeline,
                        "ratio_steady": round(ratio, 3),
                        "ratio_end_to_end": round(bare["wall_seconds"] / pipeline["wall_seconds"], 3),
                    }
                )
                print(
                    f"N={processes}: bare {bare['steady_rate']:.1f}/s, pipeline "
                    f"{pipeline['steady_rate']:.1f}/s ({ratio:.3f}x)",
                    flush=True,
                )
        for processes, runs in repeats.items():
            median = sorted(runs, key=lambda run: run["ratio_steady"])[(len(runs) - 1) // 2]
            median["all_ratios_steady"] = [run["ratio_steady"] for run in runs]
            median["target_met"] = median["ratio_steady"] >= TARGET_RATIO
            report["runs"][processes] = median

    rows = []
    for processes, run in report["runs"].items():
        bare, pipeline = run["bare"], run["pipeline"]
        ratio = run["ratio_steady"]
        runs_shown = ", ".join(map(str, run["all_ratios_steady"]))
        services_ms = sum(v for k, v in pipeline["cpu_ms_per_image"].items() if k in found.pids)
        rows.append(
            [
                processes,
                bare["steady_rate"],
                pipeline["steady_rate"],
                f"{ratio:.3f} {'✓' if run['target_met'] else '✗'} (runs: {runs_shown})",
                bare["wall_seconds"],
                pipeline["wall_seconds"],
                run["ratio_end_to_end"],
                pipeline["first_done_seconds"],
                services_ms,
                pipeline["cpu_ms_per_image"].get("bench", 0) + pipeline["cpu_ms_per_image"].get("other", 0),
                bare["cpu_ms_per_image"].get("other", 0),
            ]
        )
    if 1 in report["runs"] and 2 in report["runs"]:
        one, two = report["runs"][1], report["runs"][2]
        report["scaling_2_over_1"] = {
            kind: round(two[kind]["steady_rate"] / one[kind]["steady_rate"], 3)
            for kind in ("bare", "pipeline")
        }
    print(f"\nThe pipeline against the bare encoder: {report['setting']}, {report['corpus']}")
    print(f"Machine: {describe_machine(info)}; services: {found.source}\n")
    print(
        table(
            [
                "N",
                "bare img/s",
                "pipeline img/s",
                "steady ratio, median (≥ 0.95)",
                "bare s",
                "pipeline s",
                "end-to-end ratio",
                "first result s",
                "rabbitmq+s3 CPU ms/img",
                "worker+engine CPU ms/img",
                "bare CPU ms/img",
            ],
            rows,
        )
    )
    if "scaling_2_over_1" in report:
        scaling = report["scaling_2_over_1"]
        print(f"\n2 processes / 1: bare ×{scaling['bare']}, pipeline ×{scaling['pipeline']} (target ≥ 1.9)")
    plot(RESULTS / "pipeline.png", report["runs"], f"images done over time - {report['setting']}")
    for run in report["runs"].values():
        for kind in ("bare", "pipeline"):
            run[kind]["points"] = [(round(t, 3), d) for t, d in run[kind]["points"]]
    path = write_json("pipeline.json", report)
    print(f"\nwrote {path} and {RESULTS / 'pipeline.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
