"""Renditions in the pool child: one decode of an input, every (width, format) output from it.

What it is for: the data-plane half of `spec.renditions`. The input is decoded once, shrunk on load
(JPEG `draft`) and resized for the widest width it needs; each width is resized from that, and each
(width, format) is finished under the one-output rules (`codec.finish`: fixed or automatic quality
with its floor, neverLarger against the source's bytes, the metadata policy of its set).

- Never upscaled: a width above the source's, as displayed, is skipped with reason would_upscale
  (kompressor.renditions.WOULD_UPSCALE). A source exactly that wide is kept at its size.
- Memory: the whole set is admitted before anything is decoded (`set_memory`): the decode, the
  widest prepared image, every output held until the task returns, and the costliest single output
  (its resized copy, its encoder, its quality search).
- One output that cannot be made (its encoder refuses, neverLarger stores nothing) ends that output
  with its reason; the others are still made. An input that cannot be decoded fails them all
  (CodecError from `make`).

It must never do I/O: bytes and settings in, outputs out, like the codec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

from kompressor.crd import WEB_INPUT_FORMATS, Format, InputFormat, Limits, Output, Resize
from kompressor.renditions import WOULD_UPSCALE
from kompressor_worker import codec, memory
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
) -> list[Made]:
    """Each output of `outputs` (a rendition each: format, resize.maxWidth, quality or targetSSIM,
    metadata, neverLarger) from one decode of `data`, in their order. Raises CodecError when the
    input cannot be decoded within its limits."""
    widest = max(output.resize.max_width or 0 for output in outputs)

    def needs(size: tuple[int, int], mode: str, target: tuple[int, int]) -> int:
        return set_memory(outputs, size, mode, target)

    # PNG: a mode every output format is derived from; metadata kept until each output's policy drops it.
    base = Output(
        format=Format.png, resize=Resize(max_width=widest), strip_metadata=False, never_larger=False
    )
    prepared = codec.prepare(data, base, limits, memory_budget_bytes, allowed_input_formats, needs)
    shown_width = None if prepared.resized else prepared.image.width  # None: wider than every width
    made = []
    for output in outputs:
        width = output.resize.max_width or prepared.image.width
        if shown_width is not None and width > shown_width:
            made.append(
                Made(skipped=True, reason=WOULD_UPSCALE, message=f"the source is {shown_width} px wide")
            )
            continue
        size = codec.fit_inside(prepared.image.size, width, None)
        try:
            compressed = codec.finish(codec.derive(prepared, output, size), data, output)
        except codec.CodecError as exc:
            made.append(Made(reason=exc.reason, message=exc.message))
        except NotSmaller as exc:
            made.append(Made(skipped=True, reason=exc.reason, message=exc.message))
        else:
            # The automatic-quality search's trail stays here: nothing downstream reads it.
            made.append(Made(compressed=dataclasses.replace(compressed, attempts=())))
    return made
