"""Renditions against separate one-output jobs: CPU and wall time per source, bytes and SSIM per output.

For every photo of `tests.corpus.real_photos()` (Debian opencv-doc, 24 JPEGs, 493..1282 px wide),
the same 9 outputs (widths 480, 320, 160 × AVIF, WebP, JPEG at quality 80; every photo is at least
493 px wide, so nothing is skipped) are made two ways in one process, interleaved photo by photo
(the order alternating each round) and repeated `--rounds` times:

- renditions: `kompressor_worker.renditions.make`, one decode and 9 encodes, as a worker runs a task
  of a job with `spec.renditions`;
- separate: 9 × `kompressor_worker.codec.compress`, as 9 one-output jobs' workers would, each
  decoding the source again.

CPU is process_time, wall perf_counter, the median over the rounds per photo, summed over the photos.
Only the codec is measured: 9 jobs also fetch each source 9 times, HEAD 9 keys, list the bucket and
write a manifest 9 times, which favours renditions further (renditions_jobs.py measures whole jobs).

Per output (width, format): bytes of renditions against separate, and the luma SSIM of both against
one reference, the source decoded at full size and resized straight to the output's size (Lanczos).

    python bench/renditions.py                  # ~3 minutes on a shared 2-core machine
    python bench/renditions.py --rounds 1 --photos 6
    python bench/renditions.py --formats webp,jpeg     # without AVIF, whose encodes dominate

Prints a table and writes bench/results/renditions.json.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_machine, load_average, machine, table, write_json
from PIL import Image

from kompressor.crd import Format, Limits, Output, Resize
from kompressor_worker import codec, renditions
from kompressor_worker import ssim as ssim_lib
from tests.corpus import real_photos

WIDTHS = (480, 320, 160)
FORMATS = (Format.avif, Format.webp, Format.jpeg)
QUALITY = 80
COLUMNS = ["output", "bytes separate", "bytes renditions", "ratio", "SSIM separate", "SSIM renditions"]


def outputs(formats: tuple[Format, ...] = FORMATS) -> list[Output]:
    # neverLarger off: every output is encoded and compared (a small photo's AVIF may not be smaller).
    return [
        Output(format=f, quality=QUALITY, resize=Resize(max_width=w), never_larger=False)
        for w in WIDTHS
        for f in formats
    ]


def _timed(function) -> tuple[float, float, object]:
    cpu, wall = time.process_time(), time.perf_counter()
    value = function()
    return time.process_time() - cpu, time.perf_counter() - wall, value


def reference(data: bytes, size: tuple[int, int]) -> Image.Image:
    """What every output of `size` is compared with: the source decoded at full size, resized once."""
    full = codec.prepare(data, Output(format=Format.png, never_larger=False), Limits())
    return full.image.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def ssim_against(reference: Image.Image, encoded: bytes) -> float:
    """Luma SSIM of an encoded output against its `reference`."""
    with Image.open(io.BytesIO(encoded)) as image:
        return ssim_lib.ssim(ssim_lib.luma(reference), ssim_lib.luma(image.convert("RGB")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photos", type=int, default=None)
    parser.add_argument("--formats", default=",".join(f.value for f in FORMATS), help="e.g. webp,jpeg")
    args = parser.parse_args()
    formats = tuple(Format(f) for f in args.formats.split(","))
    photos = real_photos(limit=args.photos)
    if not photos:
        sys.exit("bench/renditions.py: opencv-doc's photos are not installed (scripts/setup.sh)")
    wanted = outputs(formats)
    limits = Limits()
    timings: dict[str, dict[str, list[tuple[float, float]]]] = {
        n: {"renditions": [], "separate": []} for n in photos
    }
    per_output: dict[tuple[int, str], dict[str, list[float]]] = {}
    load_before = load_average()
    for round_ in range(args.rounds):
        for index, (name, data) in enumerate(photos.items()):
            ways = {
                "renditions": lambda data=data: renditions.make(data, wanted, limits),
                "separate": lambda data=data: [codec.compress(data, o, limits) for o in wanted],
            }
            order = list(ways) if (index + round_) % 2 == 0 else list(reversed(ways))
            made = {}
            for way in order:
                cpu, wall, made[way] = _timed(ways[way])
                timings[name][way].append((cpu, wall))
            if round_ == 0:
                for output, one, alone in zip(wanted, made["renditions"], made["separate"], strict=True):
                    assert one.compressed is not None, (name, output, one)
                    resized = reference(data, (alone.width, alone.height))
                    entry = per_output.setdefault(
                        (output.resize.max_width, output.format.value),
                        {
                            "bytes_renditions": [],
                            "bytes_separate": [],
                            "ssim_renditions": [],
                            "ssim_separate": [],
                        },
                    )
                    entry["bytes_renditions"].append(len(one.compressed.data))
                    entry["bytes_separate"].append(len(alone.data))
                    entry["ssim_renditions"].append(ssim_against(resized, one.compressed.data))
                    entry["ssim_separate"].append(ssim_against(resized, alone.data))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    def total(way: str, column: int) -> float:
        return sum(statistics.median(t[column] for t in timings[n][way]) for n in photos)

    cpu = {way: total(way, 0) for way in ("renditions", "separate")}
    wall = {way: total(way, 1) for way in ("renditions", "separate")}
    count = len(photos)
    rows = [
        [
            way,
            round(cpu[way] / count * 1000, 1),
            round(wall[way] / count * 1000, 1),
            round(count / wall[way], 2),
        ]
        for way in ("separate", "renditions")
    ]
    print(describe_machine(machine()))
    print(f"{count} photos x {len(wanted)} outputs, {args.rounds} rounds interleaved; load {load_before}")
    print(table(["way", "CPU ms per source", "wall ms per source", "sources per second"], rows))
    speedup = cpu["separate"] / cpu["renditions"]
    wall_speedup = wall["separate"] / wall["renditions"]
    print(f"throughput (CPU): renditions {speedup:.2f}x the separate jobs; wall {wall_speedup:.2f}x")
    output_rows = []
    for (width, fmt), entry in sorted(per_output.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        bytes_r, bytes_s = sum(entry["bytes_renditions"]), sum(entry["bytes_separate"])
        output_rows.append(
            [
                f"{width}w {fmt}",
                bytes_s,
                bytes_r,
                round(bytes_r / bytes_s, 3),
                round(statistics.mean(entry["ssim_separate"]), 4),
                round(statistics.mean(entry["ssim_renditions"]), 4),
            ]
        )
    print(table(COLUMNS, output_rows))
    path = write_json(
        "renditions.json" if formats == FORMATS else f"renditions-{'-'.join(f.value for f in formats)}.json",
        {
            "machine": machine(),
            "load_average_before": load_before,
            "photos": count,
            "rounds": args.rounds,
            "widths": WIDTHS,
            "formats": [f.value for f in formats],
            "quality": QUALITY,
            "cpu_seconds": cpu,
            "wall_seconds": wall,
            "cpu_speedup": speedup,
            "wall_speedup": wall_speedup,
            "per_output": [dict(zip(COLUMNS, row, strict=True)) for row in output_rows],
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
