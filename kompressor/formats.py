"""The output formats: each one's file extension and content type, and what `format: keep` stores.

One table, read by the output key (messages.py), the codec (which format it encodes) and the
worker's PUT (the Content-Type). It must never import anything beyond the contract.
"""

from __future__ import annotations

from kompressor.crd import Format, InputFormat

EXTENSIONS = {Format.jpeg: ".jpg", Format.webp: ".webp", Format.avif: ".avif", Format.png: ".png"}

# By the name of the format stored: an output format, or an input's own when neverLarger keeps it
# (Format and InputFormat are str enums: a plain name finds its entry too).
CONTENT_TYPES: dict[str, str] = {
    Format.jpeg: "image/jpeg",
    Format.webp: "image/webp",
    Format.avif: "image/avif",
    Format.png: "image/png",
    InputFormat.gif: "image/gif",
    InputFormat.tiff: "image/tiff",
}

# `keep` re-encodes JPEG, PNG, WebP and AVIF in their own format, the other photo codecs (HEIF,
# JPEG 2000) as JPEG, and everything else (GIF, TIFF, the opt-in lossless formats) as PNG.
_KEPT = {
    InputFormat.jpeg: Format.jpeg,
    InputFormat.png: Format.png,
    InputFormat.webp: Format.webp,
    InputFormat.avif: Format.avif,
    InputFormat.heif: Format.jpeg,
    InputFormat.jpeg2000: Format.jpeg,
}


def kept(source: InputFormat) -> Format:
    """The output format `format: keep` stores an input of `source` format in."""
    return _KEPT.get(source, Format.png)


# The file extensions of the inputs that `keep` stores in another format: their output keys take
# the stored format's extension instead of their own.
_RENAMED_EXTENSIONS = {
    InputFormat.gif: (".gif",),
    InputFormat.tiff: (".tif", ".tiff"),
    InputFormat.bmp: (".bmp",),
    InputFormat.tga: (".tga",),
    InputFormat.ico: (".ico",),
    InputFormat.psd: (".psd",),
    InputFormat.pnm: (".ppm", ".pgm", ".pbm", ".pnm"),
    InputFormat.heif: (".heic", ".heif", ".hif"),
    InputFormat.jpeg2000: (".jp2", ".j2k", ".jpx", ".jpf", ".j2c"),
}
KEEP_EXTENSIONS = {
    extension: EXTENSIONS[kept(source)]
    for source, extensions in _RENAMED_EXTENSIONS.items()
    for extension in extensions
}
"""A lower-case input file extension -> the extension of what `keep` stores for it; an extension
not listed is kept as it is."""
