"""SSIM: how alike an encoded candidate is to the image it encodes, on luma and on chroma.

What it is for: automatic quality (`quality.py`) measures every candidate with it.

What it must never do: I/O, logging, reading settings (pure: the same planes give the same value).

SSIM (`ssim`, `Reference`): scikit-image's `structural_similarity` with its defaults (7×7 uniform
window, sample covariance, K1 = 0.01, K2 = 0.03, the mean over every window that fits inside the
image) with data range 255, on luma: BT.601 (0.299 R + 0.587 G + 0.114 B) as unrounded float, alpha
composited on white first (the picture a viewer sees on a white page). float32, in strips of rows
(memory: the two luma planes plus a few strips); within 2e-6 of scikit-image 0.26 (checked in
tests/unit/test_quality.py). Planes smaller than the window are edge-padded to 7 px.

Chroma (`chroma`, `Target`): luma SSIM cannot see chroma subsampling (4:2:0 halves the colour
resolution and leaves luma alone), so each measurement also takes the same SSIM on the JPEG Cb
and Cr planes (BT.601 full range as Pillow converts them, rounded; alpha on white) at the
output's size, and keeps the lower of the two. `quality.CHROMA_FLOOR` (0.95) is its own floor, not the
luma one: JPEG 4:2:0 at q90 keeps 0.97-0.9999 on 21 of the 24 photographs of the corpus, while
fine saturated colour keeps much less (the mandrill's fur 0.80, Van Gogh's strokes 0.85, fruits
0.93; red text on blue ~0.5) and 4:4:4 keeps ≥ 0.96 on all of them. A grey image has no chroma:
its chroma SSIM is 1.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# SSIM: scikit-image's structural_similarity defaults.
WINDOW = 7
K1 = 0.01
K2 = 0.03
DATA_RANGE = 255.0
STRIP_ROWS = 192  # rows of windows per strip: bounds the float32 temporaries


def luma(image: Image.Image) -> np.ndarray:
    """BT.601 luma as float32 (0..255, unrounded), alpha composited on white; any Pillow mode."""
    mode = image.mode
    if mode not in ("L", "LA", "RGB", "RGBA"):
        has_alpha = "A" in mode or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    if mode in ("L", "RGB"):
        # Pillow's RGB -> F is L = 0.299 R + 0.587 G + 0.114 B in float, unrounded.
        return np.asarray(image.convert("F"), dtype=np.float32)
    pixels = np.asarray(image, dtype=np.float32)
    if mode == "LA":
        y, alpha = pixels[..., 0], pixels[..., 1]
    else:
        y = pixels[..., 0] * np.float32(0.299) + pixels[..., 1] * np.float32(0.587)
        y += pixels[..., 2] * np.float32(0.114)
        alpha = pixels[..., 3]
    alpha *= np.float32(1 / 255)
    return y * alpha + np.float32(255.0) * (np.float32(1.0) - alpha)


def _ycbcr(image: Image.Image) -> Image.Image | None:
    """JPEG's YCbCr (BT.601 full range, Pillow's conversion, rounded), alpha composited on white;
    None for a grey image."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return None
    if "A" in image.mode or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return image.convert("YCbCr")


def _plane(ycbcr: Image.Image, band: int) -> np.ndarray:
    return np.asarray(ycbcr.getchannel(band), dtype=np.float32)


def chroma(image: Image.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """Cb and Cr (see `_ycbcr`) as float32 planes; None for a grey image."""
    ycbcr = _ycbcr(image)
    return None if ycbcr is None else (_plane(ycbcr, 1), _plane(ycbcr, 2))


def decode_luma(data: bytes) -> np.ndarray:
    """The luma of an encoded image (first frame), as a viewer's decoder would show it."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return luma(image)


def ssim(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean SSIM of two luma planes of the same shape (scikit-image's defaults, data range 255)."""
    return Reference(reference).ssim(candidate)


def _pad_to_window(plane: np.ndarray) -> np.ndarray:
    pad_rows, pad_cols = max(0, WINDOW - plane.shape[0]), max(0, WINDOW - plane.shape[1])
    if pad_rows or pad_cols:
        return np.pad(plane, ((0, pad_rows), (0, pad_cols)), mode="edge")
    return plane


def _box_sums(plane: np.ndarray) -> np.ndarray:
    """Sums over every WINDOW x WINDOW window that fits (a 'valid' box filter), float32."""
    rows = plane.shape[0] - WINDOW + 1
    acc = plane[:rows].copy()
    for i in range(1, WINDOW):
        acc += plane[i : rows + i]
    cols = plane.shape[1] - WINDOW + 1
    out = acc[:, :cols].copy()
    for j in range(1, WINDOW):
        out += acc[:, j : cols + j]
    return out


class Reference:
    """A luma plane that candidates are measured against. With `keep_rows`/`keep_cols` (boolean
    masks over window positions: a window counts when its top-left row and column are kept) the
    mean is over those windows only. With `cache`, the plane's window sums are kept after the first
    measurement (for a plane measured many times, like the probe's: 8 more bytes per pixel)."""

    def __init__(
        self,
        plane: np.ndarray,
        keep_rows: np.ndarray | None = None,
        keep_cols: np.ndarray | None = None,
        cache: bool = False,
    ):
        self.shape = plane.shape
        self.plane = _pad_to_window(np.asarray(plane, dtype=np.float32))
        self.keep_rows = keep_rows
        self.keep_cols = keep_cols
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def _sums(self, start: int, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and start in self._cache:
            return self._cache[start]
        xs = self.plane[rows]
        sums = _box_sums(xs), _box_sums(xs * xs)
        if self._cache is not None:
            self._cache[start] = sums
        return sums

    def ssim(self, candidate: np.ndarray) -> float:
        """Mean SSIM of `candidate` (a luma plane of the same shape) against this reference."""
        if candidate.shape != self.shape:
            raise ValueError(f"shapes differ: {self.shape} vs {candidate.shape}")
        x = self.plane
        y = _pad_to_window(np.asarray(candidate, dtype=np.float32))
        n = WINDOW * WINDOW
        c1 = (K1 * DATA_RANGE) ** 2
        c2 = (K2 * DATA_RANGE) ** 2
        window_rows = x.shape[0] - WINDOW + 1
        total = 0.0
        count = 0
        for start in range(0, window_rows, STRIP_ROWS):
            stop = min(window_rows, start + STRIP_ROWS)
            rows = slice(start, stop + WINDOW - 1)
            sx, sxx = self._sums(start, rows)
            ys = y[rows]
            sy, syy, sxy = _box_sums(ys), _box_sums(ys * ys), _box_sums(x[rows] * ys)
            # Means are s/n; sample (co)variances (s_ab - s_a s_b / n) / (n - 1), as scikit-image:
            # ((2 mx my + c1)(2 cov + c2)) / ((mx² + my² + c1)(vx + vy + c2)).
            sxsy = sx * sy
            squares = sx * sx
            squares += sy * sy
            sxy -= sxsy / n
            sxy *= 2.0 / (n - 1)
            sxy += c2
            sxsy *= 2.0 / (n * n)
            sxsy += c1
            sxy *= sxsy  # numerator
            syy += sxx
            syy -= squares / n
            syy *= 1.0 / (n - 1)
            syy += c2
            squares *= 1.0 / (n * n)
            squares += c1
            syy *= squares  # denominator
            strip = sxy
            strip /= syy
            if self.keep_rows is not None:
                strip = strip[self.keep_rows[start:stop]]
            if self.keep_cols is not None:
                strip = strip[:, self.keep_cols]
            total += float(strip.sum(dtype=np.float64))
            count += strip.size
        return total / count


class Target:
    """What a candidate encode is measured against: luma and, for a colour image, Cb and Cr (the
    same window masks and caching as `Reference`)."""

    def __init__(
        self,
        image: Image.Image,
        keep_rows: np.ndarray | None = None,
        keep_cols: np.ndarray | None = None,
        cache: bool = False,
    ):
        self.luma = Reference(luma(image), keep_rows, keep_cols, cache)
        planes = chroma(image)
        self.chroma = None
        if planes is not None:
            self.chroma = tuple(Reference(p, keep_rows, keep_cols, cache) for p in planes)

    def measure(self, data: bytes, floor: float | None = None) -> tuple[float, float]:
        """(luma SSIM, chroma SSIM) of an encoded candidate (first frame). With `floor`, chroma
        is measured only when luma SSIM keeps it (else NaN): chroma then decides nothing, and
        it costs twice luma's time."""
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            luma_ssim = self.luma.ssim(luma(image))
            if self.chroma is None:
                return luma_ssim, 1.0
            if floor is not None and luma_ssim < floor:
                return luma_ssim, math.nan
            ycbcr = _ycbcr(image)
            if ycbcr is None:  # a colour image cannot come back grey; if it does, it lost its chroma
                return luma_ssim, 0.0
            # One candidate plane at a time (memory).
            return luma_ssim, min(r.ssim(_plane(ycbcr, band)) for band, r in enumerate(self.chroma, 1))
