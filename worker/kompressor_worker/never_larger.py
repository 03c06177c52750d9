"""neverLarger: what a job stores when the encoded output is not smaller than its input.

The rule (the same in the CRD's description of `output.neverLarger`, the README and the manifest):
with neverLarger, no object larger than its input is ever stored. In order:

1. the encoded output, when it is smaller than the input;
2. else the input's own bytes, when they already are the output the job asked for: the output's
   format, no resize and no orientation to apply, one frame, and no EXIF or XMP that
   `stripMetadata` drops. They go under the planned key with the output's Content-Type, and the
   result says `storedOriginal`;
3. else nothing: the input is `skipped` with reason `not_smaller`, and the message names what kept
   the input's bytes out (its format, its size, its frames, its metadata).

Why a skip and not the source's bytes under another key (`a.png` beside the `a.jpg`s): a CDN bucket
is served by URL, and its users build those URLs from the job's promise — every key ends in the
output's extension, holds that format, fits the resize box and carries no stripped metadata. An
object under another extension is one nobody links to, may be a format browsers do not show (TIFF,
PSD, HEIC inputs), and would break the redelivery and `existing: skip` checks that look at the
planned key. A skip keeps the bucket true to the job; the source (which is never larger) stays the
object to serve, and the manifest lists each such input with its reason and both sizes.

It must never do I/O or look at pixels: it decides from sizes and the facts the codec found.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kompressor.reasons import Reason

REASON = Reason.not_smaller


class Store(StrEnum):
    """What neverLarger stores: the encoded output, the input's own bytes, or nothing."""

    encoded = "encoded"
    original = "original"
    nothing = "nothing"


@dataclass(frozen=True)
class Decision:
    """What neverLarger stores for one output, and why when it stores nothing."""

    store: Store
    message: str = ""  # for Store.nothing: a sentence for people, with both sizes and the cause


@dataclass(frozen=True)
class Source:
    """What the codec found out about an input, against what the job asked for."""

    format: str  # the input's format: jpeg, png, webp, gif, tiff, avif, bmp, ...
    output_format: str  # the concrete output format: jpeg, webp, avif or png
    resized: bool  # the resize box shrinks it
    reoriented: bool  # an EXIF orientation other than 1 is applied to its pixels
    frames: int
    metadata_to_strip: bool  # stripMetadata, and the input carries EXIF or XMP


class NotSmaller(Exception):
    """neverLarger stored nothing: neither the output nor the input's own bytes may be stored."""

    reason = REASON

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple[type[NotSmaller], tuple[str]]:
        # Crosses process boundaries (the worker's pool) intact.
        return (NotSmaller, (self.message,))


def why_not_original(source: Source) -> str | None:
    """Why the input's own bytes are not the output the job asked for; None when they are."""
    if source.format != source.output_format:
        return f"the input is {source.format}, not {source.output_format}"
    if source.resized:
        return "the input is larger than the resize box"
    if source.reoriented:
        return "the input's EXIF orientation must be applied to its pixels"
    if source.frames != 1:
        return f"the input has {source.frames} frames and the output one"
    if source.metadata_to_strip:
        return "the input carries EXIF or XMP that stripMetadata drops"
    return None


def decide(never_larger: bool, input_bytes: int, encoded_bytes: int, source: Source) -> Decision:
    """What to store for one input (see the module docstring). Never an object larger than
    `input_bytes` when `never_larger`."""
    if not never_larger or encoded_bytes < input_bytes:
        return Decision(Store.encoded)
    why = why_not_original(source)
    if why is None:
        return Decision(Store.original)
    return Decision(
        Store.nothing,
        f"the {source.output_format} output ({encoded_bytes} bytes) is not smaller than the input "
        f"({input_bytes} bytes) and {why}: nothing stored (neverLarger); the source is the one to serve",
    )
