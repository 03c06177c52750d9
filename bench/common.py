"""Shared helpers of the benchmarks (fanout.py, scaling.py, codec_defaults.py, quality.py, worker.py,
pipeline.py).

The machine a figure comes from, a plain-text table, the JSON file in bench/results/, the bare
encoder's pool, a py-spy profile of this process, and a line plot drawn with Pillow (matplotlib is
not a dependency). The services a benchmark runs against are bench/services.py's, its CPU
accounting bench/proc.py's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # testbed/ and tests/ are not installed packages

RESULTS = ROOT / "bench" / "results"


# --- the machine ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model and cores, memory, kernel, Python and the image libraries: where a figure comes from."""
    import PIL
    from PIL import features

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 2**20, 1)
    cpu_max = None
    with contextlib.suppress(OSError):
        cpu_max = Path("/sys/fs/cgroup/cpu.max").read_text().strip()
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cgroup_cpu_max": cpu_max,
        "memory_gb": memory_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "libjpeg": (
            f"libjpeg-turbo {features.version('libjpeg_turbo')}"
            if features.check_feature("libjpeg_turbo")
            else f"libjpeg {features.version('jpg')}"
        ),
        "libwebp": features.version("webp"),
        "libavif": features.version("avif"),
    }


def describe_machine(info: dict[str, Any]) -> str:
    return (
        f"{info['cpu_model'] or 'unknown CPU'}, {info['cpus_usable']} usable of {info['cores']} cores, "
        f"{info['memory_gb']} GB; Python {info['python']}, Pillow {info['pillow']} "
        f"({info['libjpeg']}, libwebp {info['libwebp']}, libavif {info['libavif']})"
    )


def load_average() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return None


# --- output ---------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with the columns padded (readable in a terminal, pasteable in a README)."""
    cells = [[str(h) for h in headers]] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(value.ljust(widths[i]) for i, value in enumerate(row)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


# --- the bare encoder ----------------------------------------------------------------------------

_BARE: dict[str, Any] = {}


def _bare_init(photos: dict[str, bytes], output, limits) -> None:
    _BARE.update(photos=photos, output=output, limits=limits)


def _bare_encode(name: str) -> float:
    from kompressor_worker.codec import compress

    started = time.perf_counter()
    compress(_BARE["photos"][name], _BARE["output"], _BARE["limits"])
    return time.perf_counter() - started


def bare_encodes(photos: dict[str, bytes], names: Sequence[str], output, limits, processes: int):
    """What the pipeline is measured against: `kompressor_worker.codec.compress` with the job's
    settings on the in-memory inputs, in a pool of `processes`, nothing else. Yields (completion
    time on the monotonic clock, encode seconds) of each image as it completes."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    with context.Pool(processes, initializer=_bare_init, initargs=(photos, output, limits)) as pool:
        for seconds in pool.imap_unordered(_bare_encode, names, chunksize=1):
            yield time.monotonic(), seconds


# --- profiling ------------------------------------------------------------------------------------


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiled(output: Path | None, rate: int = 100) -> Iterator[None]:
    """Record this process with `py-spy record --format raw` while the block runs (when `output` is
    given and py-spy is installed); the raw collapsed stacks go to `output`."""
    binary = py_spy() if output is not None else None
    if output is not None and binary is None:
        print("py-spy is not installed (pip install py-spy): no profile", file=sys.stderr)
    if binary is None or output is None:
        yield
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(os.getpid()),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(output),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # let py-spy attach before the timed work starts
    try:
        yield
    finally:
        process.send_signal(2)  # SIGINT: py-spy writes its file and exits
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            err = b""
        if not output.exists():
            print(f"py-spy wrote no profile: {err.decode(errors='replace').strip()[-300:]}", file=sys.stderr)


def summarize_profile(path: Path, buckets: dict[str, Sequence[str]], top: int = 12) -> dict[str, Any]:
    """Read py-spy's raw collapsed stacks (`frame;frame;... count`) and share the samples of the
    main thread among `buckets` (name -> substrings of a frame; the first bucket whose substring
    appears anywhere in a stack, innermost frame first, wins), plus the top leaf functions."""
    if not path.exists():
        return {}
    totals: dict[str, int] = {name: 0 for name in buckets}
    totals["other"] = 0
    leaves: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        count = int(count_text)
        samples += count
        chosen = "other"
        for frame in reversed(frames):
            hit = next((name for name, keys in buckets.items() if any(key in frame for key in keys)), None)
            if hit is not None:
                chosen = hit
                break
        totals[chosen] += count
        leaf = frames[-1]
        leaves[leaf] = leaves.get(leaf, 0) + count
    share = {name: round(count / samples, 3) if samples else 0.0 for name, count in totals.items()}
    top_leaves = sorted(leaves.items(), key=lambda item: -item[1])[:top]
    return {
        "samples": samples,
        "share": share,
        "top_leaves": [{"frame": frame, "share": round(count / samples, 3)} for frame, count in top_leaves],
    }


# --- a line plot with Pillow ----------------------------------------------------------------------


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    colour: tuple[int, int, int]
    axis: str = "left"  # "left" or "right"
    step: bool = False  # draw as a step function (a count that changes at instants)
    markers: bool = False  # a dot at each point


def line_plot(
    path: Path,
    title: str,
    series: Sequence[Series],
    x_label: str,
    left_label: str,
    right_label: str = "",
    marks: Sequence[tuple[float, str]] = (),
    size: tuple[int, int] = (1100, 560),
    x_range: tuple[float, float] | None = None,
    left_range: tuple[float, float] | None = None,
) -> Path:
    """A line chart drawn with Pillow: up to two y axes, labelled vertical marks, a legend below.
    Axes start at 0 and end on a round number unless a range is given."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    width = size[0]
    legend_items = [f"{s.label} ({s.axis} axis)" if right_label else s.label for s in series]
    per_row = max(1, (width - 100) // (max(len(t) for t in legend_items) * 6 + 50)) if series else 1
    legend_rows = math.ceil(len(series) / per_row) if series else 0
    height = size[1] + 16 * max(0, legend_rows - 1)
    left, right, top, bottom = 80, 80 if right_label else 30, 50, 54 + 16 * legend_rows
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    xs = [x for s in series for x, _ in s.points] or [0.0, 1.0]
    x_low, x_high = x_range or (0.0, max(xs))
    x_step = _nice_max(max(x_high - x_low, 1e-9) / 8)
    if x_range is None:
        x_high = x_step * math.ceil(max(x_high, 1e-9) / x_step)
    ranges: dict[str, tuple[float, float]] = {}
    for axis in ("left", "right"):
        ys = [y for s in series if s.axis == axis for _, y in s.points]
        given = left_range if axis == "left" else None
        ranges[axis] = given or (0.0, _nice_max(max(ys) if ys else 1.0))

    def px(x: float) -> float:
        return left + (width - left - right) * (x - x_low) / (x_high - x_low)

    def py(y: float, axis: str) -> float:
        low, high = ranges[axis]
        return height - bottom - (height - top - bottom) * (y - low) / (high - low)

    draw.text((left, 15), title, fill="black", font=font)
    draw.rectangle((left, top, width - right, height - bottom), outline=(120, 120, 120))
    x = math.ceil(x_low / x_step) * x_step
    while x <= x_high + 1e-9:
        draw.line((px(x), height - bottom, px(x), height - bottom + 5), fill="black")
        draw.text((px(x) - 10, height - bottom + 8), f"{round(x, 6):g}", fill="black", font=font)
        x += x_step
    for i in range(6):
        for axis, anchor in (("left", left - 8), ("right", width - right + 8)):
            if axis == "right" and not right_label:
                continue
            low, high = ranges[axis]
            y = low + (high - low) * i / 5
            label = f"{round(y, 6):g}"
            tx = anchor - 6 * len(label) if axis == "left" else anchor
            draw.text((tx, py(y, axis) - 6), label, fill="black", font=font)
            if axis == "left":
                draw.line((left, py(y, axis), width - right, py(y, axis)), fill=(232, 232, 232))
    draw.text(
        ((width - left - right) // 2 + left - 3 * len(x_label), height - bottom + 24),
        x_label,
        fill="black",
        font=font,
    )
    draw.text((8, top - 18), left_label, fill="black", font=font)
    if right_label:
        draw.text((width - right - 6 * len(right_label) + 70, top - 18), right_label, fill="black", font=font)
    for index, (x, label) in enumerate(marks):
        draw.line((px(x), top, px(x), height - bottom), fill=(150, 150, 150), width=1)
        draw.text((px(x) + 3, top + 3 + 12 * (index % 4)), label, fill=(90, 90, 90), font=font)
    for s in series:
        points = []
        for i, (x, y) in enumerate(s.points):
            if s.step and i > 0:
                points.append((px(x), py(s.points[i - 1][1], s.axis)))
            points.append((px(x), py(y, s.axis)))
        if len(points) > 1:
            draw.line(points, fill=s.colour, width=2)
        if s.markers:
            for x, y in s.points:
                cx, cy = px(x), py(y, s.axis)
                draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=s.colour)
    column = (width - 100) // per_row
    for i, (s, text) in enumerate(zip(series, legend_items, strict=True)):
        lx = left + 10 + column * (i % per_row)
        ly = height - 16 * legend_rows + 16 * (i // per_row) - 6
        draw.line((lx, ly + 6, lx + 24, ly + 6), fill=s.colour, width=3)
        draw.text((lx + 30, ly), text, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 × 10^k at least `value` (an axis that ends on a round number)."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if magnitude * factor >= value * (1 - 1e-9):
            return magnitude * factor
    return magnitude * 10
