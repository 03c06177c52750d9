"""Encoder memory on evidence: the peak RSS each output format's encoder adds, per pixel and fixed.

Each measurement runs in a fresh Python process: it builds a synthetic image (flat: one colour;
noisy: random bytes, the worst case for every encoder's buffers), then allocates and frees 32 MiB
(glibc's largest dynamic mmap threshold, where a worker child that ran an earlier task is: buffers
below it then grow on the heap, by copying), returns free memory to the kernel (`malloc_trim`),
resets the kernel's peak (`/proc/self/clear_refs`), runs `kompressor_worker.codec.encode` once and
reads the peak (`VmHWM`) against the resident size just before (`VmRSS`). Variants: RGB and RGBA
(JPEG: RGB, as `prepare` flattens alpha), quality 50 and 100 (PNG: lossless, one), at each size.

Per format, the table is an upper envelope of every variant: bytes per pixel = the steepest
least-squares slope of a variant over the sizes, constant = the largest residue of any measurement
above that slope; both rounded up. `kompressor_worker/memory.py` holds the result.

    python bench/encoder_memory.py                     # 250² to 3000²: ~10 minutes on 2 busy cores
    python bench/encoder_memory.py --sides 1000,2000,4000 --formats avif

Prints the measurements and the table, and writes bench/results/encoder_memory.json.

`--measure SPEC` is the child: SPEC is JSON with format, content, mode, side and quality, and with
`"stage": "compress"` it measures `codec.compress` of a PNG of that image instead (an input as the
worker gets it; `target_ssim` optional), the check tests/unit/test_memory.py runs.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import io
import json
import math
import random
import subprocess
import sys
from typing import Any

from common import describe_machine, machine, table, write_json
from PIL import Image

from kompressor.crd import Format, Limits, Output
from kompressor_worker import codec

MIB = 2**20
FORMATS = ("jpeg", "png", "webp", "avif")
# A freed buffer of this size raises glibc's mmap threshold to its maximum (64-bit default).
MMAP_THRESHOLD_MAX = 32 * MIB


def variants(fmt: str) -> list[dict[str, Any]]:
    modes = ("RGB",) if fmt == "jpeg" else ("RGB", "RGBA")
    qualities = (100,) if fmt == "png" else (50, 100)
    return [
        {"format": fmt, "content": content, "mode": mode, "quality": quality}
        for content in ("flat", "noisy")
        for mode in modes
        for quality in qualities
    ]


# --- the child ------------------------------------------------------------------------------------


def synthetic(content: str, mode: str, side: int) -> Image.Image:
    if content == "flat":
        return Image.new(mode, (side, side), (200, 120, 40, 255)[: len(mode)])
    return Image.frombytes(mode, (side, side), random.Random(1).randbytes(side * side * len(mode)))


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} is not in /proc/self/status")


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS above the resident size before one encode (or compress) of `spec`'s image."""
    image = synthetic(spec["content"], spec["mode"], spec["side"])
    fmt = Format(spec["format"])
    if spec.get("stage") == "compress":
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=1)  # an input as the worker gets it, made quickly
        data = buffer.getvalue()
        del image, buffer
        target = spec.get("target_ssim")
        output = Output(format=fmt, quality=None if target else spec["quality"], targetSSIM=target)

        def run() -> bytes:
            return codec.compress(data, output, Limits()).data
    else:

        def run() -> bytes:
            return codec.encode(image, fmt, spec["quality"], None)

    codec.jpeg_measures_exactly()  # its one-time check is not the encode's
    bytearray(MMAP_THRESHOLD_MAX - 4096)  # allocated and freed at once: see the module docstring
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak starts again from the resident size
    before = _status("VmRSS")
    encoded = run()
    return {**spec, "peak_bytes": _status("VmHWM") - before, "output_bytes": len(encoded)}


def measure_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    """`measure(spec)` in a fresh interpreter (its peak is its own)."""
    done = subprocess.run(
        [sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"measuring {spec} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


# --- the table ------------------------------------------------------------------------------------


def fit(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares slope and intercept of (pixels, bytes)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0
    return slope, mean_y - slope * mean_x


def envelope(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes per pixel and constant of one format that lie above every measurement of it."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for row in rows:
        key = (row["content"], row["mode"], row["quality"])
        groups.setdefault(key, []).append((row["side"] ** 2, row["peak_bytes"]))
    slopes = {key: fit(points)[0] for key, points in groups.items()}
    worst = max(slopes, key=lambda key: slopes[key])
    per_pixel = _half_up(max(slopes.values()))
    constant = max(0, max(row["peak_bytes"] - per_pixel * row["side"] ** 2 for row in rows))
    return {
        "bytes_per_pixel": per_pixel,
        "constant_bytes": math.ceil(constant / MIB) * MIB,
        "output_bytes_per_pixel": _half_up(max(row["output_bytes"] / row["side"] ** 2 for row in rows)),
        "steepest": " ".join(str(part) for part in worst),
    }


def _half_up(value: float) -> float:
    return math.ceil(value * 2) / 2


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sides", default="250,1000,2000,3000", help="square image sides to measure")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return

    info = machine()
    print(describe_machine(info))
    sides = [int(side) for side in args.sides.split(",")]
    rows: list[dict[str, Any]] = []
    for fmt in args.formats.split(","):
        for variant in variants(fmt):
            for side in sides:
                row = measure_in_child({**variant, "side": side})
                rows.append(row)
                label = " ".join(f"{row[key]}" for key in ("format", "content", "mode", "quality", "side"))
                peak, output = row["peak_bytes"], row["output_bytes"]
                print(
                    f"{label:25} {peak / MIB:8.1f} MiB, {peak / side**2:5.2f} B/px,",
                    f"output {output / side**2:4.2f} B/px",
                    flush=True,
                )
    formats = sorted({row["format"] for row in rows}, key=FORMATS.index)
    result = {fmt: envelope([row for row in rows if row["format"] == fmt]) for fmt in formats}
    print()
    print(
        table(
            ["format", "bytes per pixel", "constant MiB", "output bytes per pixel", "steepest variant"],
            [
                [
                    fmt,
                    r["bytes_per_pixel"],
                    r["constant_bytes"] // MIB,
                    r["output_bytes_per_pixel"],
                    r["steepest"],
                ]
                for fmt, r in result.items()
            ],
        )
    )
    path = write_json("encoder_memory.json", {"machine": info, "table": result, "measurements": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
