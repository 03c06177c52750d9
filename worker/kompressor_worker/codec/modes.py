"""Pixel modes: any decoded image brought to 8 bits per channel, then to a mode its output format takes."""

from __future__ import annotations

import io

from PIL import Image, ImageCms

from kompressor.crd import Format
from kompressor_worker.codec import metadata

WHITE = 255


def bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel in Pillow's memory layout (RGB, LA, CMYK... use 4, 8-bit single bands 1)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def to_8bit(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
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
    if icc is not None and metadata.icc_colour_space(icc) == b"CMYK":
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


def fit_mode(image: Image.Image, fmt: Format) -> Image.Image:
    """A mode the output format takes: jpeg L/RGB (alpha flattened on white); webp and avif
    RGB/RGBA; png L, LA, RGB, RGBA, or P and 1 kept as they are."""
    mode = image.mode
    if fmt is Format.png:
        if mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
            return image
        image, _ = to_8bit(image, None)
        return image
    if mode not in ("L", "LA", "RGB", "RGBA"):
        image, _ = to_8bit(image, None)
        mode = image.mode
    if fmt is Format.jpeg:
        return _flatten(image) if mode in ("LA", "RGBA") else image
    if mode == "L":
        return image.convert("RGB")
    if mode == "LA":
        return image.convert("RGBA")
    return image
