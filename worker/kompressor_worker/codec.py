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

import dataclasses
import functools
import io
import re
import threading
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageCms, ImageFile, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

from kompressor import inputs
from kompressor.crd import WEB_INPUT_FORMATS, Format, InputFormat, Limits, Output
from kompressor_worker import memory, never_larger
from kompressor_worker import quality as auto

# Pillow format id -> the input format it is.
_SOURCE_FORMATS = {
    "JPEG": InputFormat.jpeg,
    "MPO": InputFormat.jpeg,
    "PNG": InputFormat.png,
    "WEBP": InputFormat.webp,
    "GIF": InputFormat.gif,
    "TIFF": InputFormat.tiff,
    "AVIF": InputFormat.avif,
    "BMP": InputFormat.bmp,
    "TGA": InputFormat.tga,
    "ICO": InputFormat.ico,
    "PPM": InputFormat.pnm,
    "JPEG2000": InputFormat.jpeg2000,
    "PSD": InputFormat.psd,
    "HEIF": InputFormat.heif,
}
_KEEP = {
    InputFormat.jpeg: Format.jpeg,
    InputFormat.png: Format.png,
    InputFormat.webp: Format.webp,
    InputFormat.avif: Format.avif,
    InputFormat.heif: Format.jpeg,
    InputFormat.jpeg2000: Format.jpeg,
}
_LOSSY = frozenset({Format.jpeg, Format.webp, Format.avif})
_PILLOW_FORMAT = {Format.jpeg: "JPEG", Format.webp: "WEBP", Format.avif: "AVIF", Format.png: "PNG"}

# Orientation tag value -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})

_ORIENTATION = ExifTags.Base.Orientation
_XMP_ORIENTATION = (
    re.compile(rb'tiff:Orientation="[0-9]"'),
    re.compile(rb"<tiff:Orientation>[0-9]</tiff:Orientation>"),
)
_XMP_UPRIGHT = (b'tiff:Orientation="1"', b"<tiff:Orientation>1</tiff:Orientation>")

JPEG_FULL_CHROMA_FROM_QUALITY = 90
# Chroma subsampling by name, as Pillow's JPEG encoder numbers it.
_JPEG_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
_JPEG_SUBSAMPLING_NAME = {number: name for name, number in _JPEG_SUBSAMPLING.items()}
WEBP_METHOD = 4
AVIF_SPEED = 6
AVIF_THREADS = 1
RESIZE_REDUCING_GAP = 3.0
WHITE = 255
# Extra bytes per output pixel that automatic quality needs: two float32 luma planes, a decoded
# candidate (4 bytes per pixel in Pillow), its float conversion, the encoded candidates, and for the
# chroma check two float32 planes (Cb, Cr) and a candidate's YCbCr. Measured peak over a fixed
# quality on a 12 MP picture: +26 (JPEG) and +31 (WebP); +17 and +23 before the chroma check.
AUTO_QUALITY_BYTES_PER_PIXEL = 32

# Pages of a TIFF examined at most. Pillow's `n_frames` walks every page and compares each with all
# those seen before (quadratic: 40,000 pages took 12.6 s, before any limit applied); only the first
# page is encoded, and the count only has to tell one page from several.
TIFF_PAGES_COUNTED = 256

# Pillow's decoder settings are module globals: set per call, restored after, one call at a time.
_PILLOW_GLOBALS = threading.Lock()


REASONS = frozenset(
    {
        "empty_input",
        "decode_error",
        "unsupported_format",
        "too_many_pixels",
        "too_much_memory",
        "encode_error",
    }
)


class CodecError(Exception):
    """An input that cannot become an output; `reason` is one of REASONS, a machine-readable word."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple[type[CodecError], tuple[str, str]]:
        # Crosses process boundaries (the worker's pool) intact.
        return (CodecError, (self.reason, self.message))


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


@dataclass(frozen=True)
class Prepared:
    """An input decoded and made ready for its output format: encode it as often as needed."""

    image: Image.Image  # upright, resized, in a mode the output format takes
    format: Format  # the concrete output format (keep resolved)
    source_format: InputFormat
    source_size: tuple[int, int]  # width, height as stored in the input
    icc_profile: bytes | None
    exif: bytes | None  # None when stripped or absent
    xmp: bytes | None  # None when stripped or absent
    frames: int
    resized: bool
    reoriented: bool
    source_has_metadata: bool  # the input carries EXIF or XMP
    # A JPEG source kept at its size: its chroma subsampling (Pillow's 0 = 4:4:4, 1 = 4:2:2,
    # 2 = 4:2:0), which a JPEG output does not exceed; None otherwise.
    source_subsampling: int | None = None


# --- public API -----------------------------------------------------------------------------------


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
    if output.target_ssim is not None and prepared.format in _LOSSY:
        chosen = choose_quality(prepared, output.target_ssim)
        quality, ssim, reason, attempts = chosen.quality, chosen.ssim, chosen.reason, chosen.attempts
        encoded = chosen.data
        if prepared.format is Format.jpeg and jpeg_measures_exactly():
            # Measured with a baseline encode: the same pixels; now the bytes we store.
            encoded = _encode_prepared(prepared, quality, chosen.subsampling)
    else:
        quality = output.effective_quality
        encoded = _encode_prepared(prepared, quality)
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
        quality=quality if prepared.format in _LOSSY else None,
        stored_original=False,
        frames=prepared.frames,
        ssim=ssim,
        reason=reason,
        attempts=attempts,
        chroma_ssim=None if chosen is None else chosen.chroma,
        subsampling=None if chosen is None else chosen.subsampling,
    )


def choose_quality(prepared: Prepared, floor: float) -> auto.Choice:
    """Automatic quality for a prepared lossy output: the search of `quality.py` with this format's
    bounds, measuring JPEG with baseline encodes when they decode to the stored encode's pixels.
    `Choice.data` is then a baseline JPEG: encode `Choice.quality` again to store it."""
    if prepared.format not in _LOSSY:
        raise ValueError(f"automatic quality needs a lossy format, not {prepared.format.value}")
    measure_only = prepared.format is Format.jpeg and jpeg_measures_exactly()

    def encoder(image: Image.Image, quality: int, subsampling: str) -> bytes:
        if image is prepared.image and not measure_only:
            return _encode_prepared(prepared, quality, subsampling)
        return encode(
            image,
            prepared.format,
            quality,
            None,
            measure_only=measure_only,
            source_subsampling=prepared.source_subsampling,
            subsampling=subsampling,
        )

    settings = auto.SEARCH[prepared.format]
    if prepared.format is Format.jpeg and prepared.source_subsampling is not None:
        # No more chroma than the source has (see `encode`): offer only what the encoder will do.
        source = prepared.source_subsampling
        kept = (_JPEG_SUBSAMPLING_NAME[max(_JPEG_SUBSAMPLING[s], source)] for s in settings.subsamplings)
        settings = dataclasses.replace(settings, subsamplings=tuple(dict.fromkeys(kept)))
    return auto.choose_quality(prepared.image, floor, encoder, settings)


@functools.cache
def jpeg_measures_exactly() -> bool:
    """Whether a baseline JPEG (no optimize, no progressive) decodes to exactly the pixels of our
    optimized progressive JPEG at the same quality. True with libjpeg-turbo (entropy coding is
    lossless); checked once per process on a small synthetic image at both subsamplings."""
    ramp = Image.linear_gradient("L").resize((64, 48))
    stripes = ramp.point(lambda v: v * 37 % 256)  # sharp edges: every coefficient counts
    disc = Image.radial_gradient("L").resize((64, 48))
    image = Image.merge("RGB", (stripes, disc, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    for quality in (50, JPEG_FULL_CHROMA_FROM_QUALITY):
        measured = encode(image, Format.jpeg, quality, None, measure_only=True)
        stored = encode(image, Format.jpeg, quality, None)
        with Image.open(io.BytesIO(measured)) as a, Image.open(io.BytesIO(stored)) as b:
            if a.tobytes() != b.tobytes():
                return False
    return True


def _encode_prepared(prepared: Prepared, quality: int, subsampling: str | None = None) -> bytes:
    return encode(
        prepared.image,
        prepared.format,
        quality,
        prepared.icc_profile,
        exif=prepared.exif,
        xmp=prepared.xmp,
        source_subsampling=prepared.source_subsampling,
        subsampling=subsampling,
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


def resolve_format(fmt: Format, source_format: str) -> Format:
    """The concrete output format: `keep` becomes the input's format when it is an output format,
    JPEG for the other photo codecs (HEIF, JPEG 2000), else PNG."""
    if fmt is Format.keep:
        return _KEEP.get(InputFormat(source_format), Format.png)
    return fmt


def fit_inside(size: tuple[int, int], max_width: int | None, max_height: int | None) -> tuple[int, int]:
    """The largest size with `size`'s aspect ratio inside the box; never larger than `size`."""
    width, height = size
    scale = 1.0
    if max_width is not None:
        scale = min(scale, max_width / width)
    if max_height is not None:
        scale = min(scale, max_height / height)
    if scale >= 1.0:
        return width, height
    new_width = max(1, min(width, round(width * scale)))
    new_height = max(1, min(height, round(height * scale)))
    if max_width is not None:
        new_width = min(new_width, max_width)
    if max_height is not None:
        new_height = min(new_height, max_height)
    return new_width, new_height


def prepare(
    data: bytes,
    output: Output,
    limits: Limits,
    memory_budget_bytes: int | None = None,
    allowed_input_formats: Collection[InputFormat] = WEB_INPUT_FORMATS,
    needs: MemoryEstimate | None = None,
) -> Prepared:
    """Identify and decode the input within the limits, then orient, resize and convert it for the
    output format. Raises CodecError (never anything else) when the input cannot be used.
    `needs`: what the memory budget is checked against, instead of one output's `estimate_memory`
    (renditions admit the whole set they make from this decode)."""
    if not data:
        raise CodecError("empty_input", "the input is empty (0 bytes)")
    try:
        with _pillow_limits(limits.max_pixels):
            return _prepare(bytes(data), output, limits, memory_budget_bytes, allowed_input_formats, needs)
    except CodecError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "too many pixels"
        raise CodecError(
            "too_many_pixels", f"the image has {size}, more than maxPixels ({limits.max_pixels})"
        ) from None
    except MemoryError:
        raise CodecError("too_much_memory", "decoding the image ran out of memory") from None
    except Exception as exc:
        raise CodecError("decode_error", f"the image cannot be decoded: {_describe(exc)}") from None


def encode(
    image: Image.Image,
    fmt: Format,
    quality: int,
    icc_profile: bytes | None,
    *,
    exif: bytes | None = None,
    xmp: bytes | None = None,
    measure_only: bool = False,
    source_subsampling: int | None = None,
    subsampling: str | None = None,
) -> bytes:
    """Encode `image` once as `fmt` (not keep) at `quality` with our encoder settings.

    `image` should come from `prepare` for the same format; other modes are converted as `prepare`
    would. Raises CodecError("encode_error") when the encoder refuses (e.g. WebP beyond 16383 px).
    `measure_only`: for JPEG a baseline encode without optimize or progressive (same pixels, more
    bytes, ~5x faster), to measure a quality rather than to store it; other formats are unchanged.
    `source_subsampling`: a JPEG output keeps no more chroma than this (see `Prepared`).
    `subsampling` ("4:2:0", "4:2:2", "4:4:4"; JPEG and AVIF): the chroma subsampling automatic
    quality chose, instead of the fixed-quality rule (JPEG) or the encoder's default (AVIF).
    """
    if fmt is Format.keep:
        raise ValueError("encode needs a concrete format; resolve keep with resolve_format first")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")
    try:
        image = _fit_mode(image, fmt)
        params = _encoder_params(image, fmt, quality, source_subsampling, subsampling)
        if measure_only and fmt is Format.jpeg:
            params.update(optimize=False, progressive=False)
        if icc_profile and _icc_matches(icc_profile, image.mode):
            params["icc_profile"] = icc_profile
        else:
            params["icc_profile"] = None
        if exif:
            params["exif"] = exif
        if xmp:
            if fmt is Format.png:
                info = PngImagePlugin.PngInfo()
                info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"))
                params["pnginfo"] = info
            else:
                params["xmp"] = xmp
        buffer = io.BytesIO()
        try:
            image.save(buffer, _PILLOW_FORMAT[fmt], **params)
        except OSError:
            if fmt is not Format.jpeg or not (params.get("optimize") or params.get("progressive")):
                raise
            # Pillow holds a whole optimized or progressive JPEG in one buffer of max(64 KiB, w*h)
            # bytes (2*w*h from q95); noisy pictures at high quality need more ("Suspension not
            # allowed here"). Retry once with room for the worst case.
            buffer = io.BytesIO()
            with _jpeg_buffer(image, params):
                image.save(buffer, _PILLOW_FORMAT[fmt], **params)
        return buffer.getvalue()
    except MemoryError:
        raise CodecError("too_much_memory", f"encoding {fmt.value} ran out of memory") from None
    except Exception as exc:
        raise CodecError(
            "encode_error",
            f"the {fmt.value} encoder refused the {image.width}x{image.height} image: {_describe(exc)}",
        ) from None


MemoryEstimate = Callable[[tuple[int, int], str, tuple[int, int]], int]
"""Bytes to decode an image of (size, mode) and make its outputs from a prepared `target` size."""


def derive(prepared: Prepared, output: Output, size: tuple[int, int]) -> Prepared:
    """Another output of one decode: `prepared` (upright, in a PNG mode) at `size` (no larger) for
    `output`'s format and metadata policy, as `prepare` would have made it from the input."""
    image, icc = prepared.image, prepared.icc_profile
    fmt = resolve_format(output.format, prepared.source_format)
    resized = prepared.resized or size != image.size
    if image.mode in ("P", "1") and (fmt is not Format.png or resized):
        image, icc = _to_8bit(image, icc)  # a palette resizes with NEAREST only
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=RESIZE_REDUCING_GAP)
    image = _fit_mode(image, fmt)
    keep = not output.strip_metadata
    return dataclasses.replace(
        prepared,
        image=image,
        format=fmt,
        icc_profile=icc if icc is not None and _icc_matches(icc, image.mode) else None,
        exif=prepared.exif if keep else None,
        xmp=prepared.xmp if keep else None,
        resized=resized,
        source_subsampling=None if resized else prepared.source_subsampling,
    )


def estimate_memory(
    size: tuple[int, int], mode: str, target: tuple[int, int], auto_quality: bool = False, *, fmt: Format
) -> int:
    """Bytes needed to decode an image of `size` and `mode`, bring it to `target` and encode it as
    `fmt`: the decoded image, one 4-byte-per-pixel working copy (mode conversion), the resized
    result and the encoder's working memory (measured: `memory.py`); with `auto_quality`, also what
    the quality search holds per output pixel and the full-size outputs it keeps."""
    width, height = size
    decoded = width * height * _bytes_per_pixel(mode)
    working = width * height * 4
    resized = target[0] * target[1] * 4
    encoder = memory.encoder_memory(fmt, target)
    search = 0
    if auto_quality:
        held = auto.SEARCH[fmt].max_full * memory.output_memory(fmt, target)
        search = target[0] * target[1] * AUTO_QUALITY_BYTES_PER_PIXEL + held
    return decoded + working + resized + encoder + search


# --- decoding -------------------------------------------------------------------------------------


@contextmanager
def _pillow_limits(max_pixels: int) -> Iterator[None]:
    """Pillow's bomb check at our limit (its warning an error), truncated images refused."""
    with _PILLOW_GLOBALS, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data" and the like: not our outcome
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS = max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


@contextmanager
def _jpeg_buffer(image: Image.Image, params: dict[str, object]) -> Iterator[None]:
    """Pillow's minimum encoder buffer (`ImageFile.MAXBLOCK`) raised for one JPEG save: 2 bytes per
    pixel and band (random noise at q100 4:4:4 takes 1.0) plus the metadata; restored after, under
    the same lock as decoding."""
    metadata = sum(len(v) for k, v in params.items() if k in ("icc_profile", "exif", "xmp") and v)
    needed = 2 * image.width * image.height * len(image.getbands()) + metadata + 65536
    with _PILLOW_GLOBALS:
        saved = ImageFile.MAXBLOCK
        ImageFile.MAXBLOCK = max(saved, needed)
        try:
            yield
        finally:
            ImageFile.MAXBLOCK = saved


def _open(
    data: bytes, limits: Limits, allowed_input_formats: Collection[InputFormat]
) -> tuple[ImageFile.ImageFile, InputFormat]:
    accepted = inputs.accepted(limits.input_formats, allowed_input_formats)
    if InputFormat.heif in accepted:
        _register_heif()
    # MPO is no plugin of its own: Pillow's JPEG plugin opens it.
    plugins = [name for name, fmt in _SOURCE_FORMATS.items() if fmt in accepted and name != "MPO"]
    try:
        image = Image.open(io.BytesIO(data), formats=plugins)
    except UnidentifiedImageError:
        other = _identify_any(data)
        if other is None:
            raise CodecError("decode_error", "the input is not an image in any format Pillow knows") from None
        found = _SOURCE_FORMATS.get(other, other)
        message = inputs.refusal(found, limits.input_formats, allowed_input_formats)
        raise CodecError("unsupported_format", message) from None
    return image, _SOURCE_FORMATS[image.format or ""]


def _identify_any(data: bytes) -> str | None:
    """Pillow's name of the format of an image our plugins refused, from its header only (HEIF by
    its brand when pillow-heif is not registered); None if none knows it."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            return other.format or "unknown"
    except Exception:
        return "HEIF" if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS else None


# ISO BMFF major brands of HEIF files (AVIF's `avif`/`avis` are Pillow's own AVIF plugin's).
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})


@functools.cache
def _register_heif() -> None:
    """pillow-heif's HEIF plugin, registered with Pillow once per process, only when a job accepts
    HEIF: Pillow's `formats=` filter still keeps it from any input of a job that does not."""
    from pillow_heif import register_heif_opener

    # One decoder thread: the worker runs one process per CPU (as AVIF_THREADS).
    register_heif_opener(thumbnails=False, depth_images=False, aux_images=False, decode_threads=1)


def _prepare(
    data: bytes,
    output: Output,
    limits: Limits,
    memory_budget_bytes: int | None,
    allowed_input_formats: Collection[InputFormat],
    needs: MemoryEstimate | None = None,
) -> Prepared:
    image, source_format = _open(data, limits, allowed_input_formats)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise CodecError(
            "too_many_pixels",
            f"the image is {width}x{height} = {width * height} pixels, more than maxPixels "
            f"({limits.max_pixels})",
        )
    fmt = resolve_format(output.format, source_format)
    frames = _count_frames(image, source_format)

    # A PNG's EXIF may follow its pixels, and Pillow decodes the whole image to look for it: read
    # the orientation only after the budget check then. Other formats carry it in the header.
    exif_in_header = source_format != "png" or _png_exif_seen(image)
    exif = _safe_exif(image) if exif_in_header else None
    orientation = _orientation(exif)
    box = output.resize.max_width, output.resize.max_height
    target = _stored_target((width, height), orientation, *box)

    if target != (width, height) and source_format == "jpeg":
        image.draft(None, target)  # decode at 1/2, 1/4 or 1/8 scale, never below the target

    if memory_budget_bytes is not None:
        # Unknown orientation: budget for the larger of the two possible targets.
        targets = [target] if exif_in_header else [_stored_target((width, height), o, *box) for o in (1, 6)]
        searching = output.target_ssim is not None and fmt in _LOSSY
        estimate = needs or functools.partial(estimate_memory, auto_quality=searching, fmt=fmt)
        needed = max(estimate(image.size, image.mode, t) for t in targets)
        if needed > memory_budget_bytes:
            raise CodecError(
                "too_much_memory",
                f"decoding the {width}x{height} {image.mode} image and encoding it as {fmt.value} needs "
                f"about {needed} bytes, more than this worker's budget of {memory_budget_bytes} bytes",
            )

    image.load()  # the full decode: truncated data fails here

    if not exif_in_header:
        exif = _safe_exif(image)
        orientation = _orientation(exif)
        target = _stored_target((width, height), orientation, *box)
    resized = target != (width, height)
    sampling = JpegImagePlugin.get_sampling(image) if source_format == "jpeg" and not resized else -1
    icc = image.info.get("icc_profile") or None
    xmp = _source_xmp(image)
    exif_bytes = _source_exif_bytes(image)
    source_has_metadata = bool(exif_bytes or xmp)
    transparency = image.info.get("transparency")

    keep_palette = fmt is Format.png and not resized and image.mode in ("P", "1")
    if keep_palette:
        pixels: Image.Image = image
    else:
        pixels, icc = _to_8bit(image, icc)
    if resized and pixels.size != target:
        pixels = pixels.resize(target, Image.Resampling.LANCZOS, reducing_gap=RESIZE_REDUCING_GAP)
    if orientation != 1:
        pixels = pixels.transpose(_TRANSPOSE[orientation])
    pixels = _fit_mode(pixels, fmt)
    # Only what the encoder must see stays in info: metadata is passed to `encode` explicitly.
    pixels.info = {"transparency": transparency} if pixels.mode == "P" and transparency is not None else {}

    if icc is not None and not _icc_matches(icc, pixels.mode):
        icc = None
    keep_metadata = not output.strip_metadata
    return Prepared(
        image=pixels,
        format=fmt,
        source_format=source_format,
        source_size=(width, height),
        icc_profile=icc,
        exif=_upright_exif(exif, exif_bytes) if keep_metadata and exif_bytes else None,
        xmp=_upright_xmp(xmp) if keep_metadata and xmp else None,
        frames=frames,
        resized=resized,
        reoriented=orientation != 1,
        source_has_metadata=source_has_metadata,
        source_subsampling=sampling if sampling >= 0 else None,
    )


def _count_frames(image: ImageFile.ImageFile, source_format: InputFormat) -> int:
    """Frames in the input, a TIFF's pages counted up to TIFF_PAGES_COUNTED; the first selected.
    A PSD's "frames" are its layers: the flattened composite it opens at is its one frame."""
    if source_format is InputFormat.psd:
        return 1
    if source_format is InputFormat.tiff:
        frames = 1
        while frames < TIFF_PAGES_COUNTED:
            try:
                image.seek(frames)
            except EOFError:
                break
            frames += 1
    else:
        frames = max(1, int(getattr(image, "n_frames", 1) or 1))
    if frames > 1:
        image.seek(0)
    return frames


def _png_exif_seen(image: Image.Image) -> bool:
    """An eXIf chunk before the pixels: Pillow then reads it without decoding the image."""
    return "exif" in image.info


def _orientation(exif: Image.Exif | None) -> int:
    orientation = exif.get(_ORIENTATION, 1) if exif is not None else 1
    return orientation if orientation in _TRANSPOSE else 1


def _stored_target(
    size: tuple[int, int], orientation: int, max_width: int | None, max_height: int | None
) -> tuple[int, int]:
    """The resize target in stored coordinates: the box applies to the image as shown."""
    width, height = size
    if orientation in _SWAPS_AXES:
        shown_width, shown_height = fit_inside((height, width), max_width, max_height)
        return shown_height, shown_width
    return fit_inside((width, height), max_width, max_height)


def _safe_exif(image: Image.Image) -> Image.Exif | None:
    """The image's EXIF, or None when there is none or it is unreadable (a broken EXIF block does
    not make the pixels unusable)."""
    try:
        return image.getexif()
    except Exception:
        return None


def _source_exif_bytes(image: Image.Image) -> bytes | None:
    """Raw EXIF carried by JPEG, PNG, WebP and AVIF inputs; TIFF tags are not EXIF and are not kept."""
    if image.format == "TIFF":
        return None
    raw = image.info.get("exif")
    if isinstance(raw, bytes) and raw:
        return raw
    if "Raw profile type exif" in image.info:
        try:
            data = image.getexif().tobytes()
        except Exception:
            return None
        return data or None
    return None


def _source_xmp(image: Image.Image) -> bytes | None:
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = image.info.get(key)
        if isinstance(value, str) and value:
            return value.encode("utf-8")
        if isinstance(value, bytes) and value:
            return value
    return None


def _upright_exif(exif: Image.Exif | None, raw: bytes) -> bytes | None:
    """EXIF to keep: the input's, with the orientation reset to 1 (the pixels are upright now)."""
    if exif is None:
        return None
    if exif.get(_ORIENTATION, 1) == 1:
        return raw
    try:
        exif[_ORIENTATION] = 1
        return exif.tobytes()
    except Exception:
        return None


def _upright_xmp(xmp: bytes) -> bytes:
    for pattern, upright in zip(_XMP_ORIENTATION, _XMP_UPRIGHT, strict=True):
        xmp = pattern.sub(upright, xmp)
    return xmp


# --- modes ----------------------------------------------------------------------------------------


def _bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel in Pillow's memory layout (RGB, LA, CMYK... use 4, 8-bit single bands 1)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _to_8bit(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """One of L, LA, RGB, RGBA (8 bits per channel), and the ICC profile that still applies."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image, icc
    if mode == "1":
        return image.convert("L"), icc
    if mode == "P":
        has_alpha = "transparency" in image.info or (
            image.palette is not None and image.palette.mode == "RGBA"
        )
        return image.convert("RGBA" if has_alpha else "RGB"), icc
    if mode == "PA":
        return image.convert("RGBA"), icc
    if mode in ("La",):
        return image.convert("LA"), icc
    if mode in ("RGBa",):
        return image.convert("RGBA"), icc
    if mode == "CMYK":
        return _cmyk_to_rgb(image, icc)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _grey_to_8bit(image), icc
    if mode in ("RGBX", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB"), None if mode in ("LAB", "HSV") else icc
    return image.convert("RGBA" if "A" in mode else "RGB"), None


def _cmyk_to_rgb(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """Through the input's CMYK profile to sRGB when it has a usable one; else Pillow's formula."""
    if icc is not None and _icc_colour_space(icc) == b"CMYK":
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
            if converted is not None:
                return converted, None
        except Exception:
            pass
    return image.convert("RGB"), None


def _grey_to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey to L, scaled from its value range (not clipped)."""
    if image.mode.startswith("I;16"):
        return image.convert("I").point(lambda v: v * (1 / 257)).convert("L")
    low, high = image.getextrema()
    if image.mode == "F" and low >= 0 and high <= 1.0:
        scale, offset = 255.0, 0.0
    elif low >= 0 and high <= 255:
        scale, offset = 1.0, 0.0
    elif low >= 0 and high <= 65535:
        scale, offset = 1 / 257, 0.0
    elif high > low:
        scale = 255.0 / (high - low)
        offset = -low * scale
    else:
        return Image.new("L", image.size, 0)
    grey = image if image.mode == "F" else image.convert("F")
    return grey.point(lambda v: v * scale + offset).convert("L")


def _flatten(image: Image.Image) -> Image.Image:
    """Composite an image with alpha on white, dropping the alpha band."""
    base_mode = "L" if image.mode == "LA" else "RGB"
    background = Image.new(base_mode, image.size, WHITE if base_mode == "L" else (WHITE,) * 3)
    background.paste(image.convert(base_mode), mask=image.getchannel("A"))
    return background


def _fit_mode(image: Image.Image, fmt: Format) -> Image.Image:
    """A mode the output format takes: jpeg L/RGB (alpha flattened on white); webp and avif
    RGB/RGBA; png L, LA, RGB, RGBA, or P and 1 kept as they are."""
    mode = image.mode
    if fmt is Format.png:
        if mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
            return image
        image, _ = _to_8bit(image, None)
        return image
    if mode not in ("L", "LA", "RGB", "RGBA"):
        image, _ = _to_8bit(image, None)
        mode = image.mode
    if fmt is Format.jpeg:
        return _flatten(image) if mode in ("LA", "RGBA") else image
    if mode == "L":
        return image.convert("RGB")
    if mode == "LA":
        return image.convert("RGBA")
    return image


def _icc_colour_space(icc: bytes) -> bytes:
    return icc[16:20] if len(icc) >= 20 else b""


def _icc_matches(icc: bytes, mode: str) -> bool:
    """A profile fits the pixels: GRAY for L/LA (and 1/P greys are not tagged), RGB for colour."""
    space = _icc_colour_space(icc)
    if mode in ("L", "LA", "1"):
        return space == b"GRAY"
    if mode in ("RGB", "RGBA", "P"):
        return space == b"RGB "
    return False


# --- encoding -------------------------------------------------------------------------------------


def _encoder_params(
    image: Image.Image,
    fmt: Format,
    quality: int,
    source_subsampling: int | None = None,
    subsampling: str | None = None,
) -> dict[str, object]:
    if fmt is Format.jpeg:
        if subsampling is None:
            sampling = 0 if quality >= JPEG_FULL_CHROMA_FROM_QUALITY else 2
        else:
            sampling = _JPEG_SUBSAMPLING[subsampling]
        return {
            "quality": quality,
            "optimize": True,
            "progressive": True,
            "subsampling": max(sampling, source_subsampling or 0),
        }
    if fmt is Format.webp:
        return {"quality": quality, "method": WEBP_METHOD}
    if fmt is Format.avif:
        params: dict[str, object] = {"quality": quality, "speed": AVIF_SPEED, "max_threads": AVIF_THREADS}
        if subsampling is not None:
            params["subsampling"] = subsampling
        return params
    params = {"optimize": True}
    if image.mode == "P" and "transparency" in image.info:
        params["transparency"] = image.info["transparency"]
    return params


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
