"""Output key templates: `destination.key`, e.g. "{dir}/{file}-{name}-{width}w.{ext}".

What it is for: the one place that knows a template's placeholders, renders a key from them, and
tells, from the spec alone, which outputs of one input would share a key (refused at admission).
Collisions between two inputs (photo.jpg and photo.png under a template without {file} or
{srcext}) cannot be seen before listing; workers refuse them per input (`output_collision`).

Placeholders, all from the source's path below the source prefix and the output planned:
  {dir}     the source's folder ("" at the top); empty path segments are dropped from the key,
            so "{dir}/{stem}.{ext}" works at the top too
  {file}    the source's file name with its extension (photo.png)
  {stem}    the file name without its extension (photo)
  {srcext}  the source's extension without the dot (png; "" when it has none)
  {name}    the rendition's name (hero)             - renditions only
  {width}   the rendition's width in pixels (640)    - renditions only
  {format}  the output format (webp)
  {ext}     the output format's file extension without the dot (jpg for jpeg)

It must never import anything but the standard library: the CRD models validate with it.
"""

from __future__ import annotations

import string

PLACEHOLDERS = ("dir", "file", "stem", "srcext", "name", "width", "format", "ext")
RENDITION_PLACEHOLDERS = frozenset({"name", "width"})
MAX_TEMPLATE_CHARS = 512

DEFAULT_RENDITION_KEY = "{dir}/{file}-{name}-{width}w.{ext}"
"""Keeps the source's extension: photo.jpg and photo.png of one folder make photo.jpg-hero-640w.webp
and photo.png-hero-640w.webp, never one key. Use {stem} instead of {file} only where a folder never
holds one picture in two formats."""

EXTENSIONS = {"jpeg": "jpg", "webp": "webp", "avif": "avif", "png": "png"}


def placeholders(template: str) -> set[str]:
    """The placeholders a template uses; ValueError names one it does not know or cannot render."""
    used: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"key template {template!r}: {exc} (write a literal brace as {{{{ or }}}})"
        ) from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in PLACEHOLDERS:
            raise ValueError(
                f"key template {template!r}: unknown placeholder {{{field}}}; use "
                + ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)
            )
        if spec or conversion:
            raise ValueError(f"key template {template!r}: {{{field}}} takes no format spec or conversion")
        used.add(field)
    return used


def render(template: str, **values: str | int) -> str:
    """The key: the template with its placeholders filled, empty path segments dropped."""
    key = template.format_map({name: str(value) for name, value in values.items()})
    return "/".join(segment for segment in key.split("/") if segment)


def source_parts(name: str) -> dict[str, str]:
    """{dir}, {file}, {stem} and {srcext} of a source's path below its prefix."""
    folder, _, file = name.strip("/").rpartition("/")
    stem, dot, ext = file.rpartition(".")
    if not dot or not stem:  # "photo" or ".profile": no extension
        stem, ext = file, ""
    return {"dir": folder, "file": file, "stem": stem, "srcext": ext}


def collisions(template: str, outputs: list[tuple[str, int, str]]) -> list[str]:
    """Which of one input's outputs, (name, width, format) each, the template gives one key; each
    problem names the outputs and the placeholder that would tell them apart."""
    seen: dict[str, tuple[str, int, str]] = {}
    problems = []
    for name, width, fmt in outputs:
        key = render(
            template, **source_parts("d/photo.jpg"), name=name, width=width, format=fmt, ext=EXTENSIONS[fmt]
        )
        if key in seen:
            other = seen[key]
            missing = [
                placeholder
                for placeholder, a, b in (
                    ("name", other[0], name),
                    ("width", other[1], width),
                    ("format", other[2], fmt),
                )
                if a != b
            ]
            both = f"{other[0]} {other[1]}w {other[2]} and {name} {width}w {fmt}"
            hint = " or ".join("{" + p + "}" for p in missing)
            problems.append(f"key template {template!r} gives {both} one key; add {hint}")
        else:
            seen[key] = (name, width, fmt)
    return problems
