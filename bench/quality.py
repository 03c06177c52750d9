"""Automatic quality (targetSSIM) against two baselines, and JPEG encoders at equal SSIM.

For each output format (default: jpeg) and SSIM floor (default: 0.983, luma), on the real-photo
corpus (`tests.corpus.real_photos()`, resized to fit `--max-side`, default 1200 px):

  (a) automatic quality: `kompressor_worker.codec.compress` with `targetSSIM = floor` (it also
      keeps chroma SSIM ≥ `quality.CHROMA_FLOOR`, choosing the chroma subsampling);
  (b) plain Pillow, the neutral baseline a team would pick: `Image.save` of the same prepared image
      and metadata with Pillow's defaults (JPEG: optimize + progressive, Pillow's default 4:2:0;
      WebP: method 4, 4:2:0; AVIF: speed 6, 4:2:0) at the smallest single quality that meets the
      luma floor on every image;
  (c) the same codec (`codec.encode`, our fixed-quality settings: JPEG 4:4:4 from q90) at the
      smallest single quality that meets the luma floor on every image;
  (d) the per-image oracle (optional, `--oracle`): the lowest quality within the search's bounds
      at which the same codec, at the subsampling the search chose, keeps both floors, by scanning
      every quality.

(b) and (c) are found by scanning 1..100 in the same run, SSIM measured on the stored bytes. Every
stored output's SSIM (luma) and chroma SSIM (the lower of Cb's and Cr's, at the output's size) is
measured again here from its bytes against the prepared source, independently of what the search
reported; the baselines' chroma SSIM too (they need not meet the chroma floor: the table says how
many miss it). Time is the process CPU time of one
`compress` call (decode, resize, search, encode), fixed and automatic interleaved per image and
repeated (`--repeat`, the fastest of each kept), so other load on a shared machine moves both alike;
images/s = images / total seconds, one process.

Encodes per image: full-size encodes (the search's measurements, plus the final encode when JPEG
was measured with a baseline encode), probe encodes (the mosaic), and both in full-size
equivalents (probe encodes weighted by the probe's share of the image's pixels).

JPEG encoders at equal SSIM (`--jpegli`, on by default when `pyjpegli` is importable): for each
image and floor, the lowest quality meeting the floor with Pillow (our stored settings: optimize,
progressive, 4:2:0 below q90 and 4:4:4 from 90), with Pillow at 4:2:0 throughout (a control: luma
SSIM does not see chroma, and pyjpegli always subsamples) and with jpegli (`pyjpegli.encode`, its
defaults: baseline, 4:2:0), by scanning qualities; bytes at that quality and the CPU seconds of one
encode there.

    python bench/quality.py                               # jpeg, floor 0.983, ~5 minutes
    python bench/quality.py --formats jpeg webp --floors 0.95 0.983 0.99
    python bench/quality.py --formats avif --no-oracle --repeat 1      # AVIF is slow
    python bench/quality.py --jpegli-only --out bench/results/jpegli.json

Prints a table and writes bench/results/quality.json and bench/results/quality-<format>.png (bytes
against SSIM per image: the fixed quality's output, the automatic one, and each image's curve).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from common import describe_machine, load_average, machine  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from kompressor.crd import Format, Limits, Output  # noqa: E402
from kompressor_worker import quality, ssim  # noqa: E402
from kompressor_worker.codec import Prepared, compress, encode, prepare  # noqa: E402
from tests.corpus import OPENCV_DATA, real_photos  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CURVE_QUALITIES = (30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 100)
LIMITS = Limits()


# --- one image ------------------------------------------------------------------------------------


@dataclass
class Photo:
    name: str
    data: bytes
    prepared: Prepared
    reference: np.ndarray
    stored: dict[int, tuple[int, float]] = field(default_factory=dict)  # quality -> (bytes, ssim)
    plain: dict[int, tuple[int, float]] = field(default_factory=dict)  # the same, plain Pillow
    # (quality, subsampling) -> (bytes, ssim, chroma ssim): the codec at a given subsampling
    chosen: dict[tuple[int, str], tuple[int, float, float]] = field(default_factory=dict)

    @property
    def pixels(self) -> int:
        return self.prepared.image.width * self.prepared.image.height


def output_for(fmt: str, max_side: int, **fields: Any) -> Output:
    return Output.model_validate(
        {
            "format": fmt,
            "resize": {"maxWidth": max_side, "maxHeight": max_side},
            "neverLarger": False,
            **fields,
        }
    )


def measured_ssim(photo: Photo, data: bytes) -> float:
    return ssim.ssim(photo.reference, ssim.decode_luma(data))


def measured_chroma(photo: Photo, data: bytes) -> float:
    """Chroma SSIM of encoded bytes against the prepared image (1 for a grey image)."""
    return ssim.Target(photo.prepared.image).measure(data)[1]


PILLOW_NAME = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}


def plain_pillow(photo: Photo, fmt: str, q: int) -> bytes:
    """Pillow's own defaults at quality q (JPEG also optimize + progressive), same metadata."""
    p = photo.prepared
    extra: dict[str, Any] = {"optimize": True, "progressive": True} if fmt == "jpeg" else {}
    metadata = {k: v for k, v in (("icc_profile", p.icc_profile), ("exif", p.exif), ("xmp", p.xmp)) if v}
    buffer = io.BytesIO()
    p.image.save(buffer, PILLOW_NAME[fmt], quality=q, **extra, **metadata)
    return buffer.getvalue()


def plain(photo: Photo, fmt: str, q: int) -> tuple[int, float]:
    """Bytes and SSIM of plain Pillow at quality q (cached)."""
    if q not in photo.plain:
        data = plain_pillow(photo, fmt, q)
        photo.plain[q] = (len(data), measured_ssim(photo, data))
    return photo.plain[q]


def fixed(photo: Photo, fmt: str, max_side: int, q: int) -> tuple[int, float]:
    """Bytes and SSIM of the stored output at fixed quality q (cached)."""
    if q not in photo.stored:
        p = photo.prepared  # compress() is prepare() then this encode (neverLarger is off here)
        data = encode(p.image, p.format, q, p.icc_profile, exif=p.exif, xmp=p.xmp)
        photo.stored[q] = (len(data), measured_ssim(photo, data))
    return photo.stored[q]


def smallest_single_quality(photos: list[Photo], floor: float, order: list[int], measure) -> int | None:
    """The smallest q in 1..100 at which `measure(photo, q)` -> (bytes, ssim) meets the floor on
    every image, or None. Images are tried hardest first (`order`), so most qualities fail on their
    first image."""
    for q in range(1, 101):
        if all(measure(photos[i], q)[1] >= floor for i in order):
            return q
    return None


def oracle_quality(photo: Photo, floor: float, settings: quality.SearchSettings, subsampling: str) -> int:
    """The lowest quality within the bounds at which the same codec, at the subsampling the search
    chose, keeps both floors (else the highest): what a perfect search would store."""
    p = photo.prepared
    for q in range(settings.lowest, settings.highest + 1):
        key = (q, subsampling)
        if key not in photo.chosen:
            data = encode(
                p.image,
                p.format,
                q,
                p.icc_profile,
                exif=p.exif,
                xmp=p.xmp,
                source_subsampling=p.source_subsampling,
                subsampling=subsampling,
            )
            luma = measured_ssim(photo, data)
            chroma = measured_chroma(photo, data) if luma >= floor else 0.0  # only where it decides
            photo.chosen[key] = (len(data), luma, chroma)
        _, luma, chroma = photo.chosen[key]
        if luma >= floor and chroma >= quality.CHROMA_FLOOR:
            return q
    return settings.highest


def cpu_seconds(call, repeat: int) -> tuple[float, float, Any]:
    """(fastest process CPU seconds, fastest wall seconds, the last result) of `repeat` calls."""
    best_cpu = best_wall = math.inf
    result = None
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        result = call()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall, result


# --- one format and floor -------------------------------------------------------------------------


def run_setting(photos: list[Photo], fmt: str, floor: float, args: argparse.Namespace) -> dict[str, Any]:
    settings = quality.SEARCH[Format(fmt)]
    auto_output = output_for(fmt, args.max_side, targetSSIM=floor)
    rows = []
    for photo in photos:
        result = compress(photo.data, auto_output, LIMITS)
        probe = quality.build_probe(photo.prepared.image)
        share = probe.image.width * probe.image.height / photo.pixels if probe else 0.0
        full = sum(1 for a in result.attempts if a.full)
        probes = len(result.attempts) - full
        final = 1 if fmt == "jpeg" else 0  # measured with baseline encodes, then encoded to store
        rows.append(
            {
                "name": photo.name,
                "width": photo.prepared.image.width,
                "height": photo.prepared.image.height,
                "quality": result.quality,
                "subsampling": result.subsampling,
                "ssim_reported": result.ssim,
                "ssim_measured": measured_ssim(photo, result.data),
                "chroma_reported": result.chroma_ssim,
                "chroma_measured": measured_chroma(photo, result.data),
                "bytes": len(result.data),
                "reason": result.reason,
                "full_encodes": full + final,
                "probe_encodes": probes,
                "probe_share": round(share, 3),
                "equivalent_encodes": full + final + probes * share,
                "attempts": [
                    [a.quality, a.subsampling, round(a.ssim, 5), round(a.chroma, 5), a.full]
                    for a in result.attempts
                ],
            }
        )
    order = sorted(range(len(photos)), key=lambda i: -(rows[i]["quality"] or 0))
    fixed_q = smallest_single_quality(photos, floor, order, lambda p, q: fixed(p, fmt, args.max_side, q))
    plain_q = smallest_single_quality(photos, floor, order, lambda p, q: plain(p, fmt, q))
    for photo, row in zip(photos, rows, strict=True):
        if plain_q is not None:
            row["plain_bytes"], row["plain_ssim"] = plain(photo, fmt, plain_q)
            row["plain_chroma"] = measured_chroma(photo, plain_pillow(photo, fmt, plain_q))
        if fixed_q is not None:
            row["fixed_bytes"], row["fixed_ssim"] = fixed(photo, fmt, args.max_side, fixed_q)
        if args.oracle:
            q = oracle_quality(photo, floor, settings, row["subsampling"])
            row["oracle_quality"] = q
            row["oracle_bytes"] = photo.chosen[q, row["subsampling"]][0]

    # Timing: fixed and automatic interleaved per image, fastest of `repeat` each.
    fixed_output = output_for(fmt, args.max_side, quality=fixed_q or settings.highest)
    for photo, row in zip(photos, rows, strict=True):
        cpu_f, wall_f, _ = cpu_seconds(lambda p=photo: compress(p.data, fixed_output, LIMITS), args.repeat)
        cpu_a, wall_a, _ = cpu_seconds(lambda p=photo: compress(p.data, auto_output, LIMITS), args.repeat)
        row.update(cpu_fixed=cpu_f, cpu_auto=cpu_a, wall_fixed=wall_f, wall_auto=wall_a)

    n = len(rows)
    auto_bytes = sum(r["bytes"] for r in rows)
    summary: dict[str, Any] = {
        "format": fmt,
        "floor": floor,
        "images": n,
        "bounds": [settings.lowest, settings.highest],
        "fixed_quality": fixed_q,
        "auto_bytes": auto_bytes,
        "auto_quality_min": min(r["quality"] for r in rows),
        "auto_quality_max": max(r["quality"] for r in rows),
        "min_ssim_measured": min(r["ssim_measured"] for r in rows),
        "min_ssim_reached": min((r["ssim_measured"] for r in rows if not r["reason"]), default=None),
        "min_ssim_reported": min(r["ssim_reported"] for r in rows),
        "chroma_floor": quality.CHROMA_FLOOR,
        "min_chroma_measured": min(r["chroma_measured"] for r in rows),
        "meets_chroma_floor": sum(1 for r in rows if r["chroma_measured"] >= quality.CHROMA_FLOOR),
        "meets_both_floors": sum(
            1 for r in rows if r["ssim_measured"] >= floor and r["chroma_measured"] >= quality.CHROMA_FLOOR
        ),
        "subsamplings": {
            s: sum(1 for r in rows if r["subsampling"] == s) for s in {r["subsampling"] for r in rows}
        },
        "max_report_error": max(abs(r["ssim_measured"] - r["ssim_reported"]) for r in rows),
        "meets_floor": sum(1 for r in rows if r["ssim_measured"] >= floor),
        "unreachable": sum(1 for r in rows if r["reason"]),
        "full_encodes_per_image": sum(r["full_encodes"] for r in rows) / n,
        "probe_encodes_per_image": sum(r["probe_encodes"] for r in rows) / n,
        "equivalent_encodes_per_image": sum(r["equivalent_encodes"] for r in rows) / n,
        "images_per_second_fixed": n / sum(r["cpu_fixed"] for r in rows),
        "images_per_second_auto": n / sum(r["cpu_auto"] for r in rows),
        "images_per_second_fixed_wall": n / sum(r["wall_fixed"] for r in rows),
        "images_per_second_auto_wall": n / sum(r["wall_auto"] for r in rows),
    }
    summary["speed_ratio"] = summary["images_per_second_auto"] / summary["images_per_second_fixed"]
    summary["plain_quality"] = plain_q
    if plain_q is not None:
        plain_bytes = sum(r["plain_bytes"] for r in rows)
        summary["plain_bytes"] = plain_bytes
        summary["saved_vs_plain"] = 1 - auto_bytes / plain_bytes
        summary["min_ssim_plain"] = min(r["plain_ssim"] for r in rows)
        summary["plain_meets_chroma_floor"] = sum(
            1 for r in rows if r["plain_chroma"] >= quality.CHROMA_FLOOR
        )
    if fixed_q is not None:
        fixed_bytes = sum(r["fixed_bytes"] for r in rows)
        summary["fixed_bytes"] = fixed_bytes
        summary["saved_vs_fixed"] = 1 - auto_bytes / fixed_bytes
        summary["min_ssim_fixed"] = min(r["fixed_ssim"] for r in rows)
    if args.oracle:
        oracle_bytes = sum(r["oracle_bytes"] for r in rows)
        summary["oracle_bytes"] = oracle_bytes
        summary["auto_over_oracle"] = auto_bytes / oracle_bytes - 1
    return {"summary": summary, "images": rows}


# --- jpegli ---------------------------------------------------------------------------------------


def jpegli_comparison(photos: list[Photo], floors: list[float], repeat: int) -> dict[str, Any]:
    try:
        import pyjpegli
    except ImportError as exc:
        return {"available": False, "error": str(exc)}

    def pillow_encode(photo: Photo, q: int) -> bytes:
        return encode(photo.prepared.image, Format.jpeg, q, None)

    def pillow_420_encode(photo: Photo, q: int) -> bytes:
        buffer = io.BytesIO()
        photo.prepared.image.save(buffer, "JPEG", quality=q, optimize=True, progressive=True, subsampling=2)
        return buffer.getvalue()

    def jpegli_encode(photo: Photo, q: int) -> bytes:
        rgb = np.ascontiguousarray(np.asarray(photo.prepared.image.convert("RGB")))
        return pyjpegli.encode(rgb, photo.prepared.image.width, photo.prepared.image.height, quality=q)

    # pillow-420: a control, our encoder with 4:2:0 at every quality (as pyjpegli always does).
    encoders = {"pillow": pillow_encode, "pillow-420": pillow_420_encode, "jpegli": jpegli_encode}
    per_floor: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for photo in photos:
        row: dict[str, Any] = {"name": photo.name}
        for name, enc in encoders.items():
            curve: dict[int, tuple[int, float]] = {}
            for floor in sorted(floors):
                q = max([q for q in curve if curve[q][1] < floor], default=0) + 1
                while q <= 100:
                    if q not in curve:
                        data = enc(photo, q)
                        curve[q] = (len(data), measured_ssim(photo, data))
                    if curve[q][1] >= floor:
                        break
                    q += 1
                q = min(q, 100)
                if q not in curve:
                    data = enc(photo, q)
                    curve[q] = (len(data), measured_ssim(photo, data))
                cpu, _, _ = cpu_seconds(lambda e=enc, p=photo, qq=q: e(p, qq), repeat)
                row[f"{name}@{floor}"] = {
                    "quality": q,
                    "bytes": curve[q][0],
                    "ssim": curve[q][1],
                    "cpu": cpu,
                    "met": curve[q][1] >= floor,
                }
        rows.append(row)
    for floor in floors:
        totals = {}
        for name in encoders:
            cells = [r[f"{name}@{floor}"] for r in rows]
            totals[name] = {
                "bytes": sum(c["bytes"] for c in cells),
                "cpu": sum(c["cpu"] for c in cells),
                "unmet": sum(1 for c in cells if not c["met"]),
            }
        wins = sum(1 for r in rows if r[f"jpegli@{floor}"]["bytes"] < r[f"pillow@{floor}"]["bytes"])
        per_floor[str(floor)] = {
            **totals,
            "bytes_ratio": totals["jpegli"]["bytes"] / totals["pillow"]["bytes"],
            "bytes_ratio_420": totals["jpegli"]["bytes"] / totals["pillow-420"]["bytes"],
            "cpu_ratio": totals["jpegli"]["cpu"] / totals["pillow"]["cpu"],
            "jpegli_smaller_on": wins,
        }
    return {
        "available": True,
        "pyjpegli": getattr(pyjpegli, "__version__", "?"),
        "floors": per_floor,
        "images": rows,
    }


# --- plot -----------------------------------------------------------------------------------------


def plot(result: dict[str, Any], photos: list[Photo], fmt: str, max_side: int, path: Path) -> None:
    """Bytes (log) against SSIM per image: a grey curve through every fixed quality measured (at
    least CURVE_QUALITIES), a square for the fixed quality's output, a dot for automatic quality's,
    joined; the floor as a vertical line."""
    summary, rows = result["summary"], result["images"]
    floor = summary["floor"]
    for photo in photos:
        for q in CURVE_QUALITIES:
            fixed(photo, fmt, max_side, q)
    width, height, left, right, top, bottom = 1400, 900, 90, 30, 60, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    points = [v for p in photos for v in p.stored.values()]
    x_low = max(0.0, min(floor - 0.02, min(r["ssim_measured"] for r in rows) - 0.005))
    x_low = math.floor(x_low * 100) / 100
    b_low = max(1, min(b for b, s in points if s >= x_low))
    b_high = max(b for b, _ in points)
    y_low, y_high = math.log10(b_low) - 0.05, math.log10(b_high) + 0.05

    def xy(ssim: float, size: int) -> tuple[float, float]:
        x = left + (min(1.0, max(x_low, ssim)) - x_low) / (1.0 - x_low) * (width - left - right)
        y = height - bottom - (math.log10(size) - y_low) / (y_high - y_low) * (height - top - bottom)
        return x, y

    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    steps = 10
    for i in range(steps + 1):
        s = x_low + (1.0 - x_low) * i / steps
        x, _ = xy(s, b_low)
        draw.line((x, height - bottom, x, height - bottom + 5), fill="black")
        draw.text((x - 15, height - bottom + 8), f"{s:.3f}", fill="black", font=font)
    decade = 10 ** math.floor(y_low)
    while decade <= 10**y_high:
        for m in (1, 2, 5):
            v = decade * m
            if y_low <= math.log10(v) <= y_high:
                _, y = xy(1.0, v)
                draw.line((left - 5, y, left, y), fill="black")
                draw.line((left, y, width - right, y), fill=(235, 235, 235))
                draw.text((8, y - 6), f"{v / 1000:g} KB", fill="black", font=font)
        decade *= 10
    fx, _ = xy(floor, b_low)
    for y in range(top, height - bottom, 12):
        draw.line((fx, y, fx, y + 6), fill=(200, 0, 0))
    for photo in photos:
        curve = sorted((s, b) for q, (b, s) in photo.stored.items() if s >= x_low)
        if len(curve) > 1:
            draw.line([xy(s, b) for s, b in curve], fill=(200, 200, 200), width=1)
    for row in rows:
        ax, ay = xy(row["ssim_measured"], row["bytes"])
        if "fixed_bytes" in row:
            fx_, fy_ = xy(row["fixed_ssim"], row["fixed_bytes"])
            draw.line((fx_, fy_, ax, ay), fill=(120, 120, 220), width=1)
            draw.rectangle((fx_ - 4, fy_ - 4, fx_ + 4, fy_ + 4), outline=(40, 40, 180), width=2)
        draw.ellipse((ax - 4, ay - 4, ax + 4, ay + 4), fill=(0, 140, 0))
    title = (
        f"{fmt} fit {max_side}px, floor SSIM {floor}: automatic quality (green dots, q "
        f"{summary['auto_quality_min']}-{summary['auto_quality_max']}) vs fixed q{summary['fixed_quality']} "
        "(blue squares); grey: each image over the qualities measured"
    )
    draw.text((left, 15), title, fill="black", font=font)
    if "saved_vs_fixed" in summary and "saved_vs_plain" in summary:
        draw.text(
            (left, 35),
            f"{summary['images']} images: {summary['saved_vs_plain']:.1%} fewer bytes than plain Pillow at "
            f"q{summary['plain_quality']}, {summary['saved_vs_fixed']:.1%} fewer than fixed; red: the floor",
            fill="black",
            font=font,
        )
    draw.text((width // 2 - 60, height - 25), "SSIM (luma) of the stored output", fill="black", font=font)
    draw.text((8, top - 20), "bytes (log)", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# --- report ---------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nMachine: {describe_machine(report['machine'])}, numpy {np.__version__}; "
        f"load {report['load_average_at_start']}"
    )
    c = report["corpus"]
    print(f"Corpus: {c['photos']} photos from {c['source']}, fit {c['max_side']} px ({c['megapixels']})")
    header = (
        "format floor   plain q  bytes plain  (chroma ok)  fixed q  bytes fixed  auto q  bytes auto  "
        "vs plain  vs fixed  vs oracle  min SSIM*  min chroma  both ok  subsampling    unreach  "
        "full/img  probe/img  equiv/img  img/s fixed  img/s auto  ratio"
    )
    print("\n" + header)
    nan = float("nan")
    for run in report["runs"]:
        s = run["summary"]
        oracle = f"{s['auto_over_oracle']:+.1%}" if "auto_over_oracle" in s else "-"
        sampling = " ".join(f"{k}:{v}" for k, v in sorted(s["subsamplings"].items(), key=str))
        print(
            f"{s['format']:6s} {s['floor']:<7} {s['plain_quality']!s:>7}  {s.get('plain_bytes', 0):>11,}  "
            f"{s.get('plain_meets_chroma_floor', 0):>5}/{s['images']:<5}  {s['fixed_quality']!s:>7}  "
            f"{s.get('fixed_bytes', 0):>11,}  {s['auto_quality_min']:>2}-{s['auto_quality_max']:<3}  "
            f"{s['auto_bytes']:>10,}  {-s.get('saved_vs_plain', nan):>+8.1%}  "
            f"{-s.get('saved_vs_fixed', nan):>+8.1%}  {oracle:>9}  {s['min_ssim_reached'] or 0:.4f}     "
            f"{s['min_chroma_measured']:.4f}  {s['meets_both_floors']:>4}/{s['images']:<3} "
            f"{sampling:14s} {s['unreachable']:>7}  {s['full_encodes_per_image']:>8.2f}  "
            f"{s['probe_encodes_per_image']:>9.2f}  {s['equivalent_encodes_per_image']:>9.2f}  "
            f"{s['images_per_second_fixed']:>11.2f}  {s['images_per_second_auto']:>10.2f}  "
            f"{s['speed_ratio']:>5.2f}"
        )
    print(
        "plain: Pillow's defaults (JPEG 4:2:0, optimize + progressive) at the smallest single quality "
        "meeting the luma floor on every image; (chroma ok): how many of those keep the chroma floor "
        f"{quality.CHROMA_FLOOR}; fixed: the same codec's fixed-quality settings (JPEG 4:4:4 from q90) "
        "likewise.\n* min SSIM: the lowest SSIM measured on a stored output's bytes, among those not "
        "marked quality_floor_unreachable (those keep the best attempt at the highest quality)"
    )
    j = report.get("jpegli")
    if j is None:
        return
    if not j["available"]:
        print(f"\njpegli: not available ({j['error']})")
        return
    print(
        f"\nJPEG encoders at equal SSIM (pyjpegli {j['pyjpegli']}, baseline 4:2:0, against Pillow "
        "optimize+progressive as stored, and Pillow 4:2:0 at every quality)"
    )
    print(
        "floor    bytes Pillow  bytes Pillow-420  bytes jpegli  jpegli/Pillow  jpegli/Pillow-420  "
        "smaller on  CPU s Pillow  CPU s jpegli  ratio"
    )
    for floor, f in j["floors"].items():
        print(
            f"{floor:<8} {f['pillow']['bytes']:>12,}  {f['pillow-420']['bytes']:>16,}  "
            f"{f['jpegli']['bytes']:>12,}  {f['bytes_ratio']:>13.3f}  {f['bytes_ratio_420']:>17.3f}  "
            f"{f['jpegli_smaller_on']:>4}/{len(j['images']):<5}  "
            f"{f['pillow']['cpu']:>12.3f}  {f['jpegli']['cpu']:>12.3f}  {f['cpu_ratio']:>5.2f}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--formats", nargs="+", default=["jpeg"], choices=["jpeg", "webp", "avif"])
    parser.add_argument("--floors", nargs="+", type=float, default=[0.983])
    parser.add_argument("--max-side", type=int, default=1200)
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos")
    parser.add_argument("--repeat", type=int, default=3, help="timing repetitions per image (fastest kept)")
    parser.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--jpegli", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--jpegli-floors", nargs="+", type=float, default=[0.95, 0.9834, 0.99])
    parser.add_argument("--jpegli-only", action="store_true", help="only the JPEG encoder comparison")
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    photos_raw = real_photos(limit=args.limit)
    if not photos_raw:
        print(f"no photos: install Debian's opencv-doc ({OPENCV_DATA})", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "machine": machine(),
        "load_average_at_start": load_average(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    runs = []
    for fmt in args.formats:
        output = output_for(fmt, args.max_side)
        photos = []
        for name, data in photos_raw.items():
            prepared = prepare(data, output, LIMITS)
            photos.append(Photo(name, data, prepared, ssim.luma(prepared.image)))
        for floor in [] if args.jpegli_only else args.floors:
            print(f"{fmt} floor {floor}: searching, scanning fixed qualities, timing ...", flush=True)
            run = run_setting(photos, fmt, floor, args)
            runs.append(run)
            png = args.out.with_name(f"{args.out.stem}-{fmt}-{floor}.png")
            plot(run, photos, fmt, args.max_side, png)
            run["summary"]["plot"] = str(png.relative_to(ROOT) if png.is_relative_to(ROOT) else png)
        if fmt == "jpeg" and args.jpegli:
            print("jpeg: Pillow against jpegli at equal SSIM ...", flush=True)
            report["jpegli"] = jpegli_comparison(photos, args.jpegli_floors, args.repeat)
    megapixels = [p.pixels / 1e6 for p in photos]
    report["corpus"] = {
        "source": f"tests.corpus.real_photos() (Debian opencv-doc, {OPENCV_DATA})",
        "photos": len(photos),
        "max_side": args.max_side,
        "megapixels": (
            f"{min(megapixels):.2f}-{max(megapixels):.2f} MP, median {statistics.median(megapixels):.2f}"
        ),
    }
    report["runs"] = runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    print(f"\nwrote {args.out}" + "".join(f", {r['summary']['plot']}" for r in runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
