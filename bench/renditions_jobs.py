"""Renditions against separate one-output jobs, end to end: `kompressor run` of one job with
`spec.renditions` against 9 runs of one-output jobs (`spec.output`), CPU and wall time per source.

The inputs are bench/renditions.py's: the 24 photos of `tests.corpus.real_photos()` (493..1282 px
wide), uploaded once to the test bed's SeaweedFS (bench/services.py), and the same 9 outputs (widths
480, 320, 160 × AVIF, WebP, JPEG; nothing is skipped, neverLarger off so every output is made) at
quality 80, or with `--target-ssim 0.985` (automatic quality, as the issue's `hero` set):

- renditions: one job, `renditions: [{widths: [480, 320, 160], formats: [avif, webp, jpeg], ...}]`;
- separate: 9 jobs, one per (width, format), `output: {format, resize: {maxWidth}, ...}`, run one
  after the other.

Every job is a real local-mode run (`kompressor run JOB.yaml`: the engine lists, plans, fans out,
starts its own worker processes against RabbitMQ, accounts and writes the manifest), with the same
workers (`maxReplicas: 1`, `processesPerPod: --processes`). A round runs both ways, the order
alternating from round to round; `--rounds` rounds; medians. With `--baseline DIR` (a source tree,
e.g. `git archive` of an older commit, as tiny.py) the renditions job also runs from that tree each
round, the three ways taking turns at going first, and the outputs are compared byte for byte.
CPU is the whole run's process tree (engine, workers, their forkservers and pool children:
`proc.reaped`, exact, from RUSAGE_CHILDREN of a child subreaper), wall from the command's start to
its exit; RabbitMQ's and SeaweedFS's CPU over each way is given apart (they serve 9 listings, 9
GETs per source, ... to the separate jobs).

Per output (width, format): bytes from the manifests, summed over the photos, and the luma SSIM of
both ways' stored objects against one reference (the source decoded at full size and resized
straight to the output's size: `renditions.reference`), from the first round; with targetSSIM also
the mean quality chosen and the SSIM each manifest reports (measured by the search against its own
prepared image).

    python bench/renditions_jobs.py                       # ~10 minutes on a shared 2-core machine
    python bench/renditions_jobs.py --target-ssim 0.985
    python bench/renditions_jobs.py --rounds 1 --photos 4
    python bench/renditions_jobs.py --copies 4            # 96 sources: the per-job start-up weighs less

Prints two tables and writes bench/results/renditions-jobs.json (-ssim with --target-ssim, -xN with
--copies N).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from common import describe_machine, load_average, machine, table, write_json
from PIL import Image
from proc import Meter, reaped
from renditions import FORMATS, QUALITY, WIDTHS, reference, ssim_against
from services import running

from tests.corpus import real_photos

BUCKET = "renditions-jobs"
WAYS = ("separate", "renditions")
BASELINE = "renditions, baseline"


def job(name: str, prefix: str, spec: dict[str, Any], processes: int) -> dict[str, Any]:
    return {
        "apiVersion": "kompressor.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": name},
        "spec": {
            "source": {"s3": {"bucket": BUCKET, "prefix": "in/"}},
            "destination": {"s3": {"bucket": BUCKET, "prefix": prefix}},
            "workers": {"maxReplicas": 1, "processesPerPod": processes},
            **spec,
        },
    }


def jobs(way: str, round_: int, setting: dict[str, Any], formats: list[str], processes: int) -> list[dict]:
    """The jobs of one way in one round: one with renditions, or one per (width, format)."""
    if way in ("renditions", BASELINE):
        rendition = {"name": "r", "widths": list(WIDTHS), "formats": formats, "neverLarger": False, **setting}
        name = f"{way[0]}{round_}" if way == "renditions" else f"b{round_}"
        return [job(name, f"{name}/", {"renditions": [rendition]}, processes)]
    return [
        job(
            f"s{round_}-{width}-{fmt}",
            f"s{round_}/{width}-{fmt}/",
            {"output": {"format": fmt, "resize": {"maxWidth": width}, "neverLarger": False, **setting}},
            processes,
        )
        for width in WIDTHS
        for fmt in formats
    ]


def run(document: dict[str, Any], work: Path, env: dict[str, str]) -> dict[str, Any]:
    """`kompressor run` of one job under `proc.reaped`: its exit, wall, tree CPU and final status."""
    work.mkdir(parents=True)
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(document))
    command = [sys.executable, "-m", "kompressor_operator.cli", "run", str(path), "--json"]
    with (work / "status.json").open("w") as out:
        process = reaped(
            [*command, "--log-dir", str(work / "logs")], work / "rusage.json", env=env, stdout=out
        )
        process.wait()
    measured = json.loads((work / "rusage.json").read_text())
    status = json.loads((work / "status.json").read_text() or "{}")
    if measured["exit"] != 0 or status.get("phase") != "Succeeded" or status.get("failed"):
        sys.exit(f"{document['metadata']['name']} did not succeed: {measured} {status}; logs in {work}")
    return {**measured, "status": status, "spec": document["spec"]}


def manifest(client, url: str) -> list[dict[str, Any]]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def outputs(runs: list[dict[str, Any]], client) -> dict[tuple[int, str, str], dict[str, Any]]:
    """(width, format, photo) -> the stored output's key, bytes, quality and SSIM, from the manifests."""
    found = {}
    for done in runs:
        for line in manifest(client, done["status"]["manifest"]):
            photo = line["source"].split("/in/", 1)[1]  # copy/name.jpg
            if line.get("renditions") is not None:
                for r in line["renditions"]:
                    assert r["outcome"] == "done", r
                    found[(r["width"], r["format"], photo)] = {
                        "dest": r["dest"],
                        "bytes": r["bytesOut"],
                        "quality": r.get("quality"),
                        "ssim": r.get("ssim"),
                    }
            else:
                assert line["outcome"] == "done", line
                output = done["spec"]["output"]
                found[(output["resize"]["maxWidth"], output["format"], photo)] = {
                    "dest": line["dest"],
                    "bytes": line["bytesOut"],
                    "quality": line.get("quality"),
                    "ssim": line.get("ssim"),
                }
    return found


def common_ssim(client, photos: dict[str, bytes], made: dict[tuple[int, str, str], dict[str, Any]]) -> None:
    """Add to each output its luma SSIM against the shared reference (`renditions.reference`) and
    its SHA-256 (a baseline's outputs are compared byte for byte)."""
    references: dict[tuple[str, tuple[int, int]], Any] = {}
    for (_, _, photo), output in made.items():
        bucket, _, key = output["dest"].removeprefix("s3://").partition("/")
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
        name = photo.rsplit("/", 1)[1]  # the copies of a photo share their references
        if (name, size) not in references:
            references[(name, size)] = reference(photos[name], size)
        output["common_ssim"] = ssim_against(references[(name, size)], data)
        output["sha256"] = hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photos", type=int, default=None)
    parser.add_argument("--formats", default=",".join(f.value for f in FORMATS), help="e.g. webp,jpeg")
    parser.add_argument("--target-ssim", type=float, default=None, help="automatic quality instead of q80")
    parser.add_argument("--processes", type=int, default=2, help="the worker's processesPerPod")
    parser.add_argument(
        "--copies", type=int, default=1, help="each photo this many times (in/0/, in/1/, ...): more sources"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a source tree (e.g. git archive of an older commit): its renditions job runs too, each round",
    )
    parser.add_argument("--keep", action="store_true", help="keep the services' and runs' directories")
    args = parser.parse_args()
    photos = real_photos(limit=args.photos)
    if not photos:
        sys.exit("bench/renditions_jobs.py: opencv-doc's photos are not installed (scripts/setup.sh)")
    formats = args.formats.split(",")
    ways = [*WAYS, BASELINE] if args.baseline is not None else list(WAYS)
    setting = {"targetSSIM": args.target_ssim} if args.target_ssim is not None else {"quality": QUALITY}
    work = Path(tempfile.mkdtemp(prefix="kompressor-renditions-jobs-"))
    rounds: list[dict[str, Any]] = []
    made: dict[str, dict] = {}
    load_before = load_average()
    with running(keep=args.keep) as services:
        client = services.storage.client()
        client.create_bucket(Bucket=BUCKET)
        for copy in range(args.copies):
            for name, data in photos.items():
                client.put_object(Bucket=BUCKET, Key=f"in/{copy}/{name}", Body=data)
        env = {**os.environ, "KOMPRESSOR_BROKER__URL": services.broker_url, **services.storage.env()}
        envs = {way: env for way in ways}
        if args.baseline is not None:
            # Its packages first on the path, for the engine and the workers it starts (as tiny.py).
            tree = args.baseline.resolve()
            paths = [str(tree / "worker"), str(tree / "operator"), str(tree)]
            envs[BASELINE] = {**env, "PYTHONPATH": os.pathsep.join(paths)}
        for round_ in range(args.rounds):
            measured = {}
            # Each way first, second, ... in turn: the order moves by one each round.
            for way in ways[round_ % len(ways) :] + ways[: round_ % len(ways)]:
                meter = Meter(services.pids)
                with meter.measure():
                    runs = [
                        run(document, work / document["metadata"]["name"], envs[way])
                        for document in jobs(way, round_, setting, formats, args.processes)
                    ]
                measured[way] = {
                    "jobs": len(runs),
                    "cpu_seconds": sum(r["cpu_seconds"] for r in runs),
                    "wall_seconds": sum(r["wall_seconds"] for r in runs),
                    "services_cpu_seconds": sum(v for k, v in meter.cpu.items() if k in services.pids),
                    # Meter's "other" holds the runs' trees (not this process, not a service).
                    "other_cpu_seconds": max(0.0, meter.cpu["other"] - sum(r["cpu_seconds"] for r in runs)),
                }
                if round_ == 0:
                    made[way] = outputs(runs, client)
                print(f"round {round_ + 1}/{args.rounds} {way}: {measured[way]}", file=sys.stderr)
            rounds.append(measured)
        for way in ways:
            common_ssim(client, photos, made[way])
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    count = len(photos) * args.copies
    median = {
        way: {key: statistics.median(r[way][key] for r in rounds) for key in rounds[0][way]} for way in ways
    }
    rows = [
        [
            way,
            median[way]["jobs"],
            round(median[way]["cpu_seconds"] / count * 1000),
            round(median[way]["wall_seconds"], 1),
            round(median[way]["services_cpu_seconds"] / count * 1000),
            round(count / median[way]["cpu_seconds"], 2),
        ]
        for way in ways
    ]
    cpu_ratio = median["separate"]["cpu_seconds"] / median["renditions"]["cpu_seconds"]
    wall_ratio = median["separate"]["wall_seconds"] / median["renditions"]["wall_seconds"]
    paired = [r["separate"]["cpu_seconds"] / r["renditions"]["cpu_seconds"] for r in rounds]
    what = f"targetSSIM {args.target_ssim}" if args.target_ssim is not None else f"quality {QUALITY}"
    print(describe_machine(machine()))
    print(
        f"{count} sources ({len(photos)} photos x {args.copies}) x {len(WIDTHS) * len(formats)} outputs "
        f"({what}), {args.rounds} rounds interleaved, medians; load {load_before} before"
    )
    headers = [
        "way",
        "jobs",
        "CPU ms per source",
        "wall s",
        "services CPU ms per source",
        "sources per CPU s",
    ]
    print(table(headers, rows))
    print(
        f"throughput (CPU of the run's tree): renditions {cpu_ratio:.2f}x the separate jobs "
        f"(per round {', '.join(f'{p:.2f}' for p in paired)}); wall {wall_ratio:.2f}x"
    )
    output_rows = []
    for width in WIDTHS:
        for fmt in formats:
            of = {way: [o for (w, f, _), o in made[way].items() if (w, f) == (width, fmt)] for way in WAYS}
            bytes_ = {way: sum(o["bytes"] for o in of[way]) for way in WAYS}
            row = [
                f"{width}w {fmt}",
                bytes_["separate"],
                bytes_["renditions"],
                round(bytes_["renditions"] / bytes_["separate"], 3),
                # As text: the table prints floats with 2 decimals.
                *(f"{statistics.mean(o['common_ssim'] for o in of[way]):.4f}" for way in WAYS),
            ]
            if args.target_ssim is not None:
                row += [round(statistics.mean(o["quality"] for o in of[way]), 1) for way in WAYS]
                row += [f"{statistics.mean(o['ssim'] for o in of[way]):.4f}" for way in WAYS]
            output_rows.append(row)
    columns = ["output", "bytes separate", "bytes renditions", "ratio", "SSIM separate", "SSIM renditions"]
    if args.target_ssim is not None:
        columns += [
            "quality separate",
            "quality renditions",
            "search SSIM separate",
            "search SSIM renditions",
        ]
    print(table(columns, output_rows))
    same_as_baseline = None
    if args.baseline is not None:
        same_as_baseline = sum(
            made[BASELINE][key]["sha256"] == output["sha256"] for key, output in made["renditions"].items()
        )
        total = len(made["renditions"])
        print(f"renditions against the baseline's: {same_as_baseline} of {total} outputs the same bytes")
    path = write_json(
        f"renditions-jobs{'-ssim' if args.target_ssim is not None else ''}"
        f"{f'-x{args.copies}' if args.copies > 1 else ''}.json",
        {
            "machine": machine(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "photos": len(photos),
            "copies": args.copies,
            "sources": count,
            "rounds": rounds,
            "widths": WIDTHS,
            "formats": formats,
            "setting": setting,
            "processes_per_pod": args.processes,
            "median": median,
            "cpu_speedup": cpu_ratio,
            "cpu_speedup_per_round": paired,
            "wall_speedup": wall_ratio,
            "baseline": str(args.baseline) if args.baseline is not None else None,
            "outputs_same_as_baseline": same_as_baseline,
            "per_output": [dict(zip(columns, row, strict=True)) for row in output_rows],
            "outputs": {
                way: [
                    {"width": w, "format": f, "photo": p, **o} for (w, f, p), o in sorted(made[way].items())
                ]
                for way in ways
            },
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
