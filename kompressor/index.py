"""The renditions index: per source, what was stored, in the shape a site generator reads for srcset.

What it is for: a job with renditions writes `index.json` beside its manifest.jsonl. The manifest
says how each input ended (one line each, with every rendition's outcome); the index says only what
a page can use, per source:

    {"version": 1, "sources": {
      "products/red.jpg": {"hero": [{"key": "r/products/red.jpg-hero-1280w.avif", "format": "avif",
                                      "width": 1280, "height": 960, "bytes": 81234,
                                      "quality": 52, "ssim": 0.9861}, ...],
                           "thumb": [...]}}}

A source is named by its S3 key (or its URL, as the manifest shows it); its renditions by name, each
a list of stored outputs, widest first. Skipped and failed outputs are not in it (the manifest has
them); a source with none stored is left out. `picture` turns one source's entry into the
`<picture>` element (`kompressor srcset`).

It must never do I/O: manifest lines in, index entries and HTML out.
"""

from __future__ import annotations

import html
import json
from typing import Any

VERSION = 1
MIME = {"avif": "image/avif", "webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}
# <source> elements in the order a browser should prefer them; the last stored one is the <img>.
PREFERENCE = ("avif", "webp", "png", "jpeg")


def source_name(source: str) -> str:
    """The index's name of a source: an S3 source's key, else the source as the manifest shows it."""
    if source.startswith("s3://"):
        return source[len("s3://") :].partition("/")[2]
    return source


def entry(line: dict[str, Any]) -> tuple[str, dict[str, list[dict[str, Any]]]] | None:
    """A manifest line's index entry: (source name, {rendition name: stored outputs, widest
    first}); None when it has no stored rendition."""
    stored: dict[str, list[dict[str, Any]]] = {}
    for rendition in line.get("renditions") or ():
        if rendition.get("outcome") == "failed" or not rendition.get("dest"):
            continue
        output = {
            "key": rendition["dest"].removeprefix("s3://").partition("/")[2],
            "format": rendition["format"],
            "width": rendition.get("storedWidth"),
            "height": rendition.get("storedHeight"),
            "bytes": rendition.get("bytesOut", 0),
        }
        output.update({k: rendition[k] for k in ("quality", "ssim") if k in rendition})
        stored.setdefault(rendition["name"], []).append(output)
    if not stored:
        return None
    for outputs in stored.values():
        outputs.sort(key=lambda o: -(o["width"] or 0))
    return source_name(line["source"]), stored


def chunks(lines: Any) -> Any:
    """index.json as text chunks, from an iterable of manifest lines (dicts): streamed, so an
    index of millions of sources is never held whole."""
    yield f'{{"version":{VERSION},"sources":{{'
    first = True
    for line in lines:
        found = entry(line)
        if found is None:
            continue
        name, stored = found
        yield ("" if first else ",") + json.dumps(name) + ":" + json.dumps(stored, separators=(",", ":"))
        first = False
    yield "}}\n"


def lookup(document: str, source: str) -> dict[str, list[dict[str, Any]]] | None:
    """One source's entry from an index.json or a manifest.jsonl's text (S3 key or URL)."""
    text = document.lstrip()
    if text.startswith('{"version"'):
        return json.loads(text)["sources"].get(source)
    for raw in text.splitlines():
        line = json.loads(raw)
        if source_name(line.get("source", "")) == source:
            found = entry(line)
            return found[1] if found else None
    return None


def picture(
    stored: dict[str, list[dict[str, Any]]],
    rendition: str,
    *,
    base_url: str = "",
    sizes: str = "100vw",
    alt: str = "",
) -> str:
    """The <picture> element of one source's rendition: a <source> per preferred format with its
    widths as srcset, the last stored format as the <img> (its widest as src, width and height so
    the page does not shift). KeyError when the source has no such rendition stored."""
    outputs = stored[rendition]
    by_format: dict[str, list[dict[str, Any]]] = {}
    for output in outputs:
        by_format.setdefault(output["format"], []).append(output)
    formats = [f for f in PREFERENCE if f in by_format] + sorted(set(by_format) - set(PREFERENCE))
    fallback = formats[-1]

    def srcset(fmt: str) -> str:
        return ", ".join(f"{base_url}{o['key']} {o['width']}w" for o in by_format[fmt])

    attr = html.escape
    lines = ["<picture>"]
    for fmt in formats[:-1]:
        mime = MIME.get(fmt, "image/" + fmt)
        lines.append(f'  <source type="{mime}" srcset="{attr(srcset(fmt))}" sizes="{attr(sizes)}">')
    widest = by_format[fallback][0]
    src, size = attr(base_url + widest["key"]), f'width="{widest["width"]}" height="{widest["height"]}"'
    candidates = attr(srcset(fallback))
    lines.append(f'  <img src="{src}" srcset="{candidates}" sizes="{attr(sizes)}" {size} alt="{attr(alt)}">')
    lines.append("</picture>")
    return "\n".join(lines)
