"""The test corpus, built in memory: real photographs and awkward inputs.

Used by the unit, integration and end-to-end tests, the benchmarks and the demo, so that they all
exercise the same images. It holds no tests. Everything is deterministic (same bytes on every call
and every machine with the same Pillow) and cached; the public functions return fresh dicts, so a
caller may change what it gets without affecting the others.

- `real_photos()`: the colour photographs shipped by Debian's `opencv-doc` package (JPEG bytes as
  shipped, or downscaled and re-encoded at quality 92 when `max_side` is given).
- `awkward_inputs()`: file name -> (bytes, expected failure reason or None): the inputs that break
  naive image pipelines (EXIF rotation, CMYK, 16-bit, palettes with transparency, animation,
  truncation, non-images, decompression bombs, ...).
"""

from __future__ import annotations

import functools
import gzip
import io
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageCms, ImageDraw

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")

# Pictures in OpenCV's data that are not photographs (renders, logos, text samples).
_NOT_PHOTOS = frozenset(
    {
        "Blender_Suzanne1.jpg",
        "Blender_Suzanne2.jpg",
        "LinuxLogo.jpg",
        "WindowsLogo.jpg",
        "text_defocus.jpg",
        "text_motion.jpg",
    }
)
_MIN_PHOTO_SIDE = 300

# The gigapixel PNG: 40000 x 40000 8-bit grey, all zeros (1.6e9 pixels, ~1.6 MB on disk).
BOMB_SIDE = 40_000

# Geometry of the EXIF-rotated JPEG: stored landscape, shown portrait.
ROTATED_STORED_SIZE = (96, 48)
ORIENTATION_TAG = 0x0112


# --- real photographs -----------------------------------------------------------------------------


def real_photos(limit: int | None = None, max_side: int | None = None) -> dict[str, bytes]:
    """File name -> JPEG bytes of OpenCV's sample photographs, sorted by name.

    Only colour JPEGs whose shorter side is at least 300 px and that are photographs count. With
    `max_side`, each is downscaled to fit a `max_side` square and re-encoded at quality 92 (fast
    tests); without it, the bytes are the files' own. Empty when opencv-doc is not installed.
    """
    photos = _real_photos(max_side)
    if limit is not None:
        photos = photos[:limit]
    return dict(photos)


@functools.lru_cache(maxsize=16)
def _real_photos(max_side: int | None) -> tuple[tuple[str, bytes], ...]:
    found: list[tuple[str, bytes]] = []
    if not OPENCV_DATA.is_dir():
        return ()
    for path in sorted(OPENCV_DATA.iterdir()):
        name = path.name.removesuffix(".gz")
        if not name.lower().endswith((".jpg", ".jpeg")) or name in _NOT_PHOTOS or not path.is_file():
            continue
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode != "RGB" or min(image.size) < _MIN_PHOTO_SIDE:
                continue
            if max_side is not None and max(image.size) > max_side:
                image.draft("RGB", (max_side, max_side))
                small = image.convert("RGB")
                small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                data = _save(small, "JPEG", quality=92)
        found.append((name, data))
    return tuple(found)


# --- awkward inputs -------------------------------------------------------------------------------


def awkward_inputs() -> dict[str, tuple[bytes, str | None]]:
    """File name (with a telling extension) -> (bytes, the CodecError reason expected, or None when
    compressing it must succeed)."""
    return dict(_awkward_inputs())


@functools.lru_cache(maxsize=1)
def _awkward_inputs() -> tuple[tuple[str, tuple[bytes, str | None]], ...]:
    cases: dict[str, tuple[bytes, str | None]] = {
        "exif-rotated-6.jpg": (exif_rotated_jpeg(), None),
        "cmyk.jpg": (_save(_photo_like((80, 60)).convert("CMYK"), "JPEG", quality=90), None),
        "gradient-16bit.png": (gradient_16bit_png(), None),
        "palette-transparent.png": (palette_transparent_png(), None),
        "rgba.png": (_save(rgba_image(), "PNG"), None),
        "grey-alpha.png": (_save(rgba_image().convert("LA"), "PNG"), None),
        "bilevel.png": (_save(_photo_like((64, 48)).convert("1"), "PNG"), None),
        "grey.jpg": (_save(_photo_like((64, 48)).convert("L"), "JPEG", quality=90), None),
        "animated.gif": (animated_gif(), None),
        "progressive.jpg": (
            _save(_photo_like((120, 90)), "JPEG", quality=90, progressive=True, optimize=True),
            None,
        ),
        "icc-srgb.jpg": (_save(_photo_like((64, 48)), "JPEG", quality=90, icc_profile=srgb_icc()), None),
        "image.tiff": (_save(_photo_like((64, 48)), "TIFF", compression="tiff_deflate"), None),
        "float.tiff": (float_tiff(), None),
        "image.webp": (_save(_photo_like((64, 48)), "WEBP", quality=90), None),
        "image.avif": (_save(_photo_like((64, 48)), "AVIF", quality=90), None),
        "image.bmp": (_save(_photo_like((32, 24)), "BMP"), "unsupported_format"),
        "truncated.jpg": (truncated_jpeg(), "decode_error"),
        "empty.jpg": (b"", "empty_input"),
        "not-an-image.jpg": (
            b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
            b"<body><h1>Not Found</h1></body></html>\n",
            "decode_error",
        ),
        "gigapixel.png": (gigapixel_png(), "too_many_pixels"),
    }
    return tuple(cases.items())


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _photo_like(size: tuple[int, int]) -> Image.Image:
    """A deterministic colourful RGB picture: gradients and shapes, so encoders have work to do."""
    width, height = size
    red = Image.linear_gradient("L").resize(size)
    green = Image.linear_gradient("L").rotate(90).resize(size)
    blue = Image.radial_gradient("L").resize(size)
    image = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), outline=(250, 240, 30), width=3)
    draw.line((0, height - 1, width - 1, 0), fill=(20, 20, 200), width=2)
    return image


@functools.lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    """An sRGB ICC profile as bytes, built by LittleCMS."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_rotated_jpeg() -> bytes:
    """Stored 96x48 with EXIF orientation 6 (shown rotated 90° clockwise, i.e. 48x96).

    The stored top-left quarter is red, the rest blue: shown upright, red is the top-right corner.
    """
    image = Image.new("RGB", ROTATED_STORED_SIZE, (0, 0, 255))
    width, height = ROTATED_STORED_SIZE
    image.paste((255, 0, 0), (0, 0, width // 2, height // 2))
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    return _save(image, "JPEG", quality=95, exif=exif.tobytes())


def gradient_16bit_png() -> bytes:
    """A 256x32 16-bit grey PNG, 0 on the left rising to 65535 on the right."""
    width, height = 256, 32
    row = b"".join(struct.pack("<H", x * 257) for x in range(width))
    return _save(Image.frombytes("I;16", (width, height), row * height), "PNG")


def rgba_image() -> Image.Image:
    """64x48 RGBA: the left half fully transparent, the right half opaque colour."""
    image = _photo_like((64, 48)).convert("RGBA")
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, (0, 0, 32, 48))
    image.putalpha(alpha)
    return image


def palette_transparent_png() -> bytes:
    """64x48 palette PNG whose index 0 is transparent: the left half transparent, the right red."""
    image = Image.new("P", (64, 48), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    image.paste(1, (32, 0, 64, 48))
    return _save(image, "PNG", transparency=0)


def animated_gif() -> bytes:
    """Three 40x30 frames: red, green, blue."""
    frames = [Image.new("RGB", (40, 30), colour).convert("P") for colour in ("red", "lime", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def float_tiff() -> bytes:
    """A 64x16 32-bit float grey TIFF, 0.0 on the left rising to 1.0 on the right."""
    width, height = 64, 16
    row = b"".join(struct.pack("<f", x / (width - 1)) for x in range(width))
    return _save(Image.frombytes("F", (width, height), row * height), "TIFF")


def truncated_jpeg() -> bytes:
    """A baseline JPEG cut to 60% of its length (no end-of-image marker)."""
    data = _save(_photo_like((200, 150)), "JPEG", quality=90)
    return data[: len(data) * 6 // 10]


@functools.lru_cache(maxsize=1)
def gigapixel_png() -> bytes:
    """A valid 40000x40000 8-bit grey PNG of zeros: 1.6 gigapixels in about 1.6 MB.

    Its 1.6 GB of scanlines (a zero filter byte and zero pixels each) are never materialised: one
    chunk of rows is deflated with a full flush, which resets the compressor, so every further
    identical chunk deflates to the same bytes; the Adler-32 of n zeros is ((n mod 65521) << 16) | 1.
    """
    side = BOMB_SIDE
    row_bytes = side + 1
    rows_per_chunk = 1000
    assert side % rows_per_chunk == 0
    chunk = bytes(row_bytes * rows_per_chunk)
    compressor = zlib.compressobj(9)
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush(zlib.Z_FINISH)[:-4]  # the final empty block, without its checksum
    total = row_bytes * side
    adler = ((total % 65521) << 16) | 1
    stream = first + repeated * (side // rows_per_chunk - 1) + end + struct.pack(">I", adler)

    def png_chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", stream)
        + png_chunk(b"IEND", b"")
    )


def never_larger_table() -> dict[str, bytes]:
    """Inputs like issue 18's table, whose JPEG (and some other outputs) are larger than them:
    a palette PNG with transparency, an RGBA PNG with a gradient alpha, a 16-bit grey PNG and a
    1x1 RGB PNG."""
    return dict(_never_larger_table())


@functools.lru_cache(maxsize=1)
def _never_larger_table() -> tuple[tuple[str, bytes], ...]:
    shapes = Image.new("RGBA", (400, 300), (0, 0, 0, 0))
    draw = ImageDraw.Draw(shapes)
    for i in range(12):
        draw.ellipse((i * 30, i * 20, i * 30 + 90, i * 20 + 70), fill=(40 * (i % 6), 200 - 15 * i, 90, 255))
    alpha = Image.linear_gradient("L").resize((640, 480))
    gradient = Image.merge("RGBA", (*Image.new("RGB", (640, 480), (30, 120, 200)).split(), alpha))
    grey16 = Image.linear_gradient("L").resize((512, 512)).convert("I").point(lambda v: v * 257)
    return (
        ("palette-transparent-400x300.png", _save(shapes.quantize(16), "PNG", optimize=True)),
        ("rgba-gradient-alpha-640x480.png", _save(gradient, "PNG", optimize=True)),
        ("grey-16bit-512x512.png", _save(grey16.convert("I;16"), "PNG", optimize=True)),
        ("rgb-1x1.png", _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG", optimize=True)),
    )


def layered_psd(composite: Image.Image, layers: tuple[Image.Image, ...] = ()) -> bytes:
    """A Photoshop file, 8-bit RGB, raw (uncompressed) data: the flattened `composite` and full-size
    RGB `layers` (which a flattening reader must ignore). Pillow reads PSD but cannot write it."""
    width, height = composite.size

    def planes(image: Image.Image) -> list[bytes]:
        return [band.tobytes() for band in image.convert("RGB").split()]

    records, channel_data = b"", b""
    for i, layer in enumerate(layers):
        name = f"layer {i}".encode()
        extra = struct.pack(">II", 0, 0) + bytes([len(name)]) + name
        extra += b"\0" * (-len(extra) % 4)
        records += struct.pack(">iiiiH", 0, 0, height, width, 3)
        records += b"".join(struct.pack(">hI", channel, 2 + width * height) for channel in range(3))
        records += b"8BIMnorm" + bytes([255, 0, 0, 0]) + struct.pack(">I", len(extra)) + extra
        channel_data += b"".join(struct.pack(">H", 0) + plane for plane in planes(layer))
    layer_info = struct.pack(">h", len(layers)) + records + channel_data if layers else b""
    layer_info += b"\0" * (len(layer_info) % 2)
    layer_section = struct.pack(">I", len(layer_info)) + layer_info if layers else b""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">I", 0) + struct.pack(">I", 0)  # no colour mode data, no resources
    sections += struct.pack(">I", len(layer_section)) + layer_section
    return header + sections + struct.pack(">H", 0) + b"".join(planes(composite))


def opt_in_inputs() -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, the input format a job must accept for it): one small image in each
    opt-in format, photo-like where the format is lossy."""
    return dict(_opt_in_inputs())


@functools.lru_cache(maxsize=1)
def _opt_in_inputs() -> tuple[tuple[str, tuple[bytes, str]], ...]:
    from pillow_heif import register_heif_opener

    register_heif_opener()  # to write the HEIC sample only; the codec registers it for itself
    photo = _photo_like((64, 48))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((64, 48)))
    return (
        ("image.bmp", (_save(photo, "BMP"), "bmp")),
        ("image.tga", (_save(rgba, "TGA", compression="tga_rle"), "tga")),
        ("image.ico", (_save(rgba, "ICO", sizes=[(48, 48)]), "ico")),
        ("image.ppm", (_save(photo, "PPM"), "pnm")),
        ("image.pgm", (_save(photo.convert("L"), "PPM"), "pnm")),
        ("image.jp2", (_save(photo, "JPEG2000", quality_mode="rates", quality_layers=[20]), "jpeg2000")),
        ("image.psd", (layered_psd(photo, (Image.new("RGB", (64, 48), "blue"),) * 2), "psd")),
        ("image.heic", (_save(photo, "HEIF", quality=80), "heif")),
    )
