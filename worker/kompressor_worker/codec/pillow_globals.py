"""Pillow's process-wide settings, changed for one call and restored after it, one call at a time.

The codec never changes Pillow's global state at import; these context managers are the only places
that change it, under one lock (the worker runs one task per process, so it is never contended there).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageFile

# Pillow's decoder settings are module globals: set per call, restored after, one call at a time.
_PILLOW_GLOBALS = threading.Lock()


@contextmanager
def pillow_limits(max_pixels: int) -> Iterator[None]:
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
def jpeg_buffer(image: Image.Image, params: dict[str, object]) -> Iterator[None]:
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
