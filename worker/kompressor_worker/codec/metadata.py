"""What an input says about itself beside its pixels: orientation, EXIF, XMP and the ICC profile,
read safely and made upright for the output."""

from __future__ import annotations

import re

from PIL import ExifTags, Image

# Orientation tag value -> the transpose that shows the image upright (as ImageOps.exif_transpose).
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_AXES = frozenset({5, 6, 7, 8})
_ORIENTATION = ExifTags.Base.Orientation
_XMP_ORIENTATION = (
    re.compile(rb'tiff:Orientation="[0-9]"'),
    re.compile(rb"<tiff:Orientation>[0-9]</tiff:Orientation>"),
)
_XMP_UPRIGHT = (b'tiff:Orientation="1"', b"<tiff:Orientation>1</tiff:Orientation>")


def png_exif_seen(image: Image.Image) -> bool:
    """An eXIf chunk before the pixels: Pillow then reads it without decoding the image."""
    return "exif" in image.info


def orientation(exif: Image.Exif | None) -> int:
    """The EXIF orientation (1-8), 1 when there is none or it is not valid."""
    orientation = exif.get(_ORIENTATION, 1) if exif is not None else 1
    return orientation if orientation in TRANSPOSE else 1


def safe_exif(image: Image.Image) -> Image.Exif | None:
    """The image's EXIF, or None when there is none or it is unreadable (a broken EXIF block does
    not make the pixels unusable)."""
    try:
        return image.getexif()
    except Exception:
        return None


def source_exif_bytes(image: Image.Image) -> bytes | None:
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


def source_xmp(image: Image.Image) -> bytes | None:
    """The input's XMP packet as bytes, or None."""
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = image.info.get(key)
        if isinstance(value, str) and value:
            return value.encode("utf-8")
        if isinstance(value, bytes) and value:
            return value
    return None


def upright_exif(exif: Image.Exif | None, raw: bytes) -> bytes | None:
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


def upright_xmp(xmp: bytes) -> bytes:
    """The XMP with its orientation set to 1: the pixels are upright now, as in `upright_exif`."""
    for pattern, upright in zip(_XMP_ORIENTATION, _XMP_UPRIGHT, strict=True):
        xmp = pattern.sub(upright, xmp)
    return xmp


def icc_colour_space(icc: bytes) -> bytes:
    """The colour space an ICC profile declares (its header's bytes 16-20, e.g. b'RGB '), or b''."""
    return icc[16:20] if len(icc) >= 20 else b""


def icc_matches(icc: bytes, mode: str) -> bool:
    """A profile fits the pixels: GRAY for L/LA (and 1/P greys are not tagged), RGB for colour."""
    space = icc_colour_space(icc)
    if mode in ("L", "LA", "1"):
        return space == b"GRAY"
    if mode in ("RGB", "RGBA", "P"):
        return space == b"RGB "
    return False
