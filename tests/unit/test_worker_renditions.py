"""Renditions in the pool child (kompressor_worker.renditions): one decode, every (width, format)
made under the one-output rules, widths above the source skipped, the whole set admitted by memory,
and one output's failure ending that output only."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from kompressor.crd import Format, Limits, Output, Resize
from kompressor.renditions import WOULD_UPSCALE
from kompressor_worker import codec, renditions
from tests.corpus import animated_gif, awkward_inputs, exif_rotated_jpeg, palette_transparent_png, real_photos


def _outputs(widths, formats, **settings) -> list[Output]:
    return [
        Output(format=fmt, resize=Resize(max_width=width), **settings) for width in widths for fmt in formats
    ]


@pytest.fixture(scope="module")
def photo() -> bytes:
    photos = real_photos(limit=1)
    if not photos:
        pytest.skip("opencv-doc's photos are not installed")
    return next(iter(photos.values()))


def test_every_width_and_format_from_one_decode_as_a_one_output_job_would_size_and_encode_it(
    photo, monkeypatch
):
    decodes = []
    real_prepare = codec.prepare
    monkeypatch.setattr(codec, "prepare", lambda *a, **k: decodes.append(1) or real_prepare(*a, **k))
    outputs = _outputs((480, 240), (Format.webp, Format.jpeg, Format.avif), quality=80)
    made = renditions.make(photo, outputs, Limits())
    assert len(decodes) == 1
    for output, one in zip(outputs, made, strict=True):
        assert one.compressed is not None, one
        alone = codec.compress(photo, output, Limits())
        assert one.compressed.format == output.format.value == alone.format
        assert (one.compressed.width, one.compressed.height) == (alone.width, alone.height)
        assert Image.open(io.BytesIO(one.compressed.data)).size == (alone.width, alone.height)
        # The same rules, from a larger decode: within a few percent of the one-output bytes.
        assert abs(len(one.compressed.data) - len(alone.data)) <= 0.1 * len(alone.data)
        assert one.compressed.quality == 80


def test_a_width_above_the_source_is_skipped_never_upscaled_and_the_source_width_is_kept():
    made = renditions.make(
        palette_transparent_png(), _outputs((128, 64, 32), (Format.png, Format.webp)), Limits()
    )
    assert [(m.skipped, m.reason) for m in made[:2]] == [(True, WOULD_UPSCALE)] * 2
    assert "64 px wide" in made[0].message
    sizes = [(m.compressed.width, m.compressed.height) for m in made[2:] if m.compressed]
    assert sizes == [(64, 48), (64, 48), (32, 24), (32, 24)]
    # The palette PNG kept at its size keeps its palette; derived widths keep its transparency.
    assert Image.open(io.BytesIO(made[2].compressed.data)).mode == "P"
    assert Image.open(io.BytesIO(made[5].compressed.data)).mode == "RGBA"


def test_widths_apply_to_the_picture_as_displayed():
    """Stored 96x48 with orientation 6: shown 48 wide, so 48 is kept and 64 would upscale."""
    made = renditions.make(
        exif_rotated_jpeg(), _outputs((64, 48, 24), (Format.jpeg,), neverLarger=False), Limits()
    )
    assert made[0].reason == WOULD_UPSCALE
    assert [(m.compressed.width, m.compressed.height) for m in made[1:]] == [(48, 96), (24, 48)]


def test_one_output_that_cannot_be_made_ends_alone(photo):
    """neverLarger stores nothing for one output (PNG of a photo is never smaller): the others are made."""
    made = renditions.make(
        photo, _outputs((320,), (Format.png, Format.webp)) + _outputs((16,), (Format.png,)), Limits()
    )
    assert (made[0].skipped, made[0].reason) == (True, "not_smaller")
    assert made[1].compressed is not None and made[2].compressed is not None


def test_the_whole_set_is_admitted_by_memory_before_decoding(photo):
    outputs = _outputs((480, 240), (Format.webp, Format.avif), targetSSIM=0.98)
    image = Image.open(io.BytesIO(photo))
    one = codec.estimate_memory(image.size, image.mode, (480, 360), True, fmt=Format.webp)
    whole = renditions.set_memory(outputs, image.size, image.mode, (480, 360))
    assert whole > one
    with pytest.raises(codec.CodecError) as caught:
        renditions.make(photo, outputs, Limits(), memory_budget_bytes=(one + whole) // 2)
    assert caught.value.reason == "too_much_memory"
    assert all(m.compressed for m in renditions.make(photo, outputs, Limits(), memory_budget_bytes=whole * 2))


def test_an_input_that_cannot_be_decoded_fails_the_set():
    with pytest.raises(codec.CodecError) as caught:
        renditions.make(b"not an image", _outputs((64,), (Format.webp,)), Limits())
    assert caught.value.reason == "decode_error"


def test_an_animation_is_kept_as_animated_webp_or_gives_its_first_frame():
    gif = animated_gif()  # three 40x30 frames: red, green, blue
    outputs = _outputs((20,), (Format.webp, Format.webp, Format.png), neverLarger=False)
    kept, first, png = renditions.make(gif, outputs, Limits(), animated=[True, False, True])
    with Image.open(io.BytesIO(kept.compressed.data)) as image:
        assert (image.format, image.n_frames, image.size) == ("WEBP", 3, (20, 15))
        image.seek(2)
        assert image.convert("RGB").getpixel((10, 7))[2] > 200  # the last frame is blue
    assert kept.compressed.frames == first.compressed.frames == png.compressed.frames == 3
    for one in (first, png):  # firstFrame, and a format that has no animation here
        with Image.open(io.BytesIO(one.compressed.data)) as image:
            assert getattr(image, "n_frames", 1) == 1 and image.convert("RGB").getpixel((10, 7))[0] > 200


def test_an_animation_over_the_memory_budget_fails_that_output_alone():
    gif = animated_gif()
    output = _outputs((20,), (Format.webp,), neverLarger=False)[0]
    prepared = codec.prepare(gif, output, Limits())
    assert renditions.animate(gif, prepared, output, (20, 15), None).compressed is not None
    tight = renditions.animate(gif, prepared, output, (20, 15), memory_budget_bytes=100)
    assert (tight.compressed, tight.reason) == (None, "too_much_memory")


def _derived_one_by_one(data: bytes, outputs: list[Output]) -> list[bytes | None]:
    """What `make` stored before it resized once per width: each output derived on its own from
    the widest prepared image (`codec.derive` resizing it again for every format of a width)."""
    widest = max(o.resize.max_width for o in outputs)
    base = Output(
        format=Format.png, resize=Resize(max_width=widest), strip_metadata=False, never_larger=False
    )
    prepared = codec.prepare(data, base, Limits())
    made = []
    for output in outputs:
        if not prepared.resized and output.resize.max_width > prepared.image.width:
            made.append(None)  # would_upscale
            continue
        size = codec.fit_inside(prepared.image.size, output.resize.max_width, None)
        made.append(codec.finish(codec.derive(prepared, output, size), data, output).data)
    return made


_SHARED_RESIZE_INPUTS = sorted(name for name, (_, reason) in awkward_inputs().items() if reason is None)


@pytest.mark.parametrize("name", _SHARED_RESIZE_INPUTS)
def test_resizing_once_per_width_stores_the_same_bytes_as_one_derive_per_output(name):
    """Every mode an input comes in (palette with transparency, 1-bit, grey, grey+alpha, RGBA, CMYK,
    16-bit, rotated by EXIF, animated): the formats of one width share its resize, byte for byte."""
    data = awkward_inputs()[name][0]
    outputs = _outputs((48, 32, 16), (Format.png, Format.webp, Format.jpeg, Format.avif), neverLarger=False)
    made = renditions.make(data, outputs, Limits())
    assert [m.compressed.data if m.compressed else None for m in made] == _derived_one_by_one(data, outputs)
    assert any(m.compressed for m in made)


def test_a_photos_formats_of_one_width_share_its_resize_and_store_the_same_bytes(photo, monkeypatch):
    outputs = _outputs((240, 160, 80), (Format.avif, Format.webp, Format.jpeg), quality=80)
    expected = _derived_one_by_one(photo, outputs)
    sizes = []
    resize = Image.Image.resize
    monkeypatch.setattr(
        Image.Image,
        "resize",
        lambda self, size, *a, **k: sizes.append(tuple(size)) or resize(self, size, *a, **k),
    )
    made = renditions.make(photo, outputs, Limits())
    # One resize per width (the widest in the decode, each narrower one once), not one per output.
    assert len(sizes) == len(set(sizes)) == 3
    assert [m.compressed.data for m in made] == expected
