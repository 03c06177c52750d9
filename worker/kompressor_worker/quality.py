"""Automatic quality: the lowest encoder quality whose output keeps a luma SSIM floor, with the
chroma subsampling that keeps a chroma SSIM floor.

What it is for: `output.targetSSIM`. Given a prepared image (upright, resized, in the output's
mode) and an encoder `encode(image, quality, subsampling) -> bytes`, find cheaply a quality whose
output, decoded, keeps SSIM ≥ the floor against the image, as low as the search can tell, within
per-format bounds, and the least chroma (the first of `SearchSettings.subsamplings`) that keeps chroma
SSIM ≥ `CHROMA_FLOOR`.

What it must never do: I/O, logging, reading settings; it is pure like the codec (same image, floor
and encoder give the same choice). It never returns an output it has not measured at full size.

SSIM and chroma SSIM, and how a candidate is measured: `ssim.py`.

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
   the format's typical answer for the floor (`SearchSettings.starts`), then each step aims where a
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

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from kompressor.crd import Format
from kompressor.reasons import Reason
from kompressor_worker.ssim import WINDOW, Target

UNREACHABLE = Reason.quality_floor_unreachable

# Chroma SSIM (the lower of Cb's and Cr's) every output keeps: see the module docstring.
CHROMA_FLOOR = 0.95
SUBSAMPLING_420 = "4:2:0"
SUBSAMPLING_444 = "4:4:4"

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
class SearchSettings:
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
SEARCH: dict[Format, SearchSettings] = {
    Format.jpeg: SearchSettings(
        lowest=30,
        highest=95,
        axis="jpeg",
        slope=1.5,
        starts=((0.90, 30), (0.95, 52), (0.97, 66), (0.98, 76), (0.99, 82), (0.995, 85), (0.999, 92)),
    ),
    Format.webp: SearchSettings(
        lowest=30,
        highest=95,
        slope=0.47,
        subsamplings=(SUBSAMPLING_420,),
        starts=((0.90, 30), (0.95, 48), (0.97, 78), (0.98, 85), (0.99, 91), (0.995, 95)),
    ),
    Format.avif: SearchSettings(
        lowest=30,
        highest=95,
        slope=1.0,
        starts=((0.90, 42), (0.95, 52), (0.98, 64), (0.99, 74), (0.995, 82), (0.999, 95)),
    ),
}


@dataclass(frozen=True)
class Attempt:
    """One encode the search measured: its quality, subsampling, SSIMs and size."""

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

    def __init__(self, points: dict[int, float], settings: SearchSettings):
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
    settings: SearchSettings,
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
    settings: SearchSettings,
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
    measure: Measure, sampling: _Sampling, probe: list[Attempt], settings: SearchSettings
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
