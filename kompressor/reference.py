"""docs/reference.md: the CompressionJob field reference, generated from the CRD's schema.

What it is for: one table per top-level part (spec, status) with every field's path, type, default,
bounds and description, all read from `crd()`, so the reference says what the API server enforces
and `kubectl explain` prints. `kompressor reference` prints it; a unit test keeps docs/reference.md
equal to it. It must never be edited by hand, nor read anything but the models.
"""

from __future__ import annotations

from typing import Any

from kompressor.crd import API_VERSION, KIND, crd

_BOUNDS = (
    ("minimum", "≥ {}"),
    ("maximum", "≤ {}"),
    ("minLength", "length ≥ {}"),
    ("maxLength", "length ≤ {}"),
    ("minItems", "items ≥ {}"),
    ("maxItems", "items ≤ {}"),
    ("pattern", "pattern `{}`"),
)


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = node.get("type", "object")
    if kind == "array":
        return f"array of {_type(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type(node['additionalProperties'])}"
    if node.get("format") == "date-time":
        return "date-time"
    return kind


def _rules(node: dict[str, Any]) -> str:
    rules = [template.format(node[key]) for key, template in _BOUNDS if key in node]
    if "oneOf" in node:
        names = [name for alternative in node["oneOf"] for name in alternative["required"]]
        rules.append("exactly one of " + ", ".join(f"`{name}`" for name in names))
    if "not" in node:
        rules.append(f"not both {' and '.join(f'`{n}`' for n in node['not']['required'])}")
    if "enum" in node:
        rules.insert(0, "one of " + ", ".join(f"`{value}`" for value in node["enum"]))
    return "; ".join(rules)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(node: dict[str, Any], path: str, required: bool) -> list[str]:
    default = node.get("default")
    shown = "" if default is None else f"`{_inline(default)}`"
    rows = [
        f"| `{path}` | {_type(node)}{' (required)' if required else ''} | {shown} | "
        f"{_cell(_rules(node))} | {_cell(node.get('description', ''))} |"
    ]
    children = node.get("properties", {})
    if node.get("type") == "array":
        children = node.get("items", {}).get("properties", {})
        path += "[]"
    needed = set(node.get("items", node).get("required", []))
    for name, child in children.items():
        rows += _rows(child, f"{path}.{name}", name in needed)
    return rows


def _inline(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_inline(v)}" for k, v in value.items()) + "}"
    return str(value)


def reference() -> str:
    """The Markdown of docs/reference.md."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    header = "| field | type | default | bounds | description |\n|---|---|---|---|---|"
    parts = [
        f"# {KIND} field reference ({API_VERSION})",
        "",
        "Generated from `kompressor/crd/` by `kompressor reference > docs/reference.md`; a test keeps "
        "it up to date. `kubectl explain compjob.spec` prints the same descriptions.",
    ]
    for part in ("spec", "status"):
        node = schema["properties"][part]
        parts += ["", f"## {part}", "", _cell(node.get("description", "")), "", header]
        for name, child in node["properties"].items():
            parts += _rows(child, f"{part}.{name}", name in node.get("required", []))
    return "\n".join(parts) + "\n"
