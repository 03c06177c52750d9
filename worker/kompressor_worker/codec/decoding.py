"""One input's bytes to a `Prepared` image: identify, check the limits from the header, decode, then
orient, resize and convert it for the output format; and the memory that takes."""

from __future__ import annotations

import dataclasses
import functools
import io
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from PIL import Image, ImageFile, JpegImagePlugin, UnidentifiedImageError

from kompressor import inputs
from kompressor.crd import WEB_INPUT_FORMATS, Format, InputFormat, Limits, Output
from kompressor.reasons import Reason
from kompressor_worker import memory
from kompressor_worker import quality as auto
from kompressor_worker.codec import metadata
from kompressor_worker.codec.errors import CodecError, describe
from kompressor_worker.codec.formats import LOSSY, SOURCE_FORMATS, resolve_format
from kompressor_worker.codec.modes import bytes_per_pixel, fit_mode, to_8bit
from kompressor_worker.codec.pillow_globals import pillow_limits

RESIZE_REDUCING_GAP = 3.0

# Extra bytes per output pixel that automatic quality needs: two float32 luma planes, a decoded
# candidate (4 bytes per pixel in Pillow), its float conversion, the encoded candidates, and for the
# chroma check two float32 planes (Cb, Cr) and a candidate's YCbCr. Measured peak over a fixed
# quality on a 12 MP picture: +26 (JPEG) and +31 (WebP); +17 and +23 before the chroma check.
AUTO_QUALITY_BYTES_PER_PIXEL = 32

# Pages of a TIFF examined at most. Pillow's `n_frames` walks every page and compares each with all
# those seen before (quadratic: 40,000 pages took 12.6 s, before any limit applied); only the first
# page is encoded, and the count only has to tell one page from several.
TIFF_PAGES_COUNTED = 256


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
        raise CodecError(Reason.empty_input, "the input is empty (0 bytes)")
    try:
        with pillow_limits(limits.max_pixels):
            return _prepare(bytes(data), output, limits, memory_budget_bytes, allowed_input_formats, needs)
    except CodecError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "too many pixels"
        raise CodecError(
            Reason.too_many_pixels, f"the image has {size}, more than maxPixels ({limits.max_pixels})"
        ) from None
    except MemoryError:
        raise CodecError(Reason.too_much_memory, "decoding the image ran out of memory") from None
    except Exception as exc:
        raise CodecError(Reason.decode_error, f"the image cannot be decoded: {describe(exc)}") from None


MemoryEstimate = Callable[[tuple[int, int], str, tuple[int, int]], int]
"""Bytes to decode an image of (size, mode) and make its outputs from a prepared `target` size."""


def resize_to(prepared: Prepared, size: tuple[int, int]) -> Prepared:
    """`prepared` (upright, in a PNG mode) at `size` (no larger), before any output format's mode:
    what every format of one width shares, so renditions resize once per width; `prepared` itself
    when it has that size."""
    image, icc = prepared.image, prepared.icc_profile
    if size == image.size:
        return prepared
    if image.mode in ("P", "1"):
        image, icc = to_8bit(image, icc)  # a palette resizes with NEAREST only
    image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=RESIZE_REDUCING_GAP)
    return dataclasses.replace(prepared, image=image, icc_profile=icc, resized=True, source_subsampling=None)


def derive(prepared: Prepared, output: Output, size: tuple[int, int]) -> Prepared:
    """Another output of one decode: `prepared` (upright, in a PNG mode) at `size` (no larger) for
    `output`'s format and metadata policy, as `prepare` would have made it from the input.
    `prepared` may already be `resize_to(..., size)`: then nothing is resized again."""
    sized = resize_to(prepared, size)
    image, icc = sized.image, sized.icc_profile
    fmt = resolve_format(output.format, prepared.source_format)
    if image.mode in ("P", "1") and (fmt is not Format.png or sized.resized):
        image, icc = to_8bit(image, icc)
    image = fit_mode(image, fmt)
    keep = not output.strip_metadata
    return dataclasses.replace(
        sized,
        image=image,
        format=fmt,
        icc_profile=icc if icc is not None and metadata.icc_matches(icc, image.mode) else None,
        exif=prepared.exif if keep else None,
        xmp=prepared.xmp if keep else None,
        source_subsampling=None if sized.resized else prepared.source_subsampling,
    )


def estimate_memory(
    size: tuple[int, int], mode: str, target: tuple[int, int], auto_quality: bool = False, *, fmt: Format
) -> int:
    """Bytes needed to decode an image of `size` and `mode`, bring it to `target` and encode it as
    `fmt`: the decoded image, one 4-byte-per-pixel working copy (mode conversion), the resized
    result and the encoder's working memory (measured: `memory.py`); with `auto_quality`, also what
    the quality search holds per output pixel and the full-size outputs it keeps."""
    width, height = size
    decoded = width * height * bytes_per_pixel(mode)
    working = width * height * 4
    resized = target[0] * target[1] * 4
    encoder = memory.encoder_memory(fmt, target)
    search = 0
    if auto_quality:
        held = auto.SEARCH[fmt].max_full * memory.output_memory(fmt, target)
        search = target[0] * target[1] * AUTO_QUALITY_BYTES_PER_PIXEL + held
    return decoded + working + resized + encoder + search


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


def _open(
    data: bytes, limits: Limits, allowed_input_formats: Collection[InputFormat]
) -> tuple[ImageFile.ImageFile, InputFormat]:
    accepted = inputs.accepted(limits.input_formats, allowed_input_formats)
    if InputFormat.heif in accepted:
        _register_heif()
    # MPO is no plugin of its own: Pillow's JPEG plugin opens it.
    plugins = [name for name, fmt in SOURCE_FORMATS.items() if fmt in accepted and name != "MPO"]
    try:
        image = Image.open(io.BytesIO(data), formats=plugins)
    except UnidentifiedImageError:
        other = _identify_any(data)
        if other is None:
            raise CodecError(
                Reason.decode_error, "the input is not an image in any format Pillow knows"
            ) from None
        found = SOURCE_FORMATS.get(other, other)
        message = inputs.refusal(found, limits.input_formats, allowed_input_formats)
        raise CodecError(Reason.unsupported_format, message) from None
    return image, SOURCE_FORMATS[image.format or ""]


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
            Reason.too_many_pixels,
            f"the image is {width}x{height} = {width * height} pixels, more than maxPixels "
            f"({limits.max_pixels})",
        )
    fmt = resolve_format(output.format, source_format)
    frames = _count_frames(image, source_format)

    # A PNG's EXIF may follow its pixels, and Pillow decodes the whole image to look for it: read
    # the orientation only after the budget check then. Other formats carry it in the header.
    exif_in_header = source_format != "png" or metadata.png_exif_seen(image)
    exif = metadata.safe_exif(image) if exif_in_header else None
    orientation = metadata.orientation(exif)
    box = output.resize.max_width, output.resize.max_height
    target = _stored_target((width, height), orientation, *box)

    if target != (width, height) and source_format == "jpeg":
        image.draft(None, target)  # decode at 1/2, 1/4 or 1/8 scale, never below the target

    if memory_budget_bytes is not None:
        # Unknown orientation: budget for the larger of the two possible targets.
        targets = [target] if exif_in_header else [_stored_target((width, height), o, *box) for o in (1, 6)]
        searching = output.target_ssim is not None and fmt in LOSSY
        estimate = needs or functools.partial(estimate_memory, auto_quality=searching, fmt=fmt)
        needed = max(estimate(image.size, image.mode, t) for t in targets)
        if needed > memory_budget_bytes:
            raise CodecError(
                Reason.too_much_memory,
                f"decoding the {width}x{height} {image.mode} image and encoding it as {fmt.value} needs "
                f"about {needed} bytes, more than this worker's budget of {memory_budget_bytes} bytes",
            )

    image.load()  # the full decode: truncated data fails here

    if not exif_in_header:
        exif = metadata.safe_exif(image)
        orientation = metadata.orientation(exif)
        target = _stored_target((width, height), orientation, *box)
    resized = target != (width, height)
    sampling = JpegImagePlugin.get_sampling(image) if source_format == "jpeg" and not resized else -1
    icc = image.info.get("icc_profile") or None
    xmp = metadata.source_xmp(image)
    exif_bytes = metadata.source_exif_bytes(image)
    source_has_metadata = bool(exif_bytes or xmp)
    transparency = image.info.get("transparency")

    keep_palette = fmt is Format.png and not resized and image.mode in ("P", "1")
    if keep_palette:
        pixels: Image.Image = image
    else:
        pixels, icc = to_8bit(image, icc)
    if resized and pixels.size != target:
        pixels = pixels.resize(target, Image.Resampling.LANCZOS, reducing_gap=RESIZE_REDUCING_GAP)
    if orientation != 1:
        pixels = pixels.transpose(metadata.TRANSPOSE[orientation])
    pixels = fit_mode(pixels, fmt)
    # Only what the encoder must see stays in info: metadata is passed to `encode` explicitly.
    pixels.info = {"transparency": transparency} if pixels.mode == "P" and transparency is not None else {}

    if icc is not None and not metadata.icc_matches(icc, pixels.mode):
        icc = None
    keep_metadata = not output.strip_metadata
    return Prepared(
        image=pixels,
        format=fmt,
        source_format=source_format,
        source_size=(width, height),
        icc_profile=icc,
        exif=metadata.upright_exif(exif, exif_bytes) if keep_metadata and exif_bytes else None,
        xmp=metadata.upright_xmp(xmp) if keep_metadata and xmp else None,
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


def _stored_target(
    size: tuple[int, int], orientation: int, max_width: int | None, max_height: int | None
) -> tuple[int, int]:
    """The resize target in stored coordinates: the box applies to the image as shown."""
    width, height = size
    if orientation in metadata.SWAPS_AXES:
        shown_width, shown_height = fit_inside((height, width), max_width, max_height)
        return shown_height, shown_width
    return fit_inside((width, height), max_width, max_height)
