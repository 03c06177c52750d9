"""Automatic quality: the lowest encoder quality whose output keeps a luma SSIM floor, with the
chroma subsampling that keeps a chroma SSIM floor.

What it is for: `output.targetSSIM`. Given a prepared image (upright, resized, in the output's
mode) and an encoder `encode(image, quality, subsampling) -> bytes`, find cheaply a quality whose
output, decoded, keeps SSIM ≥ the floor against the image, as low as the search can tell, within
per-format bounds, and the least chroma (the first of `Settings.subsamplings`) that keeps chroma
SSIM ≥ `CHROMA_FLOOR`.

What it must never do: I/O, logging, reading settings; it is pure like the codec (same image, floor
and encoder give the same choice). It never returns an output it has not measured at full size.

SSIM (`ssim`, `Reference`): scikit-image's `structural_similarity` with its defaults (7×7 uniform
window, sample covariance, K1 = 0.01, K2 = 0.03, the mean over every window that fits inside the
image) with data range 255, on luma: BT.601 (0.299 R + 0.587 G + 0.114 B) as unrounded float, alpha
composited on white first (the picture a viewer sees on a white page). float32, in strips of rows
(memory: the two luma planes plus a few strips); within 2e-6 of scikit-image 0.26 (checked in
tests/unit/test_quality.py). Planes smaller than the window are edge-padded to 7 px.

Chroma (`chroma`, `Target`): luma SSIM cannot see chroma subsampling (4:2:0 halves the colour
resolution and leaves luma alone), so each measurement also takes the same SSIM on the JPEG Cb
and Cr planes (BT.601 full range as Pillow converts them, rounded; alpha on white) at the
output's size, and keeps the lower of the two. `CHROMA_FLOOR` (0.95) is its own floor, not the
luma one: JPEG 4:2:0 at q90 keeps 0.97-0.9999 on 21 of the 24 photographs of the corpus, while
fine saturated colour keeps much less (the mandrill's fur 0.80, Van Gogh's strokes 0.85, fruits
0.93; red text on blue ~0.5) and 4:4:4 keeps ≥ 0.96 on all of them. A grey image has no chroma:
its chroma SSIM is 1.

The search (`choose_quality`), on log(1 − SSIM), which is close to linear on an axis per format
(the log of libjpeg's quantiser scaling for JPEG, quality itself for WebP and AVIF):

1. Probe. A mosaic of 32×32 tiles taken on an even grid over the image, a quarter of its area and
   at most `PROBE_MAX_PIXELS`, is encoded at a few qualities; SSIM is averaged over the windows
   that lie inside one tile, so the seams of the mosaic do not count. Tiles sit on multiples of 16
   px, so a JPEG's 8×8 luma blocks are the full image's: the probe's SSIM is the full encode's over
   the same windows (exactly for grey; for colour up to rounding where chroma upsampling crosses a
   tile's edge, ~1e-6), a sample of its SSIM map (off by 0.03 in log(1 − SSIM) at the median on the
   photo corpus, 0.09 at the 90th percentile). For WebP and AVIF (prediction and loop filters cross
   blocks) it is an estimate. It starts from
   the format's typical answer for the floor (`Settings.starts`), then each step aims where a
   piecewise-linear curve through the points measured so far (a typical slope from one point)
   meets the floor — a little past it while only one side is known, at most `max_step` away —
   until the bracket of failing and meeting qualities is `probe_tolerance` wide (≤ `max_probe`).
2. Confirm at full size. The first full-size encode is where the probe's curve meets the floor
   with `first_margin` to spare (so that it usually meets it: one full-size encode per image).
   After a miss, the next is where the probe's curve shifted by the measured offset meets the floor
   with `margin` more per miss. The last encode of the budget (`max_full`) is at the highest
   quality if nothing met yet, so the search always ends with an output that meets the floor or
   with proof that the highest quality does not: then the floor is unreachable and the best attempt
   (highest SSIM) is returned with `reached=False` (reason `quality_floor_unreachable`).
   It does not step below a met quality: the probe already bracketed it, and one more full-size
   encode per image would buy ~2 % bytes on the photo corpus.

Subsampling. Every measurement starts at the first (least chroma, fewest bytes) of the format's
`subsamplings`; when one meets the luma floor but misses the chroma floor, the search moves to the
next for every later measurement (chroma lost to subsampling hardly depends on quality, so one
measurement tells), at full size re-encoding the same quality first. An output counts as meeting
the floor only when it keeps both floors; the last encode of the budget, if nothing met yet, is
at the highest quality and the fullest subsampling.

Images under `PROBE_MIN_PIXELS` skip the probe: the bracketing of phase 1 runs at full size
(`full_tolerance`, ≤ `max_full` encodes, the last at the highest quality if nothing met).

SSIM is not monotonic in quality everywhere (a JPEG source re-encoded at its own quantisation
tables comes back nearly lossless: a spike at the source's quality), so "lowest" is the lowest the
search measured at full size, not a proof that nothing lower meets the floor.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from kompressor.crd import Format

UNREACHABLE = "quality_floor_unreachable"

# Chroma SSIM (the lower of Cb's and Cr's) every output keeps: see the module docstring.
CHROMA_FLOOR = 0.95
SUBSAMPLING_420 = "4:2:0"
SUBSAMPLING_444 = "4:4:4"

# SSIM: scikit-image's structural_similarity defaults.
WINDOW = 7
K1 = 0.01
K2 = 0.03
DATA_RANGE = 255.0
STRIP_ROWS = 192  # rows of windows per strip: bounds the float32 temporaries

# Probe mosaic.
TILE = 32
TILE_ALIGN = 16  # JPEG MCU (4:2:0); 8x8 blocks line up too
PROBE_SHARE = 0.25  # of the image's area
PROBE_MAX_PIXELS = 256 * 1024
PROBE_MIN_PIXELS = 128 * 1024  # smaller images are searched at full size directly

# log(1 - SSIM) is clamped here: SSIM 1.0 (lossless) would be -inf.
_T_FLOOR = math.log(1e-7)

Encoder = Callable[[Image.Image, int, str], bytes]  # (image, quality, subsampling) -> bytes


@dataclass(frozen=True)
class Settings:
    """Bounds, budget and priors of one search (see the module docstring for how they are used).

    `starts` maps floors to a typical answer (interpolated in log(1 − floor)): the first quality
    tried. `slope`: a typical d log(1 − SSIM) per unit of `axis` (positive), to step from a single
    point. `overshoot`, `first_margin` and `margin` are in log(1 − SSIM) (0.1 ≈ 10 % of 1 − SSIM).
    `subsamplings`: the chroma subsamplings the encoder offers, least chroma first."""

    lowest: int
    highest: int
    starts: tuple[tuple[float, int], ...]
    slope: float
    axis: str = "linear"  # jpeg | linear: see _axis
    max_full: int = 4  # full-size encodes
    max_probe: int = 6  # mosaic encodes
    probe_tolerance: int = 5  # the probe stops once its bracket is this narrow
    full_tolerance: int = 2  # the same, for small images searched at full size
    overshoot: float = 0.1  # past the floor, while only one side of it is known
    first_margin: float = 0.05  # the first full-size encode aims this far past the floor
    margin: float = 0.1  # ... and each one after a miss this much further
    max_step: int = 15  # qualities, from the nearest measured point
    subsamplings: tuple[str, ...] = (SUBSAMPLING_420, SUBSAMPLING_444)

    def __post_init__(self) -> None:
        if not 1 <= self.lowest <= self.highest <= 100:
            raise ValueError(f"quality bounds must satisfy 1 <= lowest <= highest <= 100: {self}")
        if not self.starts:
            raise ValueError("starts needs at least one (floor, quality) pair")
        if self.slope <= 0:
            raise ValueError("slope must be positive: log(1 - SSIM) grows with the quantiser step")
        if self.axis not in ("jpeg", "linear"):
            raise ValueError(f"axis must be jpeg or linear, got {self.axis!r}")
        if self.max_full < 1 or self.max_probe < 0:
            raise ValueError("the budget needs at least one full-size encode")
        if not self.subsamplings:
            raise ValueError("subsamplings needs at least one")

    def start(self, floor: float) -> int:
        """The first quality to try for `floor`: the priors interpolated, within the bounds."""
        pairs = sorted((_t(f), q) for f, q in self.starts)
        ts = [t for t, _ in pairs]
        qs = [q for _, q in pairs]
        # np.interp wants increasing x: log(1 - floor) decreases as the floor rises.
        guess = float(np.interp(_t(floor), ts, qs)) if len(pairs) > 1 else float(qs[0])
        return max(self.lowest, min(self.highest, round(guess)))


# Per output format. Bounds: below 30, JPEG and WebP lose colour detail that luma SSIM does not see
# (AVIF's scale differs, but 30 is already poor there too); above 95 bytes grow much faster than
# fidelity (on the photo corpus, JPEG q100 is 2.1x the bytes of q94 for +0.0016 SSIM, WebP 1.4x for
# +0.0028). libwebp's lossy format is 4:2:0 only. `starts`: the median per-image answer on
# tests.corpus.real_photos() fit in 1200 px (AVIF: 4 of them); `slope`: the median d log(1 - SSIM)
# per unit of the axis there, SSIM 0.95-0.997.
SEARCH: dict[Format, Settings] = {
    Format.jpeg: Settings(
        lowest=30,
        highest=95,
        axis="jpeg",
        slope=1.5,
        starts=((0.90, 30), (0.95, 52), (0.97, 66), (0.98, 76), (0.99, 82), (0.995, 85), (0.999, 92)),
    ),
    Format.webp: Settings(
        lowest=30,
        highest=95,
        slope=0.47,
        subsamplings=(SUBSAMPLING_420,),
        starts=((0.90, 30), (0.95, 48), (0.97, 78), (0.98, 85), (0.99, 91), (0.995, 95)),
    ),
    Format.avif: Settings(
        lowest=30,
        highest=95,
        slope=1.0,
        starts=((0.90, 42), (0.95, 52), (0.98, 64), (0.99, 74), (0.995, 82), (0.999, 95)),
    ),
}


@dataclass(frozen=True)
class Attempt:
    quality: int
    ssim: float  # luma
    size: int  # bytes of that encode
    full: bool  # False: an encode of the probe mosaic
    chroma: float = 1.0  # chroma SSIM (the lower of Cb's and Cr's); NaN: not measured (see Target)
    subsampling: str = SUBSAMPLING_420


@dataclass(frozen=True)
class Choice:
    """What the search found. `data` is the full-size encode at `quality` (from the `encode` given)."""

    quality: int
    ssim: float
    data: bytes
    reached: bool  # False: no quality within the bounds met both floors; this is the best attempt
    attempts: tuple[Attempt, ...]
    chroma: float = 1.0
    subsampling: str = SUBSAMPLING_420

    @property
    def reason(self) -> str:
        return "" if self.reached else UNREACHABLE

    @property
    def full_encodes(self) -> int:
        return sum(1 for a in self.attempts if a.full)

    @property
    def probe_encodes(self) -> int:
        return sum(1 for a in self.attempts if not a.full)


# --- luma and SSIM --------------------------------------------------------------------------------


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


# --- the probe mosaic -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    image: Image.Image
    target: Target  # only windows inside one tile count


def _tile_starts(length: int, count: int) -> list[int]:
    """`count` tile origins spread evenly over [0, length - TILE], on multiples of TILE_ALIGN."""
    room = length - TILE
    if count == 1:
        return [room // 2 // TILE_ALIGN * TILE_ALIGN]
    return [(room * i // (count - 1)) // TILE_ALIGN * TILE_ALIGN for i in range(count)]


def build_probe(image: Image.Image) -> _Probe | None:
    """The probe mosaic of `image`, or None when the image is too small for one to pay off."""
    width, height = image.size
    if width * height < PROBE_MIN_PIXELS or width < 2 * TILE or height < 2 * TILE:
        return None
    tiles = int(min(PROBE_MAX_PIXELS, PROBE_SHARE * width * height) // (TILE * TILE))
    across = max(1, min(width // TILE, round(math.sqrt(tiles * width / height))))
    down = max(1, min(height // TILE, tiles // across))
    mosaic = Image.new(image.mode, (across * TILE, down * TILE))
    for row, top in enumerate(_tile_starts(height, down)):
        for col, left in enumerate(_tile_starts(width, across)):
            tile = image.crop((left, top, left + TILE, top + TILE))
            mosaic.paste(tile, (col * TILE, row * TILE))
    if image.mode == "P":
        mosaic.putpalette(image.getpalette() or [])
    keep_rows = (np.arange(down * TILE - WINDOW + 1) % TILE) <= TILE - WINDOW
    keep_cols = (np.arange(across * TILE - WINDOW + 1) % TILE) <= TILE - WINDOW
    return _Probe(mosaic, Target(mosaic, keep_rows, keep_cols, cache=True))


# --- the search -----------------------------------------------------------------------------------


def _t(value: float) -> float:
    """log(1 - SSIM): close to linear in quality over the range that matters."""
    return math.log(max(1.0 - value, math.exp(_T_FLOOR)))


def jpeg_scale(quality: int) -> float:
    """libjpeg's scaling of its base quantisation tables at `quality`, in percent."""
    return 5000.0 / quality if quality < 50 else max(1.0, 200.0 - 2.0 * quality)


def _axis(kind: str, quality: int) -> float:
    """Where a quality sits on the axis that log(1 − SSIM) is close to linear on: the log of the
    quantiser step for JPEG; quality itself (reversed, in tens) for WebP and AVIF."""
    if kind == "jpeg":
        return math.log(jpeg_scale(quality))
    return (100 - quality) / 10


class _Curve:
    """Piecewise-linear log(1 − SSIM) on the settings' axis through measured points (quality ->
    SSIM); beyond the ends it follows the end segment's slope (kept within 1/3..3x the typical
    slope), or the typical slope from a single point."""

    def __init__(self, points: dict[int, float], settings: Settings):
        pairs = sorted((_axis(settings.axis, q), _t(value)) for q, value in points.items())
        self.xs = [x for x, _ in pairs]
        self.ts = [t for _, t in pairs]
        self.settings = settings

    def _end_slope(self, left: bool) -> float:
        slope = self.settings.slope
        if len(self.xs) < 2:
            return slope
        i, j = (0, 1) if left else (-2, -1)
        if self.xs[j] == self.xs[i]:
            return slope
        secant = (self.ts[j] - self.ts[i]) / (self.xs[j] - self.xs[i])
        return min(3 * slope, max(slope / 3, secant))

    def __call__(self, quality: int) -> float:
        x = _axis(self.settings.axis, quality)
        xs, ts = self.xs, self.ts
        if x <= xs[0]:
            return ts[0] + self._end_slope(True) * (x - xs[0])
        if x >= xs[-1]:
            return ts[-1] + self._end_slope(False) * (x - xs[-1])
        return float(np.interp(x, xs, ts))


def _bracket(met: dict[int, bool]) -> tuple[int | None, int | None]:
    """(highest quality below the lowest meeting one that misses, lowest quality that meets), from
    measured points quality -> whether it met."""
    meets = [q for q, ok in met.items() if ok]
    best = min(meets) if meets else None
    misses = [q for q, ok in met.items() if not ok and (best is None or q < best)]
    return (max(misses) if misses else None), best


def _aim(model: Callable[[int], float], target: float, low: int, high: int) -> int | None:
    """The lowest quality in [low, high] the model predicts to meet the target, or None."""
    for q in range(low, high + 1):
        if model(q) <= target:
            return q
    return None


class _Sampling:
    """The subsampling measured now: the least chroma first, the next one for every later
    measurement once an output meets the luma floor but misses the chroma floor."""

    def __init__(self, options: tuple[str, ...], floor: float, chroma_floor: float):
        self.options = options
        self.index = 0
        self.floor = floor
        self.chroma_floor = chroma_floor

    @property
    def current(self) -> str:
        return self.options[self.index]

    @property
    def fullest(self) -> bool:
        return self.index == len(self.options) - 1

    def meets(self, attempt: Attempt) -> bool:
        """Whether an attempt keeps both floors."""
        return attempt.ssim >= self.floor and attempt.chroma >= self.chroma_floor

    def widen_after(self, attempt: Attempt) -> bool:
        """Move to the next subsampling if `attempt` lost only chroma; whether it moved."""
        if attempt.ssim >= self.floor and attempt.chroma < self.chroma_floor and not self.fullest:
            self.index += 1
            return True
        return False

    def widest(self) -> None:
        self.index = len(self.options) - 1


Measure = Callable[[int, str], Attempt]


def _bracket_search(
    measure: Measure,
    sampling: _Sampling,
    settings: Settings,
    budget: int,
    tolerance: int,
    last_at_highest: bool,
    meets: Callable[[Attempt], bool],
) -> list[Attempt]:
    """Bracket the floor: each step aims where the curve through the points so far predicts the
    floor (a little past it while only one side is known, at most `max_step` away). Stops when the
    bracket is `tolerance` wide, at a bound, or when `budget` measurements are spent. With
    `last_at_highest`, the last measurement of the budget is at the highest quality and the
    fullest subsampling when nothing has met the floor yet (so that the search can always end with
    an output that meets it). `meets` says which attempts count as meeting it; the curve is luma."""
    target = _t(sampling.floor)
    points: dict[int, float] = {}  # quality -> luma SSIM
    met: dict[int, bool] = {}
    attempts: list[Attempt] = []
    q = settings.start(sampling.floor)
    while True:
        if last_at_highest and len(attempts) == budget - 1 and not any(met.values()):
            q = settings.highest  # the last measurement of the budget must be able to meet the floor
            sampling.widest()
        attempt = measure(q, sampling.current)
        attempts.append(attempt)
        points[q] = attempt.ssim
        met[q] = meets(attempt)
        if len(attempts) >= budget:
            break
        if sampling.widen_after(attempt) and not met[q]:
            del met[q]  # it lost only chroma: the same quality again with more
            continue
        fail, meet = _bracket(met)
        curve = _Curve(points, settings)
        if meet is not None and fail is not None:
            if meet - fail <= tolerance:
                break
            aimed = _aim(curve, target, fail + 1, meet - 1)
            q = meet - 1 if aimed is None else aimed
        elif meet is not None:  # only met so far: step down
            if meet == settings.lowest:
                break
            low = max(settings.lowest, meet - settings.max_step)
            aimed = _aim(curve, target + settings.overshoot, low, meet - 1)
            q = low if aimed is None else aimed
        else:  # only missed so far: step up
            assert fail is not None
            if fail == settings.highest:
                break
            high = min(settings.highest, fail + settings.max_step)
            aimed = _aim(curve, target - settings.overshoot, fail + 1, high)
            q = high if aimed is None else aimed
    return attempts


def choose_quality(
    image: Image.Image,
    floor: float,
    encode: Encoder,
    settings: Settings,
    chroma_floor: float = CHROMA_FLOOR,
) -> Choice:
    """The lowest quality (within the settings' bounds and budget) whose full-size output keeps
    SSIM ≥ `floor` against `image`, at the least chroma subsampling that keeps chroma SSIM ≥
    `chroma_floor`; see the module docstring."""
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"the SSIM floor must be in (0, 1], got {floor}")
    if not 0.0 < chroma_floor <= 1.0:
        raise ValueError(f"the chroma SSIM floor must be in (0, 1], got {chroma_floor}")
    target = Target(image)
    # A grey image has no chroma to subsample: the first option is as good as any.
    options = settings.subsamplings if target.chroma is not None else settings.subsamplings[:1]
    sampling = _Sampling(options, floor, chroma_floor)
    outputs: dict[tuple[int, str], bytes] = {}

    def measure_full(q: int, subsampling: str) -> Attempt:
        data = encode(image, q, subsampling)
        outputs[q, subsampling] = data
        luma_ssim, chroma_ssim = target.measure(data, floor)
        return Attempt(q, luma_ssim, len(data), True, chroma_ssim, subsampling)

    probe = build_probe(image) if settings.max_probe > 0 else None
    if probe is None:
        # Small image: search at full size directly.
        attempts = _bracket_search(
            measure_full, sampling, settings, settings.max_full, settings.full_tolerance, True, sampling.meets
        )
    else:

        def measure_probe(q: int, subsampling: str) -> Attempt:
            data = encode(probe.image, q, subsampling)
            # At the fullest subsampling every chroma point feeds the curve `_confirm` aims on.
            luma_ssim, chroma_ssim = probe.target.measure(data, None if sampling.fullest else floor)
            return Attempt(q, luma_ssim, len(data), False, chroma_ssim, subsampling)

        attempts = _bracket_search(
            measure_probe,
            sampling,
            settings,
            settings.max_probe,
            settings.probe_tolerance,
            False,
            lambda a: a.ssim >= floor,  # the probe brackets luma; chroma only picks the subsampling
        )
        attempts += _confirm(measure_full, sampling, attempts, settings)

    full = [a for a in attempts if a.full]
    met = [a for a in full if sampling.meets(a)]
    if met:
        best = min(met, key=lambda a: (a.size, a.quality))
    else:  # the attempt nearest to keeping both floors: luma first
        best = max(full, key=lambda a: (_shortfall(a, floor, chroma_floor), -a.quality))
    data = outputs[best.quality, best.subsampling]
    best_chroma = target.measure(data)[1] if math.isnan(best.chroma) else best.chroma
    return Choice(best.quality, best.ssim, data, bool(met), tuple(attempts), best_chroma, best.subsampling)


def _shortfall(attempt: Attempt, floor: float, chroma_floor: float) -> tuple[bool, float]:
    """How close an attempt comes to keeping both floors (larger is closer)."""
    if attempt.ssim < floor:
        return False, attempt.ssim - floor
    return True, min(attempt.ssim - floor, attempt.chroma - chroma_floor)


def _confirm(
    measure: Measure, sampling: _Sampling, probe: list[Attempt], settings: Settings
) -> list[Attempt]:
    """Phase 2: encode at full size where the probe's curve meets the floor (with `first_margin`);
    after an output that lost only chroma, the same quality at the next subsampling; after a miss,
    step up where the probe's curve shifted by the measured offset meets the floor with `margin`
    more per miss; the last encode of the budget at the highest quality and the fullest
    subsampling. At the fullest subsampling the chroma floor is aimed at the same way, on the
    probe's chroma curve at that subsampling (chroma quantisation: a busy colour picture needs a
    higher quality for its chroma than for its luma)."""
    luma_target, chroma_target = _t(sampling.floor), _t(sampling.chroma_floor)
    luma_curve = _Curve({a.quality: a.ssim for a in probe}, settings)
    full: list[Attempt] = []

    def shifted(curve: _Curve, value: Callable[[Attempt], float], at: list[Attempt], q: int) -> float:
        """The probe's curve through the nearest full-size measurement (if any) at quality q."""
        if not at:
            return curve(q)
        nearest = min(at, key=lambda a: (abs(a.quality - q), a.quality))
        return curve(q) + _t(value(nearest)) - curve(nearest.quality)

    def excess(q: int, margin: float) -> float:
        """How far q is predicted to miss the floors by, in log(1 - SSIM) (≤ 0: meets both)."""
        over = shifted(luma_curve, lambda a: a.ssim, full, q) - (luma_target - margin)
        measured = [a for a in probe if a.subsampling == sampling.current and not math.isnan(a.chroma)]
        if sampling.fullest and measured:
            chroma_curve = _Curve({a.quality: a.chroma for a in measured}, settings)
            at = [a for a in full if a.subsampling == sampling.current and not math.isnan(a.chroma)]
            chroma = shifted(chroma_curve, lambda a: a.chroma, at, q)
            over = max(over, chroma - (chroma_target - margin))
        return over

    first = _aim(lambda x: excess(x, settings.first_margin), 0.0, settings.lowest, settings.highest)
    q = settings.highest if first is None else first
    misses = 0
    while True:
        if len(full) == settings.max_full - 1:
            q = settings.highest  # the last encode of the budget must be able to meet the floor
            sampling.widest()
        attempt = measure(q, sampling.current)
        full.append(attempt)
        if sampling.meets(attempt) or len(full) >= settings.max_full:
            return full
        if sampling.widen_after(attempt):
            continue  # the same quality with more chroma
        if q == settings.highest:
            return full
        misses += 1
        high = min(settings.highest, q + settings.max_step)
        up = _aim(lambda x, m=settings.margin * misses: excess(x, m), 0.0, q + 1, high)
        q = high if up is None else up
