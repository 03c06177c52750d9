"""Which Pillow format an input is, and which output format and Pillow encoder a job's format becomes."""

from __future__ import annotations

from kompressor.crd import Format, InputFormat
from kompressor.formats import kept

# Pillow format id -> the input format it is.
SOURCE_FORMATS = {
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
LOSSY = frozenset({Format.jpeg, Format.webp, Format.avif})
PILLOW_FORMAT = {Format.jpeg: "JPEG", Format.webp: "WEBP", Format.avif: "AVIF", Format.png: "PNG"}


def resolve_format(fmt: Format, source_format: str) -> Format:
    """The concrete output format: `keep` becomes the input's format when it is an output format,
    JPEG for the other photo codecs (HEIF, JPEG 2000), else PNG."""
    if fmt is Format.keep:
        return kept(InputFormat(source_format))
    return fmt
