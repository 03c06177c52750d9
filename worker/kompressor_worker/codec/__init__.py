"""The image codec: one input's bytes in, one output's bytes out (Pillow).

What it is for: turn the bytes of one input image into the bytes to store, following a job's
`Output` settings (format, quality, resize box, metadata, neverLarger) within its `Limits`
(`maxPixels`) and the worker process's memory budget. Every way an input can go wrong ends as a
`CodecError` whose `reason` is one machine-readable word; no other exception escapes `compress`
but `never_larger.NotSmaller`, when neverLarger stores nothing.

What it must never do: I/O of any kind (files, network, subprocesses), logging set-up, reading
settings or the environment, or changing Pillow's global state at import. It is pure: the same bytes
and settings give the same output bytes.

Pipeline: `prepare` (identify, check limits from the header, decode, 8-bit mode, resize, orient)
then `encode` (one encoder run with our settings). They are separate so that automatic quality
(`output.targetSSIM`, the search in `quality.py`) prepares once and encodes many times.

Choices, documented once here:

- Inputs: the formats the job accepts within the installation's maximum (`kompressor.inputs`): by
  default the web set, JPEG (including MPO), PNG, WebP, GIF, TIFF and AVIF; opt-in BMP, TGA, ICO,
  PPM/PGM/PBM, JPEG 2000, PSD (its flattened composite; layers are not frames) and HEIC/HEIF
  (pillow-heif, registered with Pillow the first time a job accepts it; it applies the orientation
  and hands over the ICC profile, so both follow the same policy as JPEG's). Another format Pillow
  recognises fails with `unsupported_format` and a message naming the setting that would allow it.
  Bytes that no Pillow plugin identifies at all (an HTML error page saved as `.jpg`, random bytes)
  fail with `decode_error`: the input is broken, not merely of a format we refuse. Only the accepted
  formats' plugins ever decode pixels; the others only parse a header to name the format.
- Limits come from the header, before any pixel is decoded: width × height above `maxPixels` fails
  with `too_many_pixels` (Pillow's own bomb check runs with the same limit and its warning is an
  error), and the estimated memory to decode, prepare and encode it (each encoder's working memory
  measured: `memory.py`) above `memory_budget_bytes` with `too_much_memory`.
  Truncated inputs fail with `decode_error` (Pillow's `LOAD_TRUNCATED_IMAGES` is forced off while
  decoding). While decoding, Pillow's `MAX_IMAGE_PIXELS` and `LOAD_TRUNCATED_IMAGES` are set for the
  call and restored after it, under a lock; the worker runs one task per process, so the lock is
  never contended there.
- Animated inputs (GIF, WebP, AVIF sequences; multi-page TIFF): the first frame only becomes the
  output; `Compressed.frames` tells how many frames the input had (a TIFF's pages are counted up
  to `TIFF_PAGES_COUNTED`: Pillow's count of them takes quadratic time).
- `format: keep` re-encodes JPEG, PNG, WebP and AVIF in their own format; GIF, TIFF, BMP, TGA,
  ICO, PNM and PSD become PNG (lossless like their source, and a format every browser shows); HEIF
  and JPEG 2000, photo codecs, become JPEG. `Compressed.format` always names
  the format actually stored.
- Orientation: the EXIF orientation is applied to the pixels; outputs carry no orientation other
  than 1. The resize box applies to the image as displayed (after orientation).
- Resize: fit inside maxWidth × maxHeight keeping the aspect ratio, never upscale. A JPEG being
  shrunk is decoded at 1/2, 1/4 or 1/8 scale first (`Image.draft`, never below the target), then
  resized with LANCZOS and `reducing_gap=3.0`.
- Modes: everything is brought to 8 bits per channel: 16-bit and 32-bit grey (I;16, I, F) are
  scaled to 0..255 from their value range, never clipped; palette images become RGB or RGBA (when
  they carry transparency); CMYK becomes RGB through its ICC profile when it has one (the output
  then carries no profile, i.e. sRGB), else by Pillow's plain conversion (the CMYK profile, if any,
  is dropped: it describes CMYK, not the RGB output). Alpha is kept for WebP, AVIF and PNG and
  flattened on white for JPEG. A PNG output of a palette or 1-bit input that needs no resize keeps
  its palette or bit depth.
- ICC profile: kept (passed explicitly to the encoder) when its colour space matches the output's
  (a grey profile is dropped when the output becomes RGB, and vice versa).
- Metadata: with `stripMetadata` EXIF and XMP are dropped. Without it, EXIF (orientation reset to
  1) and XMP are kept for every output format; TIFF inputs keep none (their tags are not EXIF).
- Encoders: JPEG optimize + progressive, chroma subsampling 4:2:0 below quality 90 and 4:4:4 from 90
  (at high quality the colour detail is what the user pays for), but never more chroma than a JPEG
  source kept at its size has (a 4:2:0 photo at q90 in 4:4:4 costs ~22 % more bytes for a chroma
  SSIM no better: bench/codec_defaults.py); WebP method 4; AVIF speed 6 with
  one encoder thread (the worker runs one process per CPU; speed 8 would be ~2.5x faster for ~4%
  more bytes at the same quality on the photo corpus); PNG optimize (zlib level 9: measured ~1.4x
  the time of the default level for ~1% smaller files on photos).
- Automatic quality (`targetSSIM`, JPEG/WebP/AVIF): `quality.choose_quality` searches for the
  lowest quality whose output keeps luma SSIM ≥ the floor against the prepared image (the source
  after orientation, resize and mode conversion: what a viewer would see without compression loss),
  within per-format bounds (`quality.SEARCH`: 30..95 for all three) and an encode budget, and the
  chroma subsampling (JPEG and AVIF: 4:2:0, else 4:4:4 — for a JPEG source kept at its size, no
  more than its own; WebP: 4:2:0 only) whose output keeps chroma SSIM ≥ `quality.CHROMA_FLOOR`
  instead of the fixed-quality rule above; the stored output's SSIM was measured at full size.
  When even the highest quality misses the floor, the best attempt is stored and
  `Compressed.reason` says `quality_floor_unreachable` (the task still succeeds). JPEG is
  measured with baseline encodes (no optimize, no progressive): libjpeg-turbo decodes them to
  exactly the pixels of the optimized progressive encode, in about a fifth of the time; the chosen
  quality is then encoded once with our settings. A one-time check per process
  (`jpeg_measures_exactly`) falls back to measuring with the stored settings if a build of
  libjpeg ever breaks that identity. The search holds about 32 more bytes per output pixel (luma
  and chroma planes, a decoded candidate) and every full-size output it measured (up to
  `max_full`), counted in the memory estimate.
- Pillow holds a whole optimized or progressive JPEG in one buffer of max(64 KiB, w×h) bytes
  (2×w×h from q95); noisy pictures at q90+ need more and failed with "Suspension not allowed
  here": such a save is retried once with a buffer of 2 bytes per pixel and band.
- neverLarger: the rule and its reasons are `never_larger.py`'s: the encoded result when it is
  smaller than the input, else the input's own bytes when they already are the output asked for
  (`stored_original=True`), else nothing (`NotSmaller`, the task is skipped as `not_smaller`).
  With automatic quality neverLarger applies after the search, to the chosen output: a stored input
  is the source itself, so its SSIM is 1 and the floor is met (`quality` is None and no reason is
  recorded, even when the floor was unreachable by encoding).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from kompressor.crd import WEB_INPUT_FORMATS, Format, InputFormat, Limits, Output
from kompressor_worker import never_larger
from kompressor_worker import quality as auto
from kompressor_worker.codec.autoquality import auto_quality
from kompressor_worker.codec.decoding import (
    AUTO_QUALITY_BYTES_PER_PIXEL,
    RESIZE_REDUCING_GAP,
    TIFF_PAGES_COUNTED,
    MemoryEstimate,
    Prepared,
    derive,
    estimate_memory,
    fit_inside,
    prepare,
    resize_to,
)
from kompressor_worker.codec.encoding import (
    AVIF_SPEED,
    AVIF_THREADS,
    JPEG_FULL_CHROMA_FROM_QUALITY,
    WEBP_METHOD,
    encode,
    encode_prepared,
    jpeg_measures_exactly,
)
from kompressor_worker.codec.errors import REASONS, CodecError
from kompressor_worker.codec.formats import LOSSY, resolve_format

__all__ = [
    "AUTO_QUALITY_BYTES_PER_PIXEL",
    "AVIF_SPEED",
    "AVIF_THREADS",
    "JPEG_FULL_CHROMA_FROM_QUALITY",
    "REASONS",
    "RESIZE_REDUCING_GAP",
    "TIFF_PAGES_COUNTED",
    "WEBP_METHOD",
    "CodecError",
    "Compressed",
    "MemoryEstimate",
    "Prepared",
    "auto_quality",
    "compress",
    "derive",
    "encode",
    "estimate_memory",
    "finish",
    "fit_inside",
    "jpeg_measures_exactly",
    "prepare",
    "resize_to",
    "resolve_format",
]


@dataclass(frozen=True)
class Compressed:
    """What to store: the bytes and what they are."""

    data: bytes
    format: str  # jpeg | webp | avif | png | gif | tiff: the format actually stored
    width: int
    height: int
    quality: int | None  # encoder quality used; None for png and for a stored original
    stored_original: bool  # neverLarger kept the input's bytes
    frames: int  # frames in the input, TIFF pages up to TIFF_PAGES_COUNTED (only the first is encoded)
    ssim: float | None = None  # automatic quality: luma SSIM of what is stored against the source
    reason: str = ""  # automatic quality: quality_floor_unreachable when no quality met the floor
    attempts: tuple[auto.Attempt, ...] = ()  # automatic quality: every encode the search measured
    chroma_ssim: float | None = None  # automatic quality: chroma SSIM (lower of Cb, Cr) of what is stored
    subsampling: str | None = None  # automatic quality: the chroma subsampling it chose (4:2:0, ...)


def compress(
    data: bytes,
    output: Output,
    limits: Limits,
    memory_budget_bytes: int | None = None,
    allowed_input_formats: Collection[InputFormat] = WEB_INPUT_FORMATS,
) -> Compressed:
    """Compress one input following `output`; raise CodecError with a reason when it cannot be.

    With `output.targetSSIM` (a lossy format) the quality is searched per image (see the module
    docstring); otherwise it is `output.effective_quality`. `allowed_input_formats` is the
    installation's maximum, within which `limits.inputFormats` chooses. neverLarger applies to the result
    (`never_larger.decide`), raising `NotSmaller` when it stores nothing.
    """
    prepared = prepare(data, output, limits, memory_budget_bytes, allowed_input_formats)
    return finish(prepared, data, output)


def finish(prepared: Prepared, data: bytes, output: Output) -> Compressed:
    """The output of a prepared input (`data` its bytes): quality (fixed or searched), then neverLarger."""
    ssim: float | None = None
    reason = ""
    attempts: tuple[auto.Attempt, ...] = ()
    chosen: auto.Choice | None = None
    if output.target_ssim is not None and prepared.format in LOSSY:
        chosen = auto_quality(prepared, output.target_ssim)
        quality, ssim, reason, attempts = chosen.quality, chosen.ssim, chosen.reason, chosen.attempts
        encoded = chosen.data
        if prepared.format is Format.jpeg and jpeg_measures_exactly():
            # Measured with a baseline encode: the same pixels; now the bytes we store.
            encoded = encode_prepared(prepared, quality, chosen.subsampling)
    else:
        quality = output.effective_quality
        encoded = encode_prepared(prepared, quality)
    decision = never_larger.decide(output.never_larger, len(data), len(encoded), _as_source(prepared, output))
    if decision.store is never_larger.Store.nothing:
        raise never_larger.NotSmaller(decision.message)
    if decision.store is never_larger.Store.original:
        width, height = prepared.source_size
        return Compressed(
            data=bytes(data),
            format=prepared.source_format,
            width=width,
            height=height,
            quality=None,
            stored_original=True,
            frames=prepared.frames,
            ssim=None if ssim is None else 1.0,
            attempts=attempts,
        )
    return Compressed(
        data=encoded,
        format=prepared.format.value,
        width=prepared.image.width,
        height=prepared.image.height,
        quality=quality if prepared.format in LOSSY else None,
        stored_original=False,
        frames=prepared.frames,
        ssim=ssim,
        reason=reason,
        attempts=attempts,
        chroma_ssim=None if chosen is None else chosen.chroma,
        subsampling=None if chosen is None else chosen.subsampling,
    )


def _as_source(prepared: Prepared, output: Output) -> never_larger.Source:
    return never_larger.Source(
        format=prepared.source_format,
        output_format=prepared.format.value,
        resized=prepared.resized,
        reoriented=prepared.reoriented,
        frames=prepared.frames,
        metadata_to_strip=output.strip_metadata and prepared.source_has_metadata,
    )
