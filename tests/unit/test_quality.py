"""Unit tests of automatic quality: the SSIM against scikit-image, the chroma planes, the probe
mosaic, and the search (quality and chroma subsampling) on images whose behaviour is known (flat,
noisy, text-like, a photograph, red text on blue) and on any image and floor (hypothesis)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, JpegImagePlugin

from kompressor.crd import Format, Limits, Output
from kompressor_worker import quality, ssim
from kompressor_worker.codec import compress, encode
from kompressor_worker.metrics import Metrics
from kompressor_worker.quality import CHROMA_FLOOR, UNREACHABLE, Choice, SearchSettings, choose_quality
from tests import corpus

JPEG = quality.SEARCH[Format.jpeg]
WEBP = quality.SEARCH[Format.webp]


def jpeg(image: Image.Image, q: int, subsampling: str = quality.SUBSAMPLING_420) -> bytes:
    return encode(image, Format.jpeg, q, None, subsampling=subsampling)


def webp(image: Image.Image, q: int, subsampling: str = quality.SUBSAMPLING_420) -> bytes:
    assert subsampling == quality.SUBSAMPLING_420  # the only one libwebp's lossy format has
    return encode(image, Format.webp, q, None)


def avif(image: Image.Image, q: int, subsampling: str = quality.SUBSAMPLING_420) -> bytes:
    return encode(image, Format.avif, q, None, subsampling=subsampling)


ENCODERS = {Format.jpeg: jpeg, Format.webp: webp, Format.avif: avif}


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


def red_text_on_blue(size: tuple[int, int] = (400, 300)) -> Image.Image:
    """Fine saturated colour detail: red and blue of nearly the same luma, so 4:2:0 smears what
    luma SSIM cannot see."""
    image = Image.new("RGB", size, (30, 40, 210))
    draw = ImageDraw.Draw(image)
    for y in range(4, size[1] - 10, 12):
        draw.text((4, y), "The quick red fox jumps over the lazy dog 0123456789 " * 2, fill=(225, 25, 20))
    for x in range(0, size[0], 9):
        draw.line((x, 0, x, size[1]), fill=(225, 25, 20))
    return image


def photo() -> Image.Image:
    """A colourful photograph (493x356, a 4:2:0 JPEG in opencv-doc), decoded to RGB."""
    photos = corpus.real_photos()
    if "butterfly.jpg" not in photos:
        pytest.skip(f"no photos: install Debian's opencv-doc ({corpus.OPENCV_DATA})")
    with Image.open(io.BytesIO(photos["butterfly.jpg"])) as image:
        return image.convert("RGB")


def check(
    choice: Choice,
    image: Image.Image,
    floor: float,
    search: SearchSettings,
    chroma_floor: float = CHROMA_FLOOR,
) -> None:
    """What every search promises, whatever the image and floor."""
    assert all(search.lowest <= a.quality <= search.highest for a in choice.attempts)
    assert all(a.subsampling in search.subsamplings for a in choice.attempts)
    assert choice.full_encodes <= search.max_full
    assert choice.probe_encodes <= search.max_probe
    full = {(a.quality, a.subsampling): a for a in choice.attempts if a.full}
    assert (choice.quality, choice.subsampling) in full
    # The stored bytes, measured again from scratch at full size: luma and chroma.
    measured, chroma = ssim.Target(image).measure(choice.data)
    assert measured == pytest.approx(choice.ssim, abs=1e-9)
    assert chroma == pytest.approx(choice.chroma, abs=1e-9)
    met = [a for a in full.values() if a.ssim >= floor and a.chroma >= chroma_floor]
    if choice.reached:
        assert choice.reason == ""
        assert measured >= floor and chroma >= chroma_floor  # both floors
        assert len(choice.data) == min(a.size for a in met)  # the fewest bytes measured that keep both
    else:
        assert choice.reason == UNREACHABLE
        assert not met
        # The highest quality was tried before giving up; at the fullest subsampling when only
        # chroma was missing.
        fullest = search.subsamplings[-1] if ssim.chroma(image) is not None else search.subsamplings[0]
        if any(a.ssim >= floor for a in full.values()):
            assert (search.highest, fullest) in full
        else:
            assert any(q == search.highest for q, _ in full)


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
    assert ssim.ssim(*planes) == pytest.approx(expected, abs=2e-6)


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
    assert ssim.ssim(x, y) == pytest.approx(expected, abs=2e-6)


def test_ssim_in_strips_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = pattern(300, 50, 4)
    whole = ssim.ssim(x, y)
    monkeypatch.setattr(ssim, "STRIP_ROWS", 17)
    assert ssim.ssim(x, y) == pytest.approx(whole, abs=1e-9)


def test_ssim_of_an_image_with_itself_is_one_and_shapes_must_match() -> None:
    x, _ = pattern(20, 30, 5)
    assert ssim.ssim(x, x) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="shapes differ"):
        ssim.ssim(x, x[:, :-1])


def test_images_smaller_than_the_window_are_padded() -> None:
    tiny = np.array([[10.0, 200.0], [30.0, 90.0]])
    assert ssim.ssim(tiny, tiny) == pytest.approx(1.0)
    assert 0.0 < ssim.ssim(tiny, tiny + 40) < 1.0


def test_a_cached_reference_measures_the_same_every_time() -> None:
    x, y = pattern(90, 70, 6)
    reference = ssim.Reference(x, cache=True)
    assert reference.ssim(y) == reference.ssim(y) == pytest.approx(ssim.ssim(x, y), abs=1e-9)


def test_luma_is_bt601_and_alpha_sits_on_white() -> None:
    rgb = Image.new("RGB", (2, 1), (200, 100, 50))
    assert ssim.luma(rgb)[0, 0] == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50, abs=1e-3)
    assert ssim.luma(Image.new("L", (1, 1), 77))[0, 0] == 77
    transparent = Image.new("RGBA", (1, 1), (0, 0, 0, 0))
    assert ssim.luma(transparent)[0, 0] == pytest.approx(255)
    half = Image.new("LA", (1, 1), (0, 128))
    assert ssim.luma(half)[0, 0] == pytest.approx(255 * (1 - 128 / 255), abs=1e-3)
    palette = rgb.convert("P")
    assert ssim.luma(palette).shape == (1, 2)


def test_chroma_is_jpegs_cb_cr_with_alpha_on_white_and_none_for_grey() -> None:
    cb, cr = ssim.chroma(Image.new("RGB", (2, 1), (200, 100, 50)))
    assert cb[0, 0] == pytest.approx(128 - 0.168736 * 200 - 0.331264 * 100 + 0.5 * 50, abs=0.5)
    assert cr[0, 0] == pytest.approx(128 + 0.5 * 200 - 0.418688 * 100 - 0.081312 * 50, abs=0.5)
    for image in (Image.new("RGB", (1, 1), "white"), Image.new("RGBA", (1, 1), (255, 0, 0, 0))):
        assert [float(p[0, 0]) for p in ssim.chroma(image)] == [128, 128]
    half_red = ssim.chroma(Image.new("RGBA", (1, 1), (255, 0, 0, 128)))
    assert 128 < half_red[1][0, 0] < ssim.chroma(Image.new("RGB", (1, 1), (255, 0, 0)))[1][0, 0]
    assert ssim.chroma(Image.new("L", (3, 3))) is None
    assert ssim.chroma(Image.new("LA", (3, 3))) is None


def test_4_2_0_keeps_a_photographs_chroma_and_loses_red_text_on_blue() -> None:
    """The chroma check sees what luma SSIM cannot: 4:2:0 and 4:4:4 have the same luma SSIM on
    both images, but only red text on blue loses its chroma to 4:2:0."""
    for image, loses in ((photo(), False), (red_text_on_blue(), True)):
        target = ssim.Target(image)
        (luma_420, chroma_420), (luma_444, chroma_444) = (
            target.measure(jpeg(image, 90, s)) for s in (quality.SUBSAMPLING_420, quality.SUBSAMPLING_444)
        )
        assert luma_420 == pytest.approx(luma_444, abs=0.002)
        assert chroma_444 >= CHROMA_FLOOR
        assert (chroma_420 < CHROMA_FLOOR) is loses


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
    reference = ssim.luma(image)
    total = count = 0.0
    for r, top in enumerate(tops):
        for c, left in enumerate(lefts):
            piece = full[top : top + tile, left : left + tile]
            assert np.array_equal(piece, mosaic[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile])
            windows = (tile - ssim.WINDOW + 1) ** 2
            total += ssim.ssim(reference[top : top + tile, left : left + tile], piece) * windows
            count += windows
    assert probe.target.luma.ssim(mosaic.astype(np.float32)) == pytest.approx(total / count, abs=1e-6)


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
    search = SearchSettings(lowest=30, highest=95, starts=((0.98, 70),), slope=1.5, axis="jpeg", max_probe=0)
    image = smooth((800, 600))
    choice = choose_quality(image, 0.985, jpeg, search)
    check(choice, image, 0.985, search)
    assert choice.probe_encodes == 0


def test_the_budget_forces_the_last_encode_to_the_highest_quality() -> None:
    # A start far too low, a tiny slope and a one-encode budget: that encode must be at the top.
    search = SearchSettings(lowest=30, highest=95, starts=((0.9, 30),), slope=0.01, max_full=1, max_probe=0)
    image = smooth((200, 200))
    choice = choose_quality(image, 0.99, jpeg, search)
    check(choice, image, 0.99, search)
    assert [a.quality for a in choice.attempts] == [95]


def test_a_photograph_gets_4_2_0() -> None:
    image = photo()
    choice = choose_quality(image, 0.983, jpeg, JPEG)
    check(choice, image, 0.983, JPEG)
    assert choice.reached and choice.subsampling == quality.SUBSAMPLING_420
    assert all(a.subsampling == quality.SUBSAMPLING_420 for a in choice.attempts)  # never tried more


@pytest.mark.parametrize("size", [(400, 300), (700, 500)])  # searched at full size; probed first
def test_red_text_on_blue_gets_4_4_4_and_keeps_both_floors(size: tuple[int, int]) -> None:
    image = red_text_on_blue(size)
    for fmt in (Format.jpeg, Format.avif):
        search = quality.SEARCH[fmt]
        choice = choose_quality(image, 0.983, ENCODERS[fmt], search)
        check(choice, image, 0.983, search)
        assert choice.reached and choice.subsampling == quality.SUBSAMPLING_444
        assert choice.chroma >= CHROMA_FLOOR
    if size == (700, 500):
        # The probe already saw the chroma loss: at full size only 4:4:4 is encoded.
        assert {a.subsampling for a in choice.attempts if a.full} == {quality.SUBSAMPLING_444}


def test_webp_has_only_4_2_0_so_red_text_on_blue_misses_the_chroma_floor_and_says_so() -> None:
    image = red_text_on_blue()
    choice = choose_quality(image, 0.983, webp, WEBP)
    check(choice, image, 0.983, WEBP)
    assert not choice.reached and choice.chroma < CHROMA_FLOOR <= 1.0 and choice.ssim >= 0.983


def test_a_grey_image_is_measured_at_the_first_subsampling_only() -> None:
    image = text().convert("L")
    choice = choose_quality(image, 0.99, jpeg, JPEG)
    check(choice, image, 0.99, JPEG)
    assert {a.subsampling for a in choice.attempts} == {quality.SUBSAMPLING_420}
    assert choice.chroma == 1.0


def test_a_lower_chroma_floor_lets_4_2_0_through() -> None:
    image = red_text_on_blue()
    choice = choose_quality(image, 0.983, jpeg, JPEG, chroma_floor=0.3)
    check(choice, image, 0.983, JPEG, chroma_floor=0.3)
    assert choice.subsampling == quality.SUBSAMPLING_420
    with pytest.raises(ValueError):
        choose_quality(image, 0.983, jpeg, JPEG, chroma_floor=0.0)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("source", "expected"),
    [("photo as PNG", "4:2:0"), ("red text as PNG", "4:4:4"), ("fruits.jpg, 4:2:2", "4:2:2")],
)
def test_compress_stores_the_chosen_subsampling(source: str, expected: str) -> None:
    """The stored JPEG has the subsampling the search chose; a JPEG source kept at its size is
    offered no more chroma than it has (fruits.jpg is 4:2:2: 4:2:0 loses chroma, 4:4:4 is not
    offered)."""
    if source == "red text as PNG":
        data = png_bytes(red_text_on_blue())
    elif source == "photo as PNG":
        data = png_bytes(photo())
    else:
        photos = corpus.real_photos()
        if "fruits.jpg" not in photos:
            pytest.skip(f"no photos: install Debian's opencv-doc ({corpus.OPENCV_DATA})")
        data = photos["fruits.jpg"]
    output = Output.model_validate({"format": "jpeg", "targetSSIM": 0.983, "neverLarger": False})
    result = compress(data, output, Limits())
    assert result.subsampling == expected
    with Image.open(io.BytesIO(result.data)) as stored:
        assert JpegImagePlugin.get_sampling(stored) == {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}[expected]
    assert result.ssim >= 0.983 and result.chroma_ssim >= CHROMA_FLOOR
    assert result.reason == ""


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
        {"subsamplings": ()},
    ],
)
def test_settings_refuse_absurd_bounds(fields: dict) -> None:
    base = {"lowest": 30, "highest": 95, "starts": ((0.98, 70),), "slope": 1.0}
    with pytest.raises(ValueError):
        SearchSettings(**{**base, **fields})


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
    kinds = ["flat", "noise", "grain", "smooth", "text", "blocks", "mixed", "colour text"]
    kind = draw(st.sampled_from(kinds))
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
    elif kind == "colour text":
        image = red_text_on_blue(size)
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
    search = SearchSettings(
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


def test_the_crd_names_the_chroma_floor_the_search_keeps() -> None:
    description = Output.model_fields["target_ssim"].description or ""
    assert f"chroma SSIM {CHROMA_FLOOR}" in description
