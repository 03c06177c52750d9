"""One encoder run: a prepared image to the bytes of one output format, with our encoder settings."""

from __future__ import annotations

import functools
import io
from typing import TYPE_CHECKING

from PIL import Image, PngImagePlugin

from kompressor.crd import Format
from kompressor.reasons import Reason
from kompressor_worker.codec import metadata
from kompressor_worker.codec.errors import CodecError, describe
from kompressor_worker.codec.formats import PILLOW_FORMAT
from kompressor_worker.codec.modes import fit_mode
from kompressor_worker.codec.pillow_globals import jpeg_buffer

if TYPE_CHECKING:
    from kompressor_worker.codec.decoding import Prepared


JPEG_FULL_CHROMA_FROM_QUALITY = 90

# Chroma subsampling by name, as Pillow's JPEG encoder numbers it.
JPEG_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
JPEG_SUBSAMPLING_NAME = {number: name for name, number in JPEG_SUBSAMPLING.items()}
WEBP_METHOD = 4
AVIF_SPEED = 6
AVIF_THREADS = 1


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
        image = fit_mode(image, fmt)
        params = _encoder_params(image, fmt, quality, source_subsampling, subsampling)
        if measure_only and fmt is Format.jpeg:
            params.update(optimize=False, progressive=False)
        if icc_profile and metadata.icc_matches(icc_profile, image.mode):
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
            image.save(buffer, PILLOW_FORMAT[fmt], **params)
        except OSError:
            if fmt is not Format.jpeg or not (params.get("optimize") or params.get("progressive")):
                raise
            # Pillow holds a whole optimized or progressive JPEG in one buffer of max(64 KiB, w*h)
            # bytes (2*w*h from q95); noisy pictures at high quality need more ("Suspension not
            # allowed here"). Retry once with room for the worst case.
            buffer = io.BytesIO()
            with jpeg_buffer(image, params):
                image.save(buffer, PILLOW_FORMAT[fmt], **params)
        return buffer.getvalue()
    except MemoryError:
        raise CodecError(Reason.too_much_memory, f"encoding {fmt.value} ran out of memory") from None
    except Exception as exc:
        raise CodecError(
            Reason.encode_error,
            f"the {fmt.value} encoder refused the {image.width}x{image.height} image: {describe(exc)}",
        ) from None


def encode_prepared(prepared: Prepared, quality: int, subsampling: str | None = None) -> bytes:
    """`encode` of a prepared image at `quality`, with the metadata it keeps."""
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
            sampling = JPEG_SUBSAMPLING[subsampling]
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
