"""Renditions: one input expanded into every (name, width, format) output a job asks for, with keys.

What it is for: the planning half of `spec.renditions`, shared by the fan-out (the task it
publishes) and the docs: which outputs an input has, in which order, under which keys. The worker
decodes once and makes them (kompressor_worker.renditions); the result reader counts each
(input, rendition) once.

A spec whose outputs of one input would share a key is refused at admission (crd.py, with
`keys.collisions`); keys of two inputs that meet (photo.jpg and photo.png under a template
without {file} or {srcext}) are refused per input by the workers as `output_collision`.

It must never do I/O: spec and source in, planned renditions out.
"""

from __future__ import annotations

from kompressor import keys
from kompressor.crd import Animation, CompressionJobSpec, Format
from kompressor.messages import PlannedRendition, SourceObject, relative_name, templated_key
from kompressor.reasons import Reason

WOULD_UPSCALE = Reason.would_upscale
"""Skip reason of a width above the source's: kompressor never upscales (docs/renditions.md)."""


def plan_renditions(
    spec: CompressionJobSpec, source: SourceObject, source_prefix: str
) -> list[PlannedRendition]:
    """Every output of `source` under `spec.renditions`, widest first within each set."""
    if not spec.renditions:
        return []
    path = relative_name(source, source_prefix)
    return [
        PlannedRendition(
            name=rendition.name,
            width=width,
            key=templated_key(
                spec.destination,
                path,
                name=rendition.name,
                width=width,
                format=output.format.value,
                ext=keys.EXTENSIONS[output.format.value],
            ),
            output=output,
            keep_animation=rendition.animation is Animation.keep and output.format is Format.webp,
        )
        for rendition in spec.renditions
        for width, output in rendition.outputs()
    ]


def outputs_per_input(spec: CompressionJobSpec) -> int:
    """How many outputs each input has: 1 with `output`, the sum of widths × formats with renditions."""
    if not spec.renditions:
        return 1
    return sum(len(rendition.widths) * len(rendition.formats) for rendition in spec.renditions)
