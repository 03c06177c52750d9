"""Codec defaults on evidence: bytes, SSIM and encode time of each encoder setting on real photos.

For every photo of `tests.corpus.real_photos()` (Debian opencv-doc, as shipped: 24 JPEGs, 10.4 MP,
3.0 MB), decoded once by `kompressor_worker.codec.prepare` (upright RGB, no resize), each setting is
encoded with Pillow (the bare encoder) at a few qualities, decoded again and compared with the
decoded source:

- JPEG: optimize and progressive on/off (both lossless re-codings of the same coefficients: only
  bytes and time change) and chroma subsampling 4:4:4 / 4:2:2 / 4:2:0. Luma SSIM does not see
  chroma, so for JPEG a chroma SSIM (mean of Cb and Cr) is reported too.
- WebP: method 0..6.
- AVIF: speed 4, 6, 8, 10 (one encoder thread, as the worker runs it).

The current choice of `kompressor_worker.codec` (JPEG optimize + progressive, 4:2:0 below q90 and
4:4:4 from q90; WebP method 4; AVIF speed 6) is also encoded through `codec.encode` itself, which
must give the bare encoder's bytes. For each setting, "bytes at equal SSIM" interpolates its
(luma SSIM, bytes) curve over the qualities (log bytes against log(1 - SSIM)) at the SSIM the current
choice reaches at quality 80, the default: the bytes it needs for the same quality, relative to the
current choice.

SSIM: scikit-image's structural_similarity when it is installed, else the same definition in numpy
(7x7 uniform window, sample covariance, K1 0.01, K2 0.03, data range 255, mean over the windows
inside the image) on BT.601 luma. Seconds are the encoder's CPU time (process_time around save).

    python bench/codec_defaults.py                          # ~3-5 minutes on 2 cores
    python bench/codec_defaults.py --formats jpeg,webp      # ~1 minute
    python bench/codec_defaults.py --avif-speeds 6,8,10 --photos 12

Prints tables and writes bench/results/codec_defaults.json and bench/results/codec_defaults.png.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from common import RESULTS, Series, describe_machine, line_plot, load_average, machine, table, write_json

from kompressor.crd import Format, Limits, Output
from kompressor_worker import codec
from tests.corpus import OPENCV_DATA, real_photos

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy comes with the worker's quality module
    np = None

REFERENCE_QUALITY = 80
SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
PILLOW = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
FORMATS = {"jpeg": Format.jpeg, "webp": Format.webp, "avif": Format.avif}


@dataclass(frozen=True)
class Setting:
    fmt: str
    name: str
    params: dict[str, Any]  # encoder parameters besides quality
    qualities: tuple[int, ...]
    current: bool = False  # the codec's current choice (then also encoded through codec.encode)

    def encoder_params(self, quality: int) -> dict[str, Any]:
        params = dict(self.params)
        if self.fmt == "jpeg" and params.get("subsampling") == "current":
            params["subsampling"] = 0 if quality >= codec.JPEG_FULL_CHROMA_FROM_QUALITY else 2
        return {"quality": quality, **params}


def settings_for(formats: list[str], avif_speeds: list[int]) -> list[Setting]:
    jpeg_q = (70, 80, 90, 95)
    found: list[Setting] = []
    if "jpeg" in formats:
        found += [
            Setting(
                "jpeg",
                "optimize+progressive, 4:2:0 <q90, 4:4:4 >=q90 (current)",
                {"optimize": True, "progressive": True, "subsampling": "current"},
                jpeg_q,
                current=True,
            ),
            Setting("jpeg", "baseline, no optimize, 4:2:0", {"subsampling": 2}, jpeg_q),
            Setting("jpeg", "optimize, 4:2:0", {"optimize": True, "subsampling": 2}, jpeg_q),
            Setting("jpeg", "progressive, 4:2:0", {"progressive": True, "subsampling": 2}, jpeg_q),
            Setting(
                "jpeg",
                "optimize+progressive, 4:2:0",
                {"optimize": True, "progressive": True, "subsampling": 2},
                jpeg_q,
            ),
            Setting(
                "jpeg",
                "optimize+progressive, 4:2:2",
                {"optimize": True, "progressive": True, "subsampling": 1},
                jpeg_q,
            ),
            Setting(
                "jpeg",
                "optimize+progressive, 4:4:4",
                {"optimize": True, "progressive": True, "subsampling": 0},
                jpeg_q,
            ),
        ]
    if "webp" in formats:
        for method in range(7):
            current = method == codec.WEBP_METHOD
            found.append(
                Setting(
                    "webp",
                    f"method {method}" + (" (current)" if current else ""),
                    {"method": method},
                    (70, 80, 90),
                    current,
                )
            )
    if "avif" in formats:
        for speed in avif_speeds:
            current = speed == codec.AVIF_SPEED
            found.append(
                Setting(
                    "avif",
                    f"speed {speed}" + (" (current)" if current else ""),
                    {"speed": speed, "max_threads": codec.AVIF_THREADS},
                    (70, 80, 90),
                    current,
                )
            )
    return found


# --- SSIM ------------------------------------------------------------------------------------------

WINDOW, K1, K2, DATA_RANGE = 7, 0.01, 0.03, 255.0


def _planes(image, chroma: bool) -> list[Any]:
    """BT.601 full-range Y (and Cb, Cr when `chroma`) as float64 planes, unrounded."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    planes = [0.299 * r + 0.587 * g + 0.114 * b]
    if chroma:
        planes.append(128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b)
        planes.append(128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b)
    return planes


def _window_sums(plane):
    total = np.cumsum(np.cumsum(plane, axis=0), axis=1)
    total = np.pad(total, ((1, 0), (1, 0)))
    w = WINDOW
    return total[w:, w:] - total[:-w, w:] - total[w:, :-w] + total[:-w, :-w]


def ssim(a, b) -> float:
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        pass
    else:
        return float(structural_similarity(a, b, data_range=DATA_RANGE))
    n = WINDOW * WINDOW
    mu_a, mu_b = _window_sums(a) / n, _window_sums(b) / n
    scale = n / (n - 1)  # sample covariance, as scikit-image by default
    var_a = (_window_sums(a * a) / n - mu_a * mu_a) * scale
    var_b = (_window_sums(b * b) / n - mu_b * mu_b) * scale
    cov = (_window_sums(a * b) / n - mu_a * mu_b) * scale
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(value.mean())


# --- the work, one photo per process --------------------------------------------------------------


def measure_photo(name: str, data: bytes, settings: list[Setting]) -> dict[str, Any]:
    import hashlib

    from PIL import Image

    prepared = codec.prepare(data, Output(format="png", strip_metadata=True), Limits())
    image = prepared.image.convert("RGB")
    chroma = any(setting.fmt == "jpeg" for setting in settings)
    reference = _planes(image, chroma)
    measured: dict[bytes, tuple[float, float | None]] = {}  # decoded pixels' digest -> SSIMs
    rows = []
    for setting in settings:
        for quality in setting.qualities:
            params = setting.encoder_params(quality)
            buffer = io.BytesIO()
            started = time.process_time()
            image.save(buffer, PILLOW[setting.fmt], **params)
            seconds = time.process_time() - started
            encoded = buffer.getvalue()
            decoded = Image.open(io.BytesIO(encoded)).convert("RGB")
            # optimize and progressive re-code the same coefficients: identical pixels, measured once
            digest = hashlib.sha256(decoded.tobytes()).digest()
            if digest not in measured:
                planes = _planes(decoded, setting.fmt == "jpeg")
                colour = None
                if setting.fmt == "jpeg":
                    colour = (ssim(reference[1], planes[1]) + ssim(reference[2], planes[2])) / 2
                measured[digest] = (ssim(reference[0], planes[0]), colour)
            luma, colour = measured[digest]
            row = {
                "setting": setting.name,
                "fmt": setting.fmt,
                "quality": quality,
                "bytes": len(encoded),
                "seconds": seconds,
                "ssim": luma,
                "pixels_sha256": digest.hex()[:16],
            }
            if colour is not None:
                row["chroma_ssim"] = colour
            if setting.current:
                product = codec.encode(image, FORMATS[setting.fmt], quality, None)
                row["product_equals_bare"] = product == encoded
            rows.append(row)
    from PIL import JpegImagePlugin

    with Image.open(io.BytesIO(data)) as source:
        sampling = JpegImagePlugin.get_sampling(source) if source.format == "JPEG" else -1
    return {
        "name": name,
        "bytes": len(data),
        "pixels": image.width * image.height,
        "source_subsampling": SUBSAMPLING_NAMES.get(sampling, "unknown"),
        "rows": rows,
    }


# --- aggregation ----------------------------------------------------------------------------------


def aggregate(photos: list[dict[str, Any]], settings: list[Setting]) -> list[dict[str, Any]]:
    """Per setting and quality: bytes (sum) and share of the input, mean SSIM, encode seconds."""
    out = []
    for setting in settings:
        for quality in setting.qualities:
            entry = {
                "fmt": setting.fmt,
                "setting": setting.name,
                "current": setting.current,
                "quality": quality,
            }
            entry.update(stats(photos, setting.name, quality))
            if setting.current:
                entry["product_equals_bare"] = all(
                    r["product_equals_bare"]
                    for p in photos
                    for r in p["rows"]
                    if r["setting"] == setting.name and r["quality"] == quality
                )
            out.append(entry)
    return out


def stats(photos: list[dict[str, Any]], setting: str, quality: int) -> dict[str, Any]:
    rows = [r for p in photos for r in p["rows"] if r["setting"] == setting and r["quality"] == quality]
    input_bytes = sum(p["bytes"] for p in photos)
    megapixels = sum(p["pixels"] for p in photos) / 1e6
    entry = {
        "photos": len(rows),
        "bytes": sum(r["bytes"] for r in rows),
        "share_of_input": sum(r["bytes"] for r in rows) / input_bytes,
        "ssim": sum(r["ssim"] for r in rows) / len(rows),
        "seconds": sum(r["seconds"] for r in rows),
        "seconds_per_mp": sum(r["seconds"] for r in rows) / megapixels,
    }
    if all("chroma_ssim" in r for r in rows):
        entry["chroma_ssim"] = sum(r["chroma_ssim"] for r in rows) / len(rows)
    return entry


def bytes_at_ssim(points: list[tuple[float, int]], target: float) -> tuple[float | None, bool]:
    """Interpolate log(bytes) against log(1 - SSIM) at `target` (extrapolating from the nearest
    segment outside the measured range); returns (bytes, extrapolated)."""
    usable = sorted((math.log(max(1e-9, 1 - s)), math.log(b)) for s, b in points)
    if len(usable) < 2:
        return None, False
    x = math.log(max(1e-9, 1 - target))
    index = 0
    while index < len(usable) - 2 and x > usable[index + 1][0]:
        index += 1
    (x0, y0), (x1, y1) = usable[index], usable[index + 1]
    extrapolated = not usable[0][0] <= x <= usable[-1][0]
    if x1 == x0:
        return math.exp(y0), extrapolated
    return math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0)), extrapolated


def equal_ssim(summary: list[dict[str, Any]], settings: list[Setting]) -> dict[str, dict[str, Any]]:
    """Per setting: bytes and encode time at the SSIM the current choice reaches at quality 80."""
    result = {}
    for fmt in {s.fmt for s in settings}:
        current = next(
            (e for e in summary if e["fmt"] == fmt and e["current"] and e["quality"] == REFERENCE_QUALITY),
            None,
        )
        if current is None:
            continue
        for setting in (s for s in settings if s.fmt == fmt):
            entries = [e for e in summary if e["setting"] == setting.name]
            needed, extrapolated = bytes_at_ssim([(e["ssim"], e["bytes"]) for e in entries], current["ssim"])
            q80 = next((e for e in entries if e["quality"] == REFERENCE_QUALITY), entries[0])
            result[setting.name] = {
                "reference_ssim": current["ssim"],
                "bytes_at_equal_ssim": round(needed) if needed else None,
                "vs_current": needed / current["bytes"] - 1 if needed else None,
                "extrapolated": extrapolated,
                "seconds_q80_vs_current": q80["seconds"] / current["seconds"] if current["seconds"] else None,
            }
    return result


def plot(summary: list[dict[str, Any]], path) -> Any:
    """Bytes (% of input) against luma SSIM at qualities 70/80/90, one line per setting: a panel
    for WebP methods, one for AVIF speeds, stacked in one PNG."""
    from PIL import Image

    palette = [
        (200, 30, 30),
        (240, 150, 20),
        (30, 80, 200),
        (90, 170, 90),
        (130, 60, 160),
        (20, 160, 170),
        (0, 0, 0),
    ]
    panels = []
    for fmt, label in (("webp", "WebP method"), ("avif", "AVIF speed")):
        names = list(dict.fromkeys(e["setting"] for e in summary if e["fmt"] == fmt))
        if not names:
            continue
        series = []
        for i, name in enumerate(names):
            entries = sorted((e for e in summary if e["setting"] == name), key=lambda e: e["ssim"])
            points = [(e["ssim"], e["share_of_input"] * 100) for e in entries]
            series.append(Series(name, points, palette[i % len(palette)], markers=True))
        ssims = [x for s in series for x, _ in s.points]
        shares = [y for s in series for _, y in s.points]
        panel = path.with_name(f"{path.stem}-{fmt}.png")
        line_plot(
            panel,
            f"{label}: output bytes against luma SSIM at q70, q80, q90 on the real photos "
            "(lower and further right is better)",
            series,
            "mean luma SSIM against the decoded source",
            "% of the input bytes",
            size=(1000, 420),
            x_range=(math.floor(min(ssims) * 200) / 200, math.ceil(max(ssims) * 200) / 200),
            left_range=(math.floor(min(shares) / 10) * 10, math.ceil(max(shares) / 10) * 10),
        )
        panels.append(panel)
    images = [Image.open(panel) for panel in panels]
    sheet = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    y = 0
    for image in images:
        sheet.paste(image, (0, y))
        y += image.height
    sheet.save(path)
    for panel in panels:
        panel.unlink()
    return path


JPEG_CODING = [
    "baseline, no optimize, 4:2:0",
    "optimize, 4:2:0",
    "progressive, 4:2:0",
    "optimize+progressive, 4:2:0",
]
JPEG_SUBSAMPLING = [
    "optimize+progressive, 4:2:0",
    "optimize+progressive, 4:2:2",
    "optimize+progressive, 4:4:4",
]


def print_jpeg(photos: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two tables: entropy coding options (identical pixels) and chroma subsampling by the source's."""
    coding, rows = [], []
    for quality in (80, 90):
        base = stats(photos, JPEG_CODING[0], quality)
        for name in JPEG_CODING:
            entry = {"setting": name, "quality": quality, **stats(photos, name, quality)}
            entry["vs_baseline"] = entry["bytes"] / base["bytes"] - 1
            coding.append(entry)
            rows.append(
                [
                    name,
                    quality,
                    f"{entry['share_of_input']:.1%}",
                    f"{entry['vs_baseline']:+.1%}",
                    f"{entry['seconds_per_mp']:.3f}",
                ]
            )
    print("\nJPEG entropy coding (4:2:0; the decoded pixels are identical, only bytes and time differ)")
    print(table(["setting", "q", "bytes / input", "bytes vs baseline", "encode s / MP"], rows))

    subsampling, rows = [], []
    groups = {
        "4:2:0 sources": [p for p in photos if p["source_subsampling"] == "4:2:0"],
        "4:4:4 and 4:2:2 sources": [p for p in photos if p["source_subsampling"] in ("4:4:4", "4:2:2")],
    }
    for group, members in groups.items():
        if not members:
            continue
        for quality in (80, 90, 95):
            base = stats(members, JPEG_SUBSAMPLING[0], quality)
            for name in JPEG_SUBSAMPLING:
                entry = {"sources": group, "photos": len(members), "setting": name, "quality": quality}
                entry.update(stats(members, name, quality))
                entry["bytes_vs_420"] = entry["bytes"] / base["bytes"] - 1
                subsampling.append(entry)
                rows.append(
                    [
                        f"{group} ({len(members)})",
                        name.split(", ")[1],
                        quality,
                        f"{entry['share_of_input']:.1%}",
                        f"{entry['bytes_vs_420']:+.1%}",
                        f"{entry['ssim']:.4f}",
                        f"{entry['chroma_ssim']:.4f}",
                    ]
                )
    print("\nJPEG chroma subsampling (optimize + progressive), by the source's own subsampling")
    print(
        table(
            [
                "sources",
                "subsampling",
                "q",
                "bytes / input",
                "bytes vs 4:2:0",
                "SSIM (luma)",
                "SSIM (chroma)",
            ],
            rows,
        )
    )
    return coding, subsampling


def print_speed_table(fmt: str, summary: list[dict[str, Any]], compared: dict[str, dict[str, Any]]) -> None:
    rows = []
    for e in (e for e in summary if e["fmt"] == fmt):
        c = compared.get(e["setting"], {})
        at_equal = ""
        if e["quality"] == REFERENCE_QUALITY and c.get("vs_current") is not None:
            at_equal = f"{c['vs_current']:+.1%}" + (" (extrapolated)" if c["extrapolated"] else "")
        time_ratio = f"{c['seconds_q80_vs_current']:.2f}x" if e["quality"] == REFERENCE_QUALITY else ""
        rows.append(
            [
                e["setting"],
                e["quality"],
                f"{e['share_of_input']:.1%}",
                f"{e['ssim']:.4f}",
                f"{e['seconds_per_mp']:.3f}",
                time_ratio,
                at_equal,
            ]
        )
    label = {"webp": "WebP method", "avif": "AVIF speed (one encoder thread)"}[fmt]
    print(f"\n{label}: bytes at the current choice's q80 luma SSIM, relative to the current choice")
    print(
        table(
            [
                "setting",
                "q",
                "bytes / input",
                "SSIM (luma)",
                "encode s / MP",
                "time vs current",
                "bytes at equal SSIM",
            ],
            rows,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--formats", default="jpeg,webp,avif")
    parser.add_argument("--avif-speeds", default="4,6,8,10")
    parser.add_argument("--photos", type=int, default=None, help="only the first N photos")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    if np is None:
        print("numpy is needed for SSIM: pip install numpy", file=sys.stderr)
        return 1
    photos = real_photos(limit=args.photos)
    if not photos:
        print(f"no photos in {OPENCV_DATA}: apt-get install opencv-doc", file=sys.stderr)
        return 1
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    settings = settings_for(formats, [int(s) for s in args.avif_speeds.split(",") if s.strip()])
    info = machine()
    print(f"machine: {describe_machine(info)}; load average {load_average()}", flush=True)
    started = time.monotonic()
    with ProcessPoolExecutor(args.jobs) as pool:
        largest_first = sorted(photos.items(), key=lambda item: -len(item[1]))
        futures = [pool.submit(measure_photo, name, data, settings) for name, data in largest_first]
        measured = sorted((future.result() for future in futures), key=lambda photo: photo["name"])
    wall = time.monotonic() - started
    summary = aggregate(measured, settings)
    compared = equal_ssim(summary, settings)
    corpus = {
        "source": f"tests.corpus.real_photos(): Debian opencv-doc sample photographs in {OPENCV_DATA}",
        "photos": len(measured),
        "megapixels": round(sum(p["pixels"] for p in measured) / 1e6, 2),
        "bytes": sum(p["bytes"] for p in measured),
    }
    try:
        import skimage

        ssim_impl = f"scikit-image {skimage.__version__}"
    except ImportError:
        ssim_impl = "numpy (scikit-image's definition)"

    print(
        f"\nCodec settings on {corpus['photos']} real photos ({corpus['megapixels']} MP, "
        f"{corpus['bytes']:,} bytes of JPEG) — {describe_machine(info)}; SSIM: {ssim_impl}; {wall:.0f} s"
    )
    report: dict[str, Any] = {}
    if "jpeg" in formats:
        report["jpeg_coding"], report["jpeg_subsampling"] = print_jpeg(measured)
    for fmt in (f for f in formats if f != "jpeg"):
        print_speed_table(fmt, summary, compared)
    checks = [e for e in summary if e.get("current")]
    same = all(e["product_equals_bare"] for e in checks)
    print(f"\ncodec.encode gives the bare encoder's bytes for the current choices: {same}")
    report = {
        **report,
        "machine": info,
        "corpus": corpus,
        "ssim": ssim_impl,
        "reference": f"the current choice's luma SSIM at quality {REFERENCE_QUALITY}",
        "wall_seconds": round(wall, 1),
        "load_average_after": load_average(),
        "summary": summary,
        "equal_ssim": compared,
        "product_equals_bare": same,
        "photos": measured,
    }
    path = write_json("codec_defaults.json", report)
    png = plot(summary, RESULTS / "codec_defaults.png") if {"webp", "avif"} & set(formats) else None
    print(f"\nwrote {path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
