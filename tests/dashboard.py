"""The series the shipped Grafana dashboard queries, and a check of /metrics output against them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[1] / "charts" / "kompressor" / "dashboards" / "kompressor.json"
_SELECTOR = re.compile(r"\b(kompressor_[a-z_]+)(?:\{([^}]*)\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def dashboard_series(path: Path = DASHBOARD) -> dict[str, set[str]]:
    """Each series name the dashboard queries -> the labels it selects, groups or shows by."""
    dashboard = json.loads(path.read_text())
    wanted: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            shared = {label.strip() for group in _BY.findall(expr) for label in group.split(",")}
            shared |= set(_LEGEND.findall(target.get("legendFormat", "")))
            for name, matchers in _SELECTOR.findall(expr):
                wanted.setdefault(name, set()).update(shared, _MATCHER.findall(matchers))
    for variable in dashboard["templating"]["list"]:
        query = variable.get("definition", "")
        if query.startswith("label_values("):
            name, label = query.removeprefix("label_values(").removesuffix(")").rsplit(",", 1)
            wanted.setdefault(_SELECTOR.match(name.strip()).group(1), set()).add(label.strip())
    wanted = {name: labels - {""} for name, labels in wanted.items()}
    return wanted


def missing_series(exposition: str, wanted: dict[str, set[str]]) -> list[str]:
    """What `wanted` asks for that the /metrics text `exposition` lacks: a series, or a label on it."""
    found: dict[str, list[set[str]]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(set(sample.labels))
    missing = []
    for name, labels in sorted(wanted.items()):
        if name not in found:
            missing.append(f"{name}: no such series")
        elif not any(labels <= have for have in found[name]):
            missing.append(f"{name}: no sample with labels {sorted(labels)} (has {sorted(found[name][0])})")
    return missing
