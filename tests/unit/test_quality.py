"""Unit tests of automatic quality: the SSIM against scikit-image, the probe mosaic, and the search
on images whose behaviour is known (flat, noisy, text-like) and on any image and floor (hypothesis)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from kompressor.crd import Format
from kompressor_worker import quality
from kompressor_worker.codec import encode
from kompressor_worker.metrics import Metrics
from kompressor_worker.quality import UNREACHABLE, Choice, Settings, choose_quality

JPEG = quality.SEARCH[Format.jpeg]
WEBP = quality.SEARCH[Format.webp]


def jpeg(image: Image.Image, q: int) -> bytes:
    return encode(image, Format.jpeg, q, None)


def webp(image: Image.Image, q: int) -> bytes:
    return encode(image, Format.webp, q, None)


ENCODERS = {Format.jpeg: jpeg, Format.webp: webp}


# --- images with known behaviour ------------------------------------------------------------------


def flat(size: tuple[int, int] = (400, 400)) -> Image.Image:
    return Image.new("RGB", size, (120, 130, 140))


def noise(size: tuple[int, int] = (400, 400), seed: int = 1) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def grain(size: tuple[int, int] = (400, 400), seed: int = 1, sigma: float = 6.0) -> Image.Image:
    """Mid-grey with faint noise (sensor grain): its structure is all in detail JPEG quantises away."""
    pixels = 128 + np.random.default_rng(seed).normal(0.0, sigma, (size[1], size[0], 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def smooth(size: tuple[int, int] = (400, 400)) -> Image.Image:
    rows, cols = np.mgrid[0 : size[1], 0 : size[0]]
    red = 128 + 90 * np.sin(rows / 40.0) * np.cos(cols / 55.0)
    green = 128 + 80 * np.cos(rows / 70.0)
    blue = 100 + cols * 100 / size[0]
    return Image.fromarray(np.dstack([red, green, blue]).round().astype(np.uint8), "RGB")


def text(size: tuple[int, int] = (400, 400)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    line = "The quick brown fox jumps over the lazy dog 0123456789 " * 2
    for row, y in enumerate(range(6, size[1] - 12, 14)):
        draw.text((6 + row % 3, y), line, fill="black")
    return image


def check(choice: Choice, image: Image.Image, floor: float, search: Settings) -> None:
    """What every search promises, whatever the image and floor."""
    assert all(search.lowest <= a.quality <= search.highest for a in choice.attempts)
    assert choice.full_encodes <= search.max_full
    assert choice.probe_encodes <= search.max_probe
    full = {a.quality: a.ssim for a in choice.attempts if a.full}
    assert choice.quality in full
    # The stored bytes, measured again from scratch at full size.
    measured = quality.ssim(quality.luma(image), quality.decode_luma(choice.data))
    assert measured == pytest.approx(choice.ssim, abs=1e-9)
    if choice.reached:
        assert choice.reason == ""
        assert measured >= floor
        assert choice.quality == min(q for q, s in full.items() if s >= floor)
    else:
        assert choice.reason == UNREACHABLE
        assert all(s < floor for s in full.values())
        assert search.highest in full  # the highest quality was tried before giving up
        assert choice.ssim == max(full.values())


# --- SSIM -----------------------------------------------------------------------------------------


def pattern(height: int, width: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:height, 0:width]
    x = ((rows * 7 + cols * 13 + (rows * cols) % 17 * 5 + k) % 256).astype(np.float64)
    y = np.clip(x + ((rows * 31 + cols * 17 + k) % 23) - 11, 0, 255)
    return x, y


def posterized(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:height, 0:width]
    x = (128 + 100 * np.sin(rows / 5.0) * np.cos(cols / 7.0)).round()
    return x, (x // 32) * 32 + 16


# scikit-image 0.26 structural_similarity(x, y, data_range=255) on these float64 planes.
SKIMAGE = [
    (pattern(7, 7, 0), 0.9911047437053359),
    (pattern(16, 24, 1), 0.9927479547887301),
    (pattern(48, 40, 2), 0.9916696269009247),
    (pattern(120, 90, 3), 0.9912952652508878),
    (posterized(64, 80), 0.9031140184507088),
]


@pytest.mark.parametrize(("planes", "expected"), SKIMAGE)
def test_ssim_matches_recorded_scikit_image_values(planes, expected: float) -> None:
    assert quality.ssim(*planes) == pytest.approx(expected, abs=2e-6)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(7, 80),
    width=st.integers(7, 80),
    seed=st.integers(0, 2**32 - 1),
    amplitude=st.floats(0.0, 80.0),
)
def test_ssim_matches_scikit_image(height: int, width: int, seed: int, amplitude: float) -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (height, width)).astype(np.float64)
    y = np.clip(x + rng.normal(0.0, amplitude + 1e-3, x.shape), 0, 255).round()
    expected = metrics.structural_similarity(x, y, data_range=255)
    assert quality.ssim(x, y) == pytest.approx(expected, abs=2e-6)


def test_ssim_in_strips_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = pattern(300, 50, 4)
    whole = quality.ssim(x, y)
    monkeypatch.setattr(quality, "STRIP_ROWS", 17)
    assert quality.ssim(x, y) == pytest.approx(whole, abs=1e-9)


def test_ssim_of_an_image_with_itself_is_one_and_shapes_must_match() -> None:
    x, _ = pattern(20, 30, 5)
    assert quality.ssim(x, x) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="shapes differ"):
        quality.ssim(x, x[:, :-1])


def test_images_smaller_than_the_window_are_padded() -> None:
    tiny = np.array([[10.0, 200.0], [30.0, 90.0]])
    assert quality.ssim(tiny, tiny) == pytest.approx(1.0)
    assert 0.0 < quality.ssim(tiny, tiny + 40) < 1.0


def test_a_cached_reference_measures_the_same_every_time() -> None:
    x, y = pattern(90, 70, 6)
    reference = quality.Reference(x, cache=True)
    assert reference.ssim(y) == reference.ssim(y) == pytest.approx(quality.ssim(x, y), abs=1e-9)


def test_luma_is_bt601_and_alpha_sits_on_white() -> None:
    rgb = Image.new("RGB", (2, 1), (200, 100, 50))
    assert quality.luma(rgb)[0, 0] == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50, abs=1e-3)
    assert quality.luma(Image.new("L", (1, 1), 77))[0, 0] == 77
    transparent = Image.new("RGBA", (1, 1), (0, 0, 0, 0))
    assert quality.luma(transparent)[0, 0] == pytest.approx(255)
    half = Image.new("LA", (1, 1), (0, 128))
    assert quality.luma(half)[0, 0] == pytest.approx(255 * (1 - 128 / 255), abs=1e-3)
    palette = rgb.convert("P")
    assert quality.luma(palette).shape == (1, 2)


# --- the probe mosaic -----------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "count"), [(64, 1), (100, 3), (1200, 20), (417, 7)])
def test_tiles_are_spread_and_aligned_to_jpeg_blocks(length: int, count: int) -> None:
    starts = quality._tile_starts(length, count)
    assert len(starts) == count
    assert all(s % quality.TILE_ALIGN == 0 and 0 <= s <= length - quality.TILE for s in starts)
    assert starts == sorted(starts)


def test_small_images_have_no_probe() -> None:
    assert quality.build_probe(flat((300, 300))) is None
    probe = quality.build_probe(flat((800, 600)))
    assert probe is not None
    share = probe.image.width * probe.image.height / (800 * 600)
    assert 0.15 < share <= quality.PROBE_SHARE


def test_the_jpeg_probe_measures_exactly_what_the_full_image_shows_in_its_tiles() -> None:
    """Luma is coded per 8x8 block: a tile on the 16-px grid decodes alike in the mosaic and in
    the full image, so the probe's SSIM is the full image's over the same windows."""
    image = smooth((700, 520)).convert("L")
    probe = quality.build_probe(image)
    assert probe is not None
    full = np.asarray(Image.open(io.BytesIO(jpeg(image, 60))))
    mosaic = np.asarray(Image.open(io.BytesIO(jpeg(probe.image, 60))))
    tile = quality.TILE
    tops = quality._tile_starts(image.height, probe.image.height // tile)
    lefts = quality._tile_starts(image.width, probe.image.width // tile)
    reference = quality.luma(image)
    total = count = 0.0
    for r, top in enumerate(tops):
        for c, left in enumerate(lefts):
            piece = full[top : top + tile, left : left + tile]
            assert np.array_equal(piece, mosaic[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile])
            windows = (tile - quality.WINDOW + 1) ** 2
            total += quality.ssim(reference[top : top + tile, left : left + tile], piece) * windows
            count += windows
    assert probe.reference.ssim(mosaic.astype(np.float32)) == pytest.approx(total / count, abs=1e-6)


# --- the search on known images -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [Format.jpeg, Format.webp])
def test_a_flat_image_meets_any_floor_at_the_lowest_quality(fmt: Format) -> None:
    search = quality.SEARCH[fmt]
    image = flat()
    choice = choose_quality(image, 0.999, ENCODERS[fmt], search)
    check(choice, image, 0.999, search)
    assert choice.reached and choice.quality == search.lowest
    assert choice.full_encodes == 1


def test_grain_cannot_reach_a_high_floor_and_the_best_attempt_is_kept() -> None:
    image = grain()  # JPEG q95 keeps SSIM ~0.96 of it
    choice = choose_quality(image, 0.99, jpeg, JPEG)
    check(choice, image, 0.99, JPEG)
    assert not choice.reached and choice.reason == "quality_floor_unreachable"
    assert choice.quality == JPEG.highest


def test_text_needs_a_higher_quality_than_a_smooth_picture() -> None:
    floor = 0.98
    smooth_choice = choose_quality(smooth(), floor, jpeg, JPEG)
    text_choice = choose_quality(text(), floor, jpeg, JPEG)
    check(smooth_choice, smooth(), floor, JPEG)
    check(text_choice, text(), floor, JPEG)
    assert text_choice.quality > smooth_choice.quality + 10


def test_a_higher_floor_never_gets_a_lower_quality_or_fewer_bytes() -> None:
    image = smooth((640, 480))
    low, high = (choose_quality(image, f, jpeg, JPEG) for f in (0.95, 0.99))
    assert high.quality > low.quality and len(high.data) > len(low.data)


def test_the_search_probes_then_confirms_at_full_size_cheaply() -> None:
    image = smooth((800, 600))
    choice = choose_quality(image, 0.985, jpeg, JPEG)
    check(choice, image, 0.985, JPEG)
    assert choice.probe_encodes >= 1 and choice.full_encodes <= 2
    assert [a.full for a in choice.attempts] == sorted(a.full for a in choice.attempts)  # probe first


def test_without_a_probe_budget_it_searches_at_full_size() -> None:
    search = Settings(lowest=30, highest=95, starts=((0.98, 70),), slope=1.5, axis="jpeg", max_probe=0)
    image = smooth((800, 600))
    choice = choose_quality(image, 0.985, jpeg, search)
    check(choice, image, 0.985, search)
    assert choice.probe_encodes == 0


def test_the_budget_forces_the_last_encode_to_the_highest_quality() -> None:
    # A start far too low, a tiny slope and a one-encode budget: that encode must be at the top.
    search = Settings(lowest=30, highest=95, starts=((0.9, 30),), slope=0.01, max_full=1, max_probe=0)
    image = smooth((200, 200))
    choice = choose_quality(image, 0.99, jpeg, search)
    check(choice, image, 0.99, search)
    assert [a.quality for a in choice.attempts] == [95]


def test_the_first_quality_comes_from_the_priors() -> None:
    assert JPEG.start(0.95) == 52
    assert JPEG.start(0.5) == JPEG.lowest  # clamped to the bounds
    assert JPEG.start(0.9999) <= JPEG.highest
    assert 52 < JPEG.start(0.96) < 66


@pytest.mark.parametrize(
    "fields",
    [
        {"lowest": 0},
        {"lowest": 90, "highest": 80},
        {"highest": 101},
        {"slope": -1.0},
        {"axis": "log"},
        {"max_full": 0},
        {"starts": ()},
    ],
)
def test_settings_refuse_absurd_bounds(fields: dict) -> None:
    base = {"lowest": 30, "highest": 95, "starts": ((0.98, 70),), "slope": 1.0}
    with pytest.raises(ValueError):
        Settings(**{**base, **fields})


def test_a_floor_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError):
        choose_quality(flat((16, 16)), 1.5, jpeg, JPEG)


# --- properties -----------------------------------------------------------------------------------


@st.composite
def images(draw) -> Image.Image:
    # Below 128 K pixels the search runs at full size; above, it probes a mosaic first.
    width, height = draw(
        st.sampled_from([(1, 1), (5, 7), (40, 60), (130, 90), (420, 330), (480, 410), (600, 240)])
    )
    kind = draw(st.sampled_from(["flat", "noise", "grain", "smooth", "text", "blocks", "mixed"]))
    seed = draw(st.integers(0, 1000))
    size = (width, height)
    if kind == "flat":
        image = flat(size)
    elif kind == "noise":
        image = noise(size, seed)
    elif kind == "grain":
        image = grain(size, seed)
    elif kind == "smooth":
        image = smooth(size)
    elif kind == "text":
        image = text(size)
    elif kind == "blocks":
        coarse = noise((max(1, width // 16), max(1, height // 16)), seed)
        image = coarse.resize(size, Image.Resampling.NEAREST)
    else:
        image = smooth(size)
        image.paste(noise((max(1, width // 3), max(1, height // 3)), seed), (width // 3, height // 3))
    if draw(st.booleans()):
        image = image.convert("L")
    return image


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image=images(), floor=st.floats(0.90, 0.999), fmt=st.sampled_from([Format.jpeg, Format.webp]))
def test_the_result_meets_the_floor_at_full_size_or_is_marked_unreachable(
    image: Image.Image, floor: float, fmt: Format
) -> None:
    search = quality.SEARCH[fmt]
    choice = choose_quality(image, floor, ENCODERS[fmt], search)
    check(choice, image, floor, search)


@settings(max_examples=15, deadline=None)
@given(
    floor=st.floats(0.5, 0.9999),
    lowest=st.integers(1, 60),
    span=st.integers(0, 40),
    max_full=st.integers(1, 5),
    max_probe=st.integers(0, 6),
    start=st.integers(1, 100),
)
def test_any_bounds_and_budget_are_kept(
    floor: float, lowest: int, span: int, max_full: int, max_probe: int, start: int
) -> None:
    search = Settings(
        lowest=lowest,
        highest=min(100, lowest + span),
        starts=((0.95, start),),
        slope=1.5,
        axis="jpeg",
        max_full=max_full,
        max_probe=max_probe,
    )
    image = smooth((420, 330))
    check(choose_quality(image, floor, jpeg, search), image, floor, search)


# --- metrics --------------------------------------------------------------------------------------


def test_the_chosen_quality_histogram_counts_automatic_quality_only() -> None:
    metrics = Metrics("shop", "catalog")
    metrics.observe_quality(72, 0.9851)
    metrics.observe_quality(80, None)  # a fixed quality
    metrics.observe_quality(None, 1.0)  # neverLarger stored the original
    job = {"namespace": "shop", "compressionjob": "catalog"}
    count = metrics.registry.get_sample_value("kompressor_chosen_quality_count", job)
    total = metrics.registry.get_sample_value("kompressor_chosen_quality_sum", job)
    assert (count, total) == (1.0, 72.0)
