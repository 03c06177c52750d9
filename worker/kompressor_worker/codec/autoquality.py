"""Automatic quality for a prepared image: `quality.py`'s search wired to this codec's encoder."""

from __future__ import annotations

import dataclasses

from PIL import Image

from kompressor.crd import Format
from kompressor_worker import quality as auto
from kompressor_worker.codec.decoding import Prepared
from kompressor_worker.codec.encoding import (
    JPEG_SUBSAMPLING,
    JPEG_SUBSAMPLING_NAME,
    encode,
    encode_prepared,
    jpeg_measures_exactly,
)
from kompressor_worker.codec.formats import LOSSY


def auto_quality(prepared: Prepared, floor: float) -> auto.Choice:
    """Automatic quality for a prepared lossy output: the search of `quality.py` with this format's
    bounds, measuring JPEG with baseline encodes when they decode to the stored encode's pixels.
    `Choice.data` is then a baseline JPEG: encode `Choice.quality` again to store it."""
    if prepared.format not in LOSSY:
        raise ValueError(f"automatic quality needs a lossy format, not {prepared.format.value}")
    measure_only = prepared.format is Format.jpeg and jpeg_measures_exactly()

    def encoder(image: Image.Image, quality: int, subsampling: str) -> bytes:
        if image is prepared.image and not measure_only:
            return encode_prepared(prepared, quality, subsampling)
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
        kept = (JPEG_SUBSAMPLING_NAME[max(JPEG_SUBSAMPLING[s], source)] for s in settings.subsamplings)
        settings = dataclasses.replace(settings, subsamplings=tuple(dict.fromkeys(kept)))
    return auto.choose_quality(prepared.image, floor, encoder, settings)
