"""Unit tests of the codec: real images in, decoded outputs checked pixel by pixel where it matters."""

from __future__ import annotations

import io
import itertools
import pickle
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, JpegImagePlugin

from kompressor.crd import Format, InputFormat, Limits, Output, Resize
from kompressor_worker import codec, memory, quality, ssim
from kompressor_worker.codec import CodecError, Compressed, compress, encode, prepare
from kompressor_worker.never_larger import NotSmaller
from tests import corpus

LIMITS = Limits()
OUTPUT_FORMATS = [Format.jpeg, Format.webp, Format.avif, Format.png]
ALPHA_FORMATS = [Format.webp, Format.avif, Format.png]
AWKWARD = corpus.awkward_inputs()
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
    b"</rdf:RDF></x:xmpmeta>"
)
MAKE_TAG = 0x010F


def out(fmt: Format | str = Format.webp, **fields: object) -> Output:
    """An Output with neverLarger off unless a test turns it on: most tests here look at the encode,
    and neverLarger (which may store the input or nothing instead) has its own section."""
    return Output(format=fmt, **{"never_larger": False, **fields})


def decode(result: Compressed) -> Image.Image:
    image = Image.open(io.BytesIO(result.data))
    image.load()
    return image


def awkward(name: str) -> bytes:
    return AWKWARD[name][0]


def photo(name: str = "building.jpg") -> bytes:
    return corpus.real_photos()[name]


def small_photo(name: str = "building.jpg", side: int = 240) -> bytes:
    return corpus.real_photos(max_side=side)[name]


def xmp_of(image: Image.Image) -> bytes:
    value = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp") or b""
    return value.encode() if isinstance(value, str) else value


def jpeg_with_metadata(orientation: int = 6, quality: int = 90) -> bytes:
    exif = Image.Exif()
    exif[MAKE_TAG] = "KompressorCam"
    exif[corpus.ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    Image.open(io.BytesIO(small_photo())).save(buffer, "JPEG", quality=quality, exif=exif.tobytes(), xmp=XMP)
    return buffer.getvalue()


def test_photo_corpus_is_there() -> None:
    photos = corpus.real_photos()
    assert len(photos) >= 10
    assert list(photos) == sorted(photos)
    assert corpus.real_photos(limit=3, max_side=128).keys() == set(list(photos)[:3])
    for data in corpus.real_photos(limit=3, max_side=128).values():
        assert max(Image.open(io.BytesIO(data)).size) <= 128


# --- every awkward input ends as expected ---------------------------------------------------------


@pytest.mark.parametrize("fmt", [*OUTPUT_FORMATS, Format.keep], ids=str)
@pytest.mark.parametrize("name", sorted(AWKWARD))
def test_awkward_input_ends_as_expected(name: str, fmt: Format) -> None:
    data, reason = AWKWARD[name]
    if reason is not None:
        with pytest.raises(CodecError) as caught:
            compress(data, out(fmt), LIMITS)
        assert caught.value.reason == reason
        assert str(caught.value)
        return
    result = compress(data, out(fmt), LIMITS)
    image = decode(result)
    stored = image.format.lower()
    assert {"mpo": "jpeg"}.get(stored, stored) == result.format
    assert image.size == (result.width, result.height)
    if fmt is not Format.keep:
        assert result.format == fmt.value
    assert "exif" not in image.info or result.stored_original


def test_the_awkward_corpus_is_quick_and_deterministic() -> None:
    corpus._awkward_inputs.cache_clear()
    started = time.perf_counter()
    fresh = corpus.awkward_inputs()
    assert time.perf_counter() - started < 2.0
    assert fresh == AWKWARD
    fresh.clear()
    assert corpus.awkward_inputs() == AWKWARD


# --- orientation, ICC, metadata -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS, ids=str)
def test_exif_orientation_is_applied_to_the_pixels(fmt: Format) -> None:
    result = compress(awkward("exif-rotated-6.jpg"), out(fmt, quality=95), LIMITS)
    stored_width, stored_height = corpus.ROTATED_STORED_SIZE
    assert (result.width, result.height) == (stored_height, stored_width)
    image = decode(result).convert("RGB")
    assert image.size == (stored_height, stored_width)
    # Stored top-left (red) is shown top-right after a 90° clockwise turn.
    red = image.getpixel((image.width - 6, 6))
    blue = image.getpixel((5, 6))
    assert red[0] > 180 and red[2] < 90, red
    assert blue[2] > 180 and blue[0] < 90, blue
    assert image.getexif().get(corpus.ORIENTATION_TAG, 1) == 1


def test_the_resize_box_applies_to_the_image_as_shown() -> None:
    # Shown 48 wide, 96 high: a 24x1000 box halves it.
    result = compress(
        awkward("exif-rotated-6.jpg"), out(resize=Resize(max_width=24, max_height=1000)), LIMITS
    )
    assert (result.width, result.height) == (24, 48)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos : pos + 12 + length]))
        pos += 12 + length
    return chunks


@pytest.mark.parametrize("exif_after_pixels", [False, True])
def test_png_orientation_is_applied_wherever_its_exif_is(exif_after_pixels: bool) -> None:
    exif = Image.Exif()
    exif[corpus.ORIENTATION_TAG] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), "red").save(buffer, "PNG", exif=exif.tobytes())
    chunks = dict(_png_chunks(buffer.getvalue()))
    order = [b"IHDR", b"IDAT", b"eXIf", b"IEND"] if exif_after_pixels else list(chunks)
    data = b"\x89PNG\r\n\x1a\n" + b"".join(chunks[kind] for kind in order)
    result = compress(data, out(Format.png, resize=Resize(max_height=30)), LIMITS, memory_budget_bytes=2**24)
    assert (result.width, result.height) == (15, 30)


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS, ids=str)
def test_icc_profile_is_kept(fmt: Format) -> None:
    result = compress(awkward("icc-srgb.jpg"), out(fmt), LIMITS)
    assert decode(result).info.get("icc_profile") == corpus.srgb_icc()


def test_no_icc_profile_is_invented() -> None:
    result = compress(small_photo(), out(Format.webp), LIMITS)
    assert not decode(result).info.get("icc_profile")


def test_a_grey_profile_is_not_attached_to_colour_output() -> None:
    grey_icc = bytearray(corpus.srgb_icc())
    grey_icc[16:20] = b"GRAY"
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 128).save(buffer, "PNG", icc_profile=bytes(grey_icc))
    as_png = decode(compress(buffer.getvalue(), out(Format.png, never_larger=False), LIMITS))
    assert as_png.mode == "L" and as_png.info.get("icc_profile") == bytes(grey_icc)
    as_webp = decode(compress(buffer.getvalue(), out(Format.webp), LIMITS))
    assert not as_webp.info.get("icc_profile")


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS, ids=str)
def test_strip_metadata_drops_exif_and_xmp(fmt: Format) -> None:
    result = compress(jpeg_with_metadata(), out(fmt), LIMITS)
    image = decode(result)
    assert not image.getexif()
    assert "exif" not in image.info
    assert not xmp_of(image)


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS, ids=str)
def test_kept_metadata_has_an_upright_orientation(fmt: Format) -> None:
    result = compress(jpeg_with_metadata(orientation=6), out(fmt, strip_metadata=False), LIMITS)
    image = decode(result)
    exif = image.getexif()
    assert exif.get(MAKE_TAG) == "KompressorCam"
    assert exif.get(corpus.ORIENTATION_TAG) == 1
    xmp = xmp_of(image)
    assert b"KompressorCam" not in xmp
    assert b'tiff:Orientation="1"' in xmp and b'tiff:Orientation="6"' not in xmp
    source = Image.open(io.BytesIO(jpeg_with_metadata()))
    assert (result.width, result.height) == (source.height, source.width)


# --- alpha, palettes, modes -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ALPHA_FORMATS, ids=str)
@pytest.mark.parametrize("name", ["rgba.png", "palette-transparent.png", "grey-alpha.png"])
def test_alpha_is_kept_where_the_format_has_it(name: str, fmt: Format) -> None:
    image = decode(compress(awkward(name), out(fmt), LIMITS)).convert("RGBA")
    assert image.getpixel((4, 4))[3] == 0  # the left half is transparent
    assert image.getpixel((image.width - 4, 4))[3] == 255


@pytest.mark.parametrize("name", ["rgba.png", "palette-transparent.png", "grey-alpha.png"])
def test_jpeg_flattens_alpha_on_white(name: str) -> None:
    image = decode(compress(awkward(name), out(Format.jpeg, quality=95), LIMITS))
    assert image.mode in ("RGB", "L")
    assert image.convert("L").getpixel((4, 4)) >= 250


def test_a_transparent_palette_keeps_its_colours() -> None:
    image = decode(compress(awkward("palette-transparent.png"), out(Format.webp, quality=95), LIMITS))
    red, green, blue, alpha = image.convert("RGBA").getpixel((50, 20))
    assert red > 230 and green < 30 and blue < 30 and alpha == 255


@pytest.mark.parametrize("fmt", [Format.png, Format.jpeg, Format.webp], ids=str)
def test_16_bit_grey_is_scaled_not_clipped(fmt: Format) -> None:
    image = decode(compress(awkward("gradient-16bit.png"), out(fmt, quality=95), LIMITS)).convert("L")
    row = [image.getpixel((x, 16)) for x in range(image.width)]
    assert row[0] <= 8 and row[-1] >= 247
    assert abs(row[128] - 128) <= 8
    assert len(set(row)) > 100
    assert all(b >= a - 6 for a, b in itertools.pairwise(row))


def test_float_grey_is_scaled() -> None:
    image = decode(compress(awkward("float.tiff"), out(Format.png), LIMITS)).convert("L")
    row = [image.getpixel((x, 8)) for x in range(image.width)]
    assert row[0] == 0 and row[-1] == 255 and row == sorted(row)


def test_32_bit_integer_grey_with_a_wide_range_is_scaled() -> None:
    values = [x * 100_000 for x in range(64)]
    image = Image.new("I", (64, 4))
    image.putdata(values * 4)
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    result = decode(compress(buffer.getvalue(), out(Format.png), LIMITS)).convert("L")
    row = [result.getpixel((x, 1)) for x in range(64)]
    assert row[0] == 0 and row[-1] == 255 and row == sorted(row)


def test_cmyk_becomes_rgb_with_the_right_colours() -> None:
    reference = corpus._photo_like((80, 60))
    for fmt in (Format.jpeg, Format.webp):
        image = decode(compress(awkward("cmyk.jpg"), out(fmt, quality=95), LIMITS))
        assert image.mode == "RGB"
        for x, y in ((10, 10), (30, 25), (70, 50)):
            got, want = image.getpixel((x, y)), reference.getpixel((x, y))
            assert all(abs(a - b) <= 40 for a, b in zip(got, want, strict=True)), (got, want)


def test_cmyk_with_a_profile_that_is_not_cmyk_drops_it() -> None:
    buffer = io.BytesIO()
    corpus._photo_like((40, 30)).convert("CMYK").save(buffer, "JPEG", icc_profile=corpus.srgb_icc())
    image = decode(compress(buffer.getvalue(), out(Format.jpeg), LIMITS))
    assert image.mode == "RGB" and not image.info.get("icc_profile")


def test_cmyk_with_an_unusable_cmyk_profile_falls_back_to_plain_conversion() -> None:
    fake_cmyk_icc = bytearray(corpus.srgb_icc())
    fake_cmyk_icc[16:20] = b"CMYK"
    buffer = io.BytesIO()
    corpus._photo_like((40, 30)).convert("CMYK").save(buffer, "JPEG", icc_profile=bytes(fake_cmyk_icc))
    image = decode(compress(buffer.getvalue(), out(Format.webp), LIMITS))
    assert image.mode == "RGB" and not image.info.get("icc_profile")


def test_cmyk_is_shrunk_in_draft_mode_too() -> None:
    result = compress(awkward("cmyk.jpg"), out(Format.jpeg, resize=Resize(max_width=20)), LIMITS)
    image = decode(result)
    assert image.mode == "RGB" and image.size == (20, 15)


def test_modes_per_output_format() -> None:
    assert decode(compress(awkward("grey.jpg"), out(Format.jpeg), LIMITS)).mode == "L"
    assert decode(compress(awkward("grey.jpg"), out(Format.webp), LIMITS)).mode == "RGB"
    assert decode(compress(awkward("grey-alpha.png"), out(Format.jpeg), LIMITS)).mode == "L"
    assert decode(compress(awkward("grey-alpha.png"), out(Format.png), LIMITS)).mode == "LA"
    assert decode(compress(awkward("bilevel.png"), out(Format.webp), LIMITS)).mode == "RGB"
    bilevel = compress(awkward("bilevel.png"), out(Format.png, never_larger=False), LIMITS)
    assert decode(bilevel).mode == "1"
    palette = compress(awkward("palette-transparent.png"), out(Format.png, never_larger=False), LIMITS)
    assert decode(palette).mode == "P"
    resized = compress(
        awkward("palette-transparent.png"), out(Format.png, resize=Resize(max_width=32)), LIMITS
    )
    assert decode(resized).mode == "RGBA" and (resized.width, resized.height) == (32, 24)


def test_animated_gif_keeps_the_first_frame() -> None:
    result = compress(awkward("animated.gif"), out(Format.webp, quality=95), LIMITS)
    assert result.frames == 3
    image = decode(result)
    assert getattr(image, "n_frames", 1) == 1
    red, green, blue = image.convert("RGB").getpixel((20, 15))
    assert red > 230 and green < 30 and blue < 30


def test_animated_webp_keeps_the_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("blue", "red")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=100, quality=90)
    result = compress(buffer.getvalue(), out(Format.keep, never_larger=True), LIMITS)
    assert result.frames == 2 and not result.stored_original and result.format == "webp"
    image = decode(result)
    assert getattr(image, "n_frames", 1) == 1
    assert image.convert("RGB").getpixel((16, 16))[2] > 200


def tiff_of_pages(pages: int) -> bytes:
    """A little-endian TIFF of `pages` 1x1 grey pages, each its own IFD, all sharing one strip (128)."""
    fields = [(256, 1), (257, 1), (258, 8), (259, 1), (262, 1), (277, 1), (278, 1)]  # SHORT tags
    ifd_size = 2 + 12 * (len(fields) + 2) + 4
    strip = 8 + pages * ifd_size
    ifds = bytearray()
    for page in range(pages):
        following = 8 + (page + 1) * ifd_size if page + 1 < pages else 0
        ifds += struct.pack("<H", len(fields) + 2)
        for tag, value in sorted([*fields, (273, strip), (279, 1)]):
            kind = 4 if tag in (273, 279) else 3  # StripOffsets, StripByteCounts: LONG; others SHORT
            ifds += struct.pack("<HHII", tag, kind, 1, value)  # little-endian: a SHORT fits the same way
        ifds += struct.pack("<I", following)
    return b"II*\x00" + struct.pack("<I", 8) + bytes(ifds) + b"\x80"


def test_a_multi_page_tiff_keeps_its_first_page_and_counts_them() -> None:
    result = compress(tiff_of_pages(3), out(Format.png), LIMITS)
    assert result.frames == 3 and (result.width, result.height) == (1, 1)
    assert decode(result).getpixel((0, 0)) == 128


def test_tiff_pages_are_counted_in_bounded_time() -> None:
    # Pillow's own count took 12.6 s for 40,000 pages (quadratic), before any limit applied.
    data = tiff_of_pages(40_000)
    started = time.process_time()
    result = compress(data, out(Format.png), LIMITS)
    assert time.process_time() - started < 0.5
    assert result.frames == codec.TIFF_PAGES_COUNTED and decode(result).getpixel((0, 0)) == 128


# --- keep format ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("progressive.jpg", "jpeg"),
        ("rgba.png", "png"),
        ("image.webp", "webp"),
        ("image.avif", "avif"),
        ("animated.gif", "png"),
        ("image.tiff", "png"),
    ],
)
def test_keep_writes_the_input_format(name: str, stored: str) -> None:
    result = compress(awkward(name), out(Format.keep, never_larger=False), LIMITS)
    assert result.format == stored
    assert decode(result).format == stored.upper()


# --- resize ---------------------------------------------------------------------------------------


def test_resize_fits_inside_the_box_keeping_the_aspect_ratio() -> None:
    result = compress(photo("building.jpg"), out(resize=Resize(max_width=200, max_height=200)), LIMITS)
    assert (result.width, result.height) == (200, 138)  # 868x600
    assert decode(result).size == (200, 138)
    tall = compress(photo("building.jpg"), out(resize=Resize(max_height=300)), LIMITS)
    assert (tall.width, tall.height) == (434, 300)


def test_resize_never_upscales() -> None:
    result = compress(photo("building.jpg"), out(resize=Resize(max_width=5000, max_height=5000)), LIMITS)
    assert (result.width, result.height) == (868, 600)
    prepared = prepare(photo("building.jpg"), out(resize=Resize(max_width=5000)), LIMITS)
    assert not prepared.resized


def test_shrinking_a_jpeg_decodes_it_in_draft_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    drafts: list[tuple[tuple[int, int], tuple[int, int] | None]] = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        before = self.size
        answer = original_draft(self, mode, size)
        drafts.append((before, self.size))
        return answer

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = photo("aloeL.jpg")  # 1282x1110
    result = compress(data, out(Format.jpeg, resize=Resize(max_width=300, max_height=300)), LIMITS)
    assert (result.width, result.height) == (300, 260)
    assert drafts == [((1282, 1110), (321, 278))]  # 1/4 scale: smaller than the source, not below 300x260

    drafts.clear()
    compress(data, out(Format.jpeg), LIMITS)
    assert drafts == []


def test_draft_mode_lowers_the_memory_needed() -> None:
    data = photo("aloeL.jpg")
    shrink = out(Format.jpeg, resize=Resize(max_width=300, max_height=300))
    full_size = codec.estimate_memory((1282, 1110), "RGB", (1282, 1110), fmt=Format.jpeg)
    budget = full_size // 2
    with pytest.raises(CodecError) as caught:
        compress(data, out(Format.jpeg), LIMITS, memory_budget_bytes=budget)
    assert caught.value.reason == "too_much_memory"
    assert compress(data, shrink, LIMITS, memory_budget_bytes=budget).width == 300


def test_resized_output_matches_the_source_pixels() -> None:
    data = small_photo("orange.jpg", side=256)
    source = Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS)
    image = decode(compress(data, out(Format.png, resize=Resize(max_width=64)), LIMITS)).convert("RGB")
    diffs = [
        abs(a - b)
        for x, y in ((10, 10), (32, 32), (50, 20))
        for a, b in zip(image.getpixel((x, y)), source.getpixel((x, y)), strict=True)
    ]
    assert max(diffs) <= 12


# --- neverLarger ----------------------------------------------------------------------------------


def small_jpeg(quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(small_photo())).save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def test_never_larger_stores_the_original_when_the_format_is_the_same() -> None:
    data = small_jpeg(30)
    for fmt in (Format.jpeg, Format.keep):
        result = compress(data, out(fmt, quality=95, never_larger=True), LIMITS)
        assert result.stored_original and result.data == data
        assert result.format == "jpeg" and result.quality is None
        assert (result.width, result.height) == Image.open(io.BytesIO(data)).size


def test_never_larger_false_keeps_the_larger_result() -> None:
    data = small_jpeg(30)
    result = compress(data, out(Format.jpeg, quality=95), LIMITS)
    assert not result.stored_original and len(result.data) > len(data) and result.quality == 95


def test_a_smaller_result_is_stored() -> None:
    data = photo("building.jpg")
    result = compress(data, out(Format.jpeg, quality=60, never_larger=True), LIMITS)
    assert not result.stored_original and len(result.data) < len(data)


def test_never_larger_with_another_format_stores_nothing() -> None:
    """A key named .webp must hold a WebP body, and no WebP is smaller: nothing is stored (before
    the rule of issue 18 the larger WebP was)."""
    data = small_jpeg(30)
    with pytest.raises(NotSmaller) as caught:
        compress(data, out(Format.webp, quality=100, never_larger=True), LIMITS)
    assert caught.value.reason == "not_smaller"
    message = caught.value.message
    assert "the input is jpeg, not webp" in message and f"({len(data)} bytes)" in message


def test_never_larger_keeps_the_resize_promise() -> None:
    data = small_jpeg(10)
    width, _ = Image.open(io.BytesIO(data)).size
    output = out(Format.jpeg, quality=100, resize=Resize(max_width=width - 1))
    assert len(compress(data, output, LIMITS).data) >= len(data)
    with pytest.raises(NotSmaller, match="larger than the resize box"):
        compress(data, output.model_copy(update={"never_larger": True}), LIMITS)


def test_never_larger_does_not_bring_back_stripped_metadata() -> None:
    data = jpeg_with_metadata(orientation=1, quality=30)
    with pytest.raises(NotSmaller, match="EXIF or XMP that stripMetadata drops"):
        compress(data, out(Format.jpeg, quality=100, never_larger=True), LIMITS)
    kept = compress(data, out(Format.jpeg, quality=100, strip_metadata=False, never_larger=True), LIMITS)
    assert kept.stored_original and kept.data == data


def test_never_larger_does_not_store_an_unrotated_original() -> None:
    data = jpeg_with_metadata(orientation=6, quality=30)
    with pytest.raises(NotSmaller, match="orientation"):
        compress(data, out(Format.jpeg, quality=100, strip_metadata=False, never_larger=True), LIMITS)


NEVER_LARGER_TABLE = corpus.never_larger_table()


@pytest.mark.parametrize("fmt", [*OUTPUT_FORMATS, Format.keep], ids=str)
@pytest.mark.parametrize("name", sorted(NEVER_LARGER_TABLE))
def test_never_larger_never_stores_more_bytes_than_the_input(name: str, fmt: Format) -> None:
    """Issue 18's table, for every output format: an output smaller than the input, the input's own
    bytes when they are the output asked for, or nothing (NotSmaller) — never more bytes."""
    data = NEVER_LARGER_TABLE[name]
    encoded = compress(data, out(fmt, quality=80), LIMITS)
    try:
        result = compress(data, out(fmt, quality=80, never_larger=True), LIMITS)
    except NotSmaller as skipped:
        assert len(encoded.data) >= len(data) and encoded.format != "png"  # only another format skips
        assert f"({len(data)} bytes)" in skipped.message
        return
    assert len(result.data) <= len(data)
    if result.stored_original:
        assert result.data == data and result.format == "png" == encoded.format
        assert len(encoded.data) >= len(data)
    else:
        assert result.data == encoded.data and len(encoded.data) < len(data)


@pytest.mark.parametrize("name", sorted(NEVER_LARGER_TABLE))
def test_the_tables_jpeg_outputs_were_larger_and_are_now_not_stored(name: str) -> None:
    """The regression itself: each of these PNGs made a larger JPEG that neverLarger stored."""
    data = NEVER_LARGER_TABLE[name]
    assert len(compress(data, out(Format.jpeg), LIMITS).data) > len(data)
    with pytest.raises(NotSmaller):
        compress(data, out(Format.jpeg, never_larger=True), LIMITS)


# --- quality and determinism ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [Format.jpeg, Format.webp, Format.avif], ids=str)
def test_higher_quality_gives_larger_output(fmt: Format) -> None:
    data = small_photo("baboon.jpg", side=256)
    sizes = [
        len(compress(data, out(fmt, quality=q, never_larger=False), LIMITS).data) for q in (20, 50, 80, 95)
    ]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 2, sizes


def test_prepare_once_encode_many_matches_compress() -> None:
    data = small_photo()
    output = out(Format.webp, quality=70, never_larger=False)
    prepared = prepare(data, output, LIMITS)
    assert prepared.format is Format.webp and prepared.source_format == "jpeg"
    first = encode(prepared.image, prepared.format, 70, prepared.icc_profile)
    encode(prepared.image, prepared.format, 30, prepared.icc_profile)
    again = encode(prepared.image, prepared.format, 70, prepared.icc_profile)
    assert first == again == compress(data, output, LIMITS).data


def test_compress_is_deterministic() -> None:
    data = awkward("rgba.png")
    for fmt in OUTPUT_FORMATS:
        assert compress(data, out(fmt), LIMITS) == compress(data, out(fmt), LIMITS)


@pytest.mark.parametrize(
    ("source", "resize", "expected"),
    [
        (2, None, 2),  # a 4:2:0 source stays 4:2:0 at q95: 4:4:4 would pay for chroma it lacks
        (1, None, 1),  # 4:2:2 likewise
        (0, None, 0),  # a 4:4:4 source keeps its chroma
        (2, Resize(max_width=200), 0),  # downscaled: the source's chroma resolution suffices for 4:4:4
    ],
)
def test_jpeg_output_keeps_no_more_chroma_than_its_jpeg_source(source, resize, expected) -> None:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo())).convert("RGB").resize((400, 300)).save(
        buffer, "JPEG", quality=95, subsampling=source
    )
    fields = {"resize": resize} if resize else {}
    result = compress(buffer.getvalue(), out(Format.jpeg, quality=95, never_larger=False, **fields), LIMITS)
    assert JpegImagePlugin.get_sampling(decode(result)) == expected


def test_jpeg_subsampling_follows_quality() -> None:
    png = io.BytesIO()  # a source with full chroma (a JPEG source also bounds it: see above)
    Image.open(io.BytesIO(small_photo())).save(png, "PNG")
    data = png.getvalue()
    low = decode(compress(data, out(Format.jpeg, quality=80, never_larger=False), LIMITS))
    high = decode(compress(data, out(Format.jpeg, quality=92, never_larger=False), LIMITS))
    assert JpegImagePlugin.get_sampling(low) == 2  # 4:2:0
    assert JpegImagePlugin.get_sampling(high) == 0  # 4:4:4
    assert "progressive" in low.info or "progression" in low.info


def test_encode_refuses_keep_and_bad_quality() -> None:
    image = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError):
        encode(image, Format.keep, 80, None)
    with pytest.raises(ValueError):
        encode(image, Format.jpeg, 0, None)


def test_encoder_refusal_is_an_encode_error() -> None:
    wide = Image.new("RGB", (16_384, 1))  # WebP's limit is 16383 per side
    with pytest.raises(CodecError) as caught:
        encode(wide, Format.webp, 80, None)
    assert caught.value.reason == "encode_error"
    assert "16384x1" in str(caught.value)


# --- limits ---------------------------------------------------------------------------------------


def test_gigapixel_png_is_refused_fast() -> None:
    data = awkward("gigapixel.png")
    assert len(data) < 4 * 2**20
    started = time.perf_counter()
    with pytest.raises(CodecError) as caught:
        compress(data, out(Format.webp), LIMITS)
    assert time.perf_counter() - started < 1.0
    assert caught.value.reason == "too_many_pixels"
    assert "1600000000 pixels" in str(caught.value) and "100000000" in str(caught.value)


def test_gigapixel_png_within_max_pixels_is_refused_by_the_memory_budget() -> None:
    started = time.perf_counter()
    with pytest.raises(CodecError) as caught:
        compress(awkward("gigapixel.png"), out(), Limits(max_pixels=2_000_000_000), memory_budget_bytes=2**30)
    assert time.perf_counter() - started < 1.0
    assert caught.value.reason == "too_much_memory"


@pytest.mark.parametrize("pixels_over", [0, 1])
def test_max_pixels_is_checked_exactly(pixels_over: int) -> None:
    data = small_photo(side=200)
    width, height = Image.open(io.BytesIO(data)).size
    limits = Limits(max_pixels=width * height - pixels_over)
    if pixels_over:
        with pytest.raises(CodecError) as caught:
            compress(data, out(), limits)
        assert caught.value.reason == "too_many_pixels"
    else:
        assert compress(data, out(), limits).width == width


def test_max_pixels_above_pillows_own_limit_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow warns above MAX_IMAGE_PIXELS (89 Mpx by default) and refuses above twice that;
    maxPixels decides instead, and Pillow's setting is left as it was."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = small_photo(side=200)
    result = compress(data, out(), LIMITS)
    assert result.width * result.height > 2 * 1000
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_memory_budget_refuses_before_decoding() -> None:
    with pytest.raises(CodecError) as caught:
        compress(photo("building.jpg"), out(), LIMITS, memory_budget_bytes=1_000_000)
    assert caught.value.reason == "too_much_memory"
    assert "1000000" in str(caught.value)
    assert compress(photo("building.jpg"), out(), LIMITS, memory_budget_bytes=64 * 2**20).width == 868


def test_pillow_globals_are_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    before = Image.MAX_IMAGE_PIXELS
    compress(small_photo(), out(), Limits(max_pixels=12_345_678))
    with pytest.raises(CodecError):
        compress(awkward("gigapixel.png"), out(), LIMITS)
    assert before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_is_refused_even_if_someone_allowed_truncation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(CodecError) as caught:
        compress(awkward("truncated.jpg"), out(), LIMITS)
    assert caught.value.reason == "decode_error"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_codec_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(CodecError("decode_error", "broken")))
    assert isinstance(error, CodecError)
    assert (error.reason, str(error)) == ("decode_error", "broken")


# --- properties -----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(1, 70_000),
    height=st.integers(1, 70_000),
    max_width=st.none() | st.integers(1, 65_535),
    max_height=st.none() | st.integers(1, 65_535),
)
def test_fit_inside_fits_and_never_upscales(
    width: int, height: int, max_width: int | None, max_height: int | None
) -> None:
    new_width, new_height = codec.fit_inside((width, height), max_width, max_height)
    assert 1 <= new_width <= width and 1 <= new_height <= height
    assert max_width is None or new_width <= max_width
    assert max_height is None or new_height <= max_height
    if (max_width is None or width <= max_width) and (max_height is None or height <= max_height):
        assert (new_width, new_height) == (width, height)
    elif min(new_width, new_height) > 1:
        # The aspect ratio is kept to within rounding and the box's limiting side is filled.
        assert abs(new_width / new_height - width / height) <= (width / height) * (
            1 / new_width + 1 / new_height
        )
        assert new_width == max_width or new_height == max_height


def _jpeg_with_orientation(size: tuple[int, int], orientation: int) -> bytes:
    image = corpus._photo_like(size)
    exif = Image.Exif()
    exif[corpus.ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85, exif=exif.tobytes())
    return buffer.getvalue()


@settings(max_examples=50, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    orientation=st.integers(1, 8),
    max_width=st.none() | st.integers(1, 400),
    max_height=st.none() | st.integers(1, 400),
    fmt=st.sampled_from([Format.jpeg, Format.webp, Format.png, Format.keep]),
)
def test_output_fits_the_box_and_never_grows(
    width: int,
    height: int,
    orientation: int,
    max_width: int | None,
    max_height: int | None,
    fmt: Format,
) -> None:
    data = _jpeg_with_orientation((width, height), orientation)
    shown = (height, width) if orientation >= 5 else (width, height)
    output = out(fmt, resize=Resize(max_width=max_width, max_height=max_height), never_larger=True)
    try:
        result = compress(data, output, LIMITS)
    except NotSmaller:
        return
    assert len(result.data) <= len(data)
    image = decode(result)
    assert image.size == (result.width, result.height)
    if not result.stored_original:
        assert result.width <= shown[0] and result.height <= shown[1]
        assert max_width is None or result.width <= max_width
        assert max_height is None or result.height <= max_height
        assert image.getexif().get(corpus.ORIENTATION_TAG, 1) == 1
    else:
        assert orientation == 1 and image.size == (width, height)


FUZZ_LIMITS = Limits(max_pixels=4_000_000)
FUZZ_BUDGET = 256 * 2**20


def _survives(data: bytes, fmt: Format) -> None:
    try:
        result = compress(data, out(fmt, never_larger=True), FUZZ_LIMITS, memory_budget_bytes=FUZZ_BUDGET)
    except CodecError as error:
        assert error.reason in codec.REASONS
    except NotSmaller:
        pass
    else:
        assert isinstance(result, Compressed) and result.data


@settings(max_examples=50, deadline=3000)
@given(data=st.binary(max_size=4096), fmt=st.sampled_from(OUTPUT_FORMATS))
def test_random_bytes_never_raise_anything_but_codec_error(data: bytes, fmt: Format) -> None:
    _survives(data, fmt)


SEEDS = {
    name: data
    for name, (data, reason) in AWKWARD.items()
    if reason is None and name.rsplit(".", 1)[-1] in {"jpg", "png", "gif", "webp", "avif", "tiff"}
}


@settings(max_examples=60, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.none() | st.floats(0.05, 1.0),
    fmt=st.sampled_from([Format.jpeg, Format.webp, Format.png]),
)
def test_mutated_images_never_raise_anything_but_codec_error(
    seed: str, edits: list[tuple[float, int]], cut: float | None, fmt: Format
) -> None:
    data = bytearray(SEEDS[seed])
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: max(1, int(cut * len(data)))]
    _survives(bytes(data), fmt)


# --- automatic quality (targetSSIM) ---------------------------------------------------------------


def stored_ssim(data: bytes, output: Output, result: Compressed) -> float:
    """SSIM of the stored bytes against the prepared source, measured from scratch."""
    reference = ssim.luma(prepare(data, output, LIMITS).image)
    return ssim.ssim(reference, ssim.luma(decode(result)))


@pytest.mark.parametrize("fmt", [Format.jpeg, Format.webp, Format.avif], ids=str)
def test_target_ssim_stores_the_lowest_quality_that_meets_the_floor(fmt: Format) -> None:
    data = small_photo("baboon.jpg", side=256)
    output = out(fmt, target_ssim=0.95, never_larger=False)
    result = compress(data, output, LIMITS)
    search = quality.SEARCH[fmt]
    assert search.lowest <= result.quality <= search.highest and result.reason == ""
    assert result.ssim is not None and result.ssim >= 0.95
    # What is stored (for JPEG: re-encoded with optimize + progressive after a baseline
    # measurement) decodes to exactly what was measured.
    assert stored_ssim(data, output, result) == pytest.approx(result.ssim, abs=1e-9)
    # Both floors: luma, and chroma (WebP, 4:2:0 only, climbs for the mandrill's colour).
    assert result.chroma_ssim is not None and result.chroma_ssim >= quality.CHROMA_FLOOR
    full = [a for a in result.attempts if a.full]
    met = [a for a in full if a.ssim >= 0.95 and a.chroma >= quality.CHROMA_FLOOR]
    assert result.quality == min(a.quality for a in met)
    below = [a for a in full if a.quality < result.quality]
    assert not set(below) & set(met)


def test_target_ssim_jpeg_is_stored_optimized_and_progressive() -> None:
    data = small_photo()
    result = compress(data, out(Format.jpeg, target_ssim=0.97, never_larger=False), LIMITS)
    image = decode(result)
    assert "progressive" in image.info or "progression" in image.info
    fixed = compress(data, out(Format.jpeg, quality=result.quality, never_larger=False), LIMITS)
    assert result.data == fixed.data


def test_baseline_jpeg_decodes_to_the_pixels_of_the_stored_jpeg() -> None:
    assert codec.jpeg_measures_exactly()
    image = prepare(photo("aloeL.jpg"), out(Format.jpeg), LIMITS).image
    for q in (35, 70, 89, 90, 95):
        measured = encode(image, Format.jpeg, q, None, measure_only=True)
        stored = encode(image, Format.jpeg, q, None)
        assert len(measured) > len(stored)
        assert Image.open(io.BytesIO(measured)).tobytes() == Image.open(io.BytesIO(stored)).tobytes()


def test_an_unreachable_floor_stores_the_best_attempt_with_a_reason() -> None:
    pixels = 128 + np.random.default_rng(3).normal(0, 6, (300, 300, 3))
    grain = Image.fromarray(pixels.clip(0, 255).astype("uint8"))
    buffer = io.BytesIO()
    grain.save(buffer, "PNG")
    result = compress(buffer.getvalue(), out(Format.jpeg, target_ssim=0.99), LIMITS)
    assert result.reason == "quality_floor_unreachable"
    assert result.quality == quality.SEARCH[Format.jpeg].highest and result.ssim < 0.99
    assert not result.stored_original and result.format == "jpeg"


def test_target_ssim_then_never_larger_stores_the_original() -> None:
    """The lowest quality meeting the floor against a q30 JPEG's own pixels is larger than it: the
    original is stored (it is the source: SSIM 1), without a quality."""
    data = small_jpeg(30)
    result = compress(data, out(Format.jpeg, target_ssim=0.995, never_larger=True), LIMITS)
    assert result.stored_original and result.data == data
    assert result.quality is None and result.ssim == 1.0 and result.reason == ""
    assert any(a.full for a in result.attempts)
    assert not compress(data, out(Format.jpeg, target_ssim=0.995), LIMITS).stored_original


def test_fixed_quality_carries_no_ssim() -> None:
    result = compress(small_photo(), out(Format.jpeg, quality=80), LIMITS)
    assert result.ssim is None and result.reason == "" and result.attempts == ()


def test_automatic_quality_counts_in_the_memory_estimate() -> None:
    data = photo("aloeL.jpg")
    needed = codec.estimate_memory((1282, 1110), "RGB", (1282, 1110), fmt=Format.jpeg)
    searching = codec.estimate_memory((1282, 1110), "RGB", (1282, 1110), auto_quality=True, fmt=Format.jpeg)
    held = quality.SEARCH[Format.jpeg].max_full * memory.output_memory(Format.jpeg, (1282, 1110))
    assert searching == needed + 1282 * 1110 * codec.AUTO_QUALITY_BYTES_PER_PIXEL + held
    budget = (needed + searching) // 2
    assert compress(data, out(Format.jpeg), LIMITS, memory_budget_bytes=budget).quality == 80
    with pytest.raises(CodecError) as caught:
        compress(data, out(Format.jpeg, target_ssim=0.98), LIMITS, memory_budget_bytes=budget)
    assert caught.value.reason == "too_much_memory"


def test_noisy_jpeg_at_high_quality_fits_pillows_buffer() -> None:
    """Pillow buffers a whole optimized progressive JPEG in max(64 KiB, w*h) bytes: random noise at
    q90+ (4:4:4) needs ~2-3 bytes per pixel and used to fail as encode_error."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    for q in (90, 100):
        data = encode(noise, Format.jpeg, q, None)
        assert len(data) > 65536 and Image.open(io.BytesIO(data)).size == (200, 200)
    assert ImageFile.MAXBLOCK == 65536  # restored


# --- opt-in input formats -------------------------------------------------------------------------

OPT_IN = corpus.opt_in_inputs()
EVERY_INPUT_FORMAT = tuple(InputFormat)


@pytest.mark.parametrize("name", sorted(OPT_IN))
def test_an_opt_in_format_decodes_when_allowed(name: str) -> None:
    """Allowed by the installation and chosen by the job, each opt-in format decodes to exactly the
    pixels Pillow (or pillow-heif) reads from it; PSD's are its flattened composite."""
    data, fmt = OPT_IN[name]
    limits = Limits(input_formats=[fmt])
    result = compress(data, out(Format.png), limits, allowed_input_formats=EVERY_INPUT_FORMAT)
    assert result.format == "png" and result.frames == 1
    with Image.open(io.BytesIO(data)) as source:
        expected = source.convert("RGBA")
    assert decode(result).convert("RGBA").tobytes() == expected.tobytes()
    kept = compress(data, out(Format.keep), limits, allowed_input_formats=EVERY_INPUT_FORMAT)
    assert kept.format == ("jpeg" if fmt in ("heif", "jpeg2000") else "png") == decode(kept).format.lower()


@pytest.mark.parametrize("name", sorted(OPT_IN))
def test_an_opt_in_format_is_refused_naming_the_setting_that_allows_it(name: str) -> None:
    data, fmt = OPT_IN[name]
    with pytest.raises(CodecError) as by_job:  # the installation allows it, the job did not choose it
        compress(data, out(), LIMITS, allowed_input_formats=EVERY_INPUT_FORMAT)
    assert by_job.value.reason == "unsupported_format"
    assert f"add {fmt} to spec.limits.inputFormats" in by_job.value.message
    with pytest.raises(CodecError) as by_installation:  # the job chose it, the installation does not allow it
        compress(data, out(), Limits(input_formats=[fmt]))
    refused = by_installation.value
    assert refused.reason == "unsupported_format"
    assert "chart value allowedInputFormats (KOMPRESSOR_ALLOWED_INPUT_FORMATS)" in refused.message


def test_a_heic_is_named_in_a_process_where_pillow_heif_was_never_registered() -> None:
    """A worker whose job does not accept HEIF never loads pillow-heif: HEIC is named by its brand."""
    script = (
        "import sys; from kompressor.crd import Limits, Output; from kompressor_worker import codec\n"
        "try: codec.compress(sys.stdin.buffer.read(), Output(), Limits())\n"
        "except codec.CodecError as e: print(e.reason, e.message)\n"
        "print('pillow_heif' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], input=OPT_IN["image.heic"][0], capture_output=True, check=True
    )
    refusal, loaded = run.stdout.decode().splitlines()
    assert refusal.startswith("unsupported_format heif inputs are not allowed by this installation")
    assert loaded == "False"


def heic(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "HEIF", quality=90, **params)
    return buffer.getvalue()


HEIF_ONLY = Limits(input_formats=[InputFormat.heif])


def test_heic_orientation_is_applied_as_for_jpeg() -> None:
    """An iPhone-style HEIC with EXIF orientation 6: the output is upright, orientation 1, whether the
    metadata is stripped or kept (pillow-heif applies the rotation, as the codec does for JPEG)."""
    photo = Image.open(io.BytesIO(small_photo(side=96))).convert("RGB")
    exif = Image.Exif()
    exif[corpus.ORIENTATION_TAG] = 6
    data = heic(photo, exif=exif.tobytes())
    upright = photo.transpose(Image.Transpose.ROTATE_270)
    for strip in (True, False):
        output = out(Format.png, strip_metadata=strip)
        result = compress(data, output, HEIF_ONLY, allowed_input_formats=EVERY_INPUT_FORMAT)
        image = decode(result).convert("RGB")
        assert image.size == upright.size
        assert image.getexif().get(corpus.ORIENTATION_TAG, 1) == 1
        difference = np.abs(np.asarray(image, dtype=float) - np.asarray(upright, dtype=float)).mean()
        assert difference < 6, difference  # HEVC at q90; the unrotated picture differs by ~60


def test_heic_icc_profile_is_kept_as_for_jpeg() -> None:
    data = heic(Image.open(io.BytesIO(small_photo(side=96))).convert("RGB"), icc_profile=corpus.srgb_icc())
    for fmt in OUTPUT_FORMATS:
        result = compress(data, out(fmt), HEIF_ONLY, allowed_input_formats=EVERY_INPUT_FORMAT)
        assert decode(result).info.get("icc_profile") == corpus.srgb_icc(), fmt


def test_eps_is_never_decoded() -> None:
    """EPS goes to Ghostscript in Pillow: no setting allows it, and no input format names it."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, "EPS")
    with pytest.raises(CodecError) as caught:
        compress(buffer.getvalue(), out(), LIMITS, allowed_input_formats=EVERY_INPUT_FORMAT)
    assert caught.value.reason == "unsupported_format" and "never accepted" in caught.value.message
