"""What each encoder needs while it runs: the encoder's term of the codec's memory estimate.

What it is for: the worker admits an image only when decoding, preparing and encoding it fit the
process's memory budget (`codec.estimate_memory`). The decode side follows from Pillow's layout; the
encoders' working memory (libjpeg's coefficient buffer and Pillow's output buffer, zlib's window
and the growing PNG, libwebp's and libaom's analysis planes) does not, so it is measured and kept
here. Without it an 8000×8000 flat PNG was estimated at 732 MiB and peaked at 1,337 MiB encoded to
AVIF: two such inputs at once exceeded a 2Gi pod.

What it must never do: measure at run time, or depend on content it cannot see before decoding.
Each format's figure is the worst case over content (flat and random noise: noise is the worst for
every encoder), mode (RGB and RGBA) and quality (50 and 100), so it over-counts most images (WebP
of RGB noise: 18 bytes per pixel at q50 and 33 at q100, against 38).

How it was measured (bench/encoder_memory.py; re-run it after upgrading Pillow or its libraries and
copy its table here): each encode in a fresh process, as `codec.encode` with our settings, its
peak RSS (`VmHWM`, reset with /proc/self/clear_refs) above the resident size just before, at 250²,
1000², 2000² and 3000², after freeing a 32 MiB buffer as a worker child that ran an earlier task
has (glibc then grows buffers below 32 MiB on its heap, copying them). Per format: the steepest
least-squares slope of any variant over the sizes, and the largest residue above it, rounded up.
Measured on Pillow 13.0.0 (libjpeg-turbo 3.2.0, libwebp 1.6.0, libavif 1.4.2 with libaom, one
encoder thread), Intel Xeon, Python 3.11.7:

| format | bytes per pixel | constant | largest output per pixel | steepest variant |
|--------|-----------------|----------|--------------------------|------------------|
| jpeg   | 12.5            | 0 MiB    | 3.5                      | noisy RGB q100   |
| png    | 9.0             | 1 MiB    | 4.5                      | noisy RGB        |
| webp   | 38.0            | 11 MiB   | 2.5                      | noisy RGBA q100  |
| avif   | 30.5            | 23 MiB   | 3.5                      | noisy RGBA q100  |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kompressor.crd import Format

MIB = 2**20


@dataclass(frozen=True)
class EncoderMemory:
    """Peak bytes an encoder adds: `bytes_per_pixel` of the encoded image, plus `constant`; and its
    largest output per pixel (what automatic quality keeps of each full-size encode)."""

    bytes_per_pixel: float
    constant: int
    output_bytes_per_pixel: float


# Every format the worker writes (keep resolves to one of them). The table in the docstring.
ENCODERS: dict[Format, EncoderMemory] = {
    Format.jpeg: EncoderMemory(bytes_per_pixel=12.5, constant=0 * MIB, output_bytes_per_pixel=3.5),
    Format.png: EncoderMemory(bytes_per_pixel=9.0, constant=1 * MIB, output_bytes_per_pixel=4.5),
    Format.webp: EncoderMemory(bytes_per_pixel=38.0, constant=11 * MIB, output_bytes_per_pixel=2.5),
    Format.avif: EncoderMemory(bytes_per_pixel=30.5, constant=23 * MIB, output_bytes_per_pixel=3.5),
}


def encoder_memory(fmt: Format, size: tuple[int, int]) -> int:
    """Bytes `fmt`'s encoder adds while encoding an image of `size`, whatever its content."""
    encoder = ENCODERS[fmt]
    return math.ceil(encoder.bytes_per_pixel * size[0] * size[1]) + encoder.constant


def output_memory(fmt: Format, size: tuple[int, int]) -> int:
    """Bytes of the largest `fmt` output of an image of `size`, whatever its content."""
    return math.ceil(ENCODERS[fmt].output_bytes_per_pixel * size[0] * size[1])
