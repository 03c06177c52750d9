"""The memory estimate holds: worst-case images, decoded and encoded in a fresh process, peak below it.

Each case runs `bench/encoder_memory.py --measure` (the same child that measured the table in
`kompressor_worker/memory.py`): a synthetic PNG input compressed by `codec.compress`, its peak RSS
above the resident size before the call.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from kompressor.crd import Format, InputFormat, Limits, Output
from kompressor_worker import codec, memory
from kompressor_worker.codec import CodecError, compress

MIB = 2**20
BENCH = Path(__file__).resolve().parents[2] / "bench" / "encoder_memory.py"


def peak_of_compress(fmt: Format, content: str, mode: str, side: int, quality: int, target_ssim=None) -> int:
    spec = {
        "stage": "compress",
        "format": fmt.value,
        "content": content,
        "mode": mode,
        "side": side,
        "quality": quality,
        "target_ssim": target_ssim,
    }
    done = subprocess.run(
        [sys.executable, str(BENCH), "--measure", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])["peak_bytes"]


# Per format the variants that need the most (bench/encoder_memory.py): noise at quality 100 and,
# where it is larger, with alpha; flat pictures where a fixed cost dominates (AVIF), at up to 4000²
# and the review's 8000² AVIF (~7 s of CPU, 1.3 GB).
WORST_CASES = [
    (Format.jpeg, "noisy", "RGB", 2000),
    (Format.jpeg, "noisy", "RGB", 4000),
    (Format.png, "noisy", "RGB", 2000),
    (Format.png, "noisy", "RGBA", 4000),
    (Format.webp, "noisy", "RGBA", 2000),
    (Format.webp, "flat", "RGB", 4000),
    (Format.avif, "noisy", "RGBA", 1500),
    (Format.avif, "flat", "RGB", 4000),
    (Format.avif, "flat", "RGB", 8000),  # the review's case: 1,337 MiB against 732 MiB estimated
]


@pytest.mark.parametrize(("fmt", "content", "mode", "side"), WORST_CASES)
def test_peak_memory_stays_under_the_estimate(fmt: Format, content: str, mode: str, side: int) -> None:
    peak = peak_of_compress(fmt, content, mode, side, quality=100)
    estimate = codec.estimate_memory((side, side), mode, (side, side), fmt=fmt)
    assert peak <= estimate, (
        f"{fmt} {content} {mode} {side}²: {peak / MIB:.0f} MiB > {estimate / MIB:.0f} MiB"
    )


@pytest.mark.parametrize(("fmt", "side"), [(Format.jpeg, 2000), (Format.webp, 2000), (Format.avif, 1000)])
def test_automatic_quality_stays_under_the_estimate(fmt: Format, side: int) -> None:
    # Noise keeps every full-size output the search measured large; it holds them all.
    peak = peak_of_compress(fmt, "noisy", "RGB", side, quality=100, target_ssim=0.99)
    estimate = codec.estimate_memory((side, side), "RGB", (side, side), True, fmt=fmt)
    assert peak <= estimate, f"{fmt} auto {side}²: {peak / MIB:.0f} MiB > {estimate / MIB:.0f} MiB"


def test_the_encoder_is_admitted_with_its_memory() -> None:
    # A 4000² flat PNG encoded to AVIF peaked at 332 MiB; the decode alone was estimated at 183 MiB.
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 4000), (200, 120, 40)).save(buffer, "PNG")
    with pytest.raises(CodecError) as refused:
        compress(buffer.getvalue(), Output(format=Format.avif), Limits(), memory_budget_bytes=332 * MIB)
    assert refused.value.reason == "too_much_memory"


def test_every_format_the_worker_writes_has_a_measured_encoder() -> None:
    written = {codec.resolve_format(Format.keep, source) for source in InputFormat} | (
        set(Format) - {Format.keep}
    )
    assert set(memory.ENCODERS) == written
    assert all(e.bytes_per_pixel > 0 and e.output_bytes_per_pixel > 0 for e in memory.ENCODERS.values())
