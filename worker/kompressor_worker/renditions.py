"""Renditions in the pool child: one decode of an input, every (width, format) output from it.

What it is for: the data-plane half of `spec.renditions`. The input is decoded once, shrunk on load
(JPEG `draft`) and resized for the widest width it needs; each width is resized from that once, and each
(width, format) is finished under the one-output rules (`codec.finish`: fixed or automatic quality
with its floor, neverLarger against the source's bytes, the metadata policy of its set).

- Never upscaled: a width above the source's, as displayed, is skipped with reason would_upscale
  (kompressor.renditions.WOULD_UPSCALE). A source exactly that wide is kept at its size.
- Memory: the whole set is admitted before anything is decoded (`set_memory`): the decode, the
  widest prepared image, every output held until the task returns, and the costliest single output
  (its resized copy, its encoder, its quality search).
- Animation: an output whose set says `animation: keep` and whose format is webp, of an animated
  input (GIF, WebP), is an animated WebP (`animate`): every frame resized, durations and loop
  kept, no EXIF or XMP. An input with an EXIF orientation still gives its first frame. Other
  outputs take the first frame, as one-output jobs do. Every Compressed says the input's frames.
- One output that cannot be made (its encoder refuses, neverLarger stores nothing) ends that output
  with its reason; the others are still made. An input that cannot be decoded fails them all
  (CodecError from `make`).

It must never do I/O: bytes and settings in, outputs out, like the codec.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Collection, Sequence

from PIL import Image, ImageSequence

from kompressor.crd import WEB_INPUT_FORMATS, Format, InputFormat, Limits, Output, Resize
from kompressor.reasons import Reason
from kompressor.renditions import WOULD_UPSCALE
from kompressor_worker import codec, memory
from kompressor_worker.never_larger import REASON as NOT_SMALLER
from kompressor_worker.never_larger import NotSmaller


@dataclasses.dataclass(frozen=True)
class Made:
    """One output's end: `compressed` to store, or a `reason` (and message) it was not made."""

    compressed: codec.Compressed | None = None
    skipped: bool = False  # else, with no `compressed`: failed
    reason: str = ""
    message: str = ""


def set_memory(outputs: Sequence[Output], size: tuple[int, int], mode: str, widest: tuple[int, int]) -> int:
    """Bytes to decode an image of `size` and `mode`, prepare it at `widest` and make every output
    from it: the worst single output's estimate (`codec.estimate_memory`), plus the widest prepared
    image it is derived from and every output held until the task returns."""
    per_output, held = 0, 0
    for output in outputs:
        target = codec.fit_inside(widest, output.resize.max_width, None)
        searching = output.target_ssim is not None
        per_output = max(per_output, codec.estimate_memory(size, mode, target, searching, fmt=output.format))
        held += memory.output_memory(output.format, target)
    return per_output + widest[0] * widest[1] * 4 + held


def make(
    data: bytes,
    outputs: Sequence[Output],
    limits: Limits,
    memory_budget_bytes: int | None = None,
    allowed_input_formats: Collection[InputFormat] = WEB_INPUT_FORMATS,
    animated: Sequence[bool] = (),
) -> list[Made]:
    """Each output of `outputs` (a rendition each: format, resize.maxWidth, quality or targetSSIM,
    metadata, neverLarger) from one decode of `data`, in their order; `animated[i]`: output i (a
    webp) keeps an animated input's frames. Raises CodecError when the input cannot be decoded
    within its limits."""
    keep = list(animated) + [False] * (len(outputs) - len(animated))
    widest = max(output.resize.max_width or 0 for output in outputs)

    def needs(size: tuple[int, int], mode: str, target: tuple[int, int]) -> int:
        return set_memory(outputs, size, mode, target)

    # PNG: a mode every output format is derived from; metadata kept until each output's policy drops it.
    base = Output(
        format=Format.png, resize=Resize(max_width=widest), strip_metadata=False, never_larger=False
    )
    prepared = codec.prepare(data, base, limits, memory_budget_bytes, allowed_input_formats, needs)
    shown_width = None if prepared.resized else prepared.image.width  # None: wider than every width
    # The current width's resize, shared by its formats: outputs come width by width (the
    # planner's order), so each width is resized once, not once per format.
    sized = prepared
    made = []
    for output, keep_frames in zip(outputs, keep, strict=True):
        width = output.resize.max_width or prepared.image.width
        if shown_width is not None and width > shown_width:
            made.append(
                Made(skipped=True, reason=WOULD_UPSCALE, message=f"the source is {shown_width} px wide")
            )
            continue
        size = codec.fit_inside(prepared.image.size, width, None)
        try:
            if (
                keep_frames
                and output.format is Format.webp
                and prepared.frames > 1
                and not prepared.reoriented
            ):
                made.append(animate(data, prepared, output, size, memory_budget_bytes))
                continue
            if sized.image.size != size:
                sized = codec.resize_to(prepared, size)
            compressed = codec.finish(codec.derive(sized, output, size), data, output)
        except codec.CodecError as exc:
            made.append(Made(reason=exc.reason, message=exc.message))
        except NotSmaller as exc:
            made.append(Made(skipped=True, reason=exc.reason, message=exc.message))
        else:
            # The automatic-quality search's trail stays here: nothing downstream reads it.
            made.append(Made(compressed=dataclasses.replace(compressed, attempts=())))
    return made


def animate(
    data: bytes,
    prepared: codec.Prepared,
    output: Output,
    size: tuple[int, int],
    memory_budget_bytes: int | None,
) -> Made:
    """An animated input as an animated WebP of `size`: every frame resized, each frame's duration
    and the loop count kept, no EXIF or XMP. The quality is `output.quality`, or with targetSSIM the
    one automatic quality chooses for the first frame. neverLarger: not smaller than the input is
    skipped (not_smaller)."""
    frames = prepared.frames
    source = prepared.source_size[0] * prepared.source_size[1]
    needed = frames * (source + size[0] * size[1]) * 4 + memory.encoder_memory(Format.webp, size)
    if memory_budget_bytes is not None and needed > memory_budget_bytes:
        return Made(
            reason=Reason.too_much_memory,
            message=f"{frames} frames at {size[0]}x{size[1]} need about {needed} bytes, more than this "
            f"worker's budget of {memory_budget_bytes} bytes",
        )
    if output.target_ssim is not None:
        quality = codec.choose_quality(codec.derive(prepared, output, size), output.target_ssim).quality
    else:
        quality = output.effective_quality
    try:
        # The formats and the pixel limit were checked by `codec.prepare`, from the same bytes.
        with Image.open(io.BytesIO(data)) as image:
            durations, pictures = [], []
            for frame in ImageSequence.Iterator(image):
                durations.append(int(frame.info.get("duration") or 100))
                picture = frame.convert("RGBA")
                pictures.append(
                    picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=codec.RESIZE_REDUCING_GAP)
                )
            loop = int(image.info.get("loop", 0) or 0)
        buffer = io.BytesIO()
        pictures[0].save(
            buffer,
            "WEBP",
            save_all=True,
            append_images=pictures[1:],
            duration=durations,
            loop=loop,
            quality=quality,
            method=codec.WEBP_METHOD,
        )
    except MemoryError:
        return Made(reason=Reason.too_much_memory, message="encoding the animation ran out of memory")
    except Exception as exc:
        return Made(reason=Reason.encode_error, message=f"the animated webp encoder refused it: {exc}")
    encoded = buffer.getvalue()
    if output.never_larger and len(encoded) >= len(data):
        return Made(
            skipped=True,
            reason=NOT_SMALLER,
            message=f"the animated webp output ({len(encoded)} bytes) is not smaller than the input "
            f"({len(data)} bytes): nothing stored (neverLarger)",
        )
    compressed = codec.Compressed(
        data=encoded,
        format=Format.webp.value,
        width=size[0],
        height=size[1],
        quality=quality,
        stored_original=False,
        frames=frames,
    )
    return Made(compressed=compressed)
