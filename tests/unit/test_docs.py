"""docs/ stays true: the field reference is what the models generate, the troubleshooting page quotes
only reasons the operator can write, and the README links every page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kompressor.reference import reference
from kompressor_operator.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_the_field_reference_is_what_the_models_generate():
    assert (DOCS / "reference.md").read_text() == reference(), (
        "docs/reference.md is stale: run `kompressor reference > docs/reference.md`"
    )


def test_the_reference_names_every_field_with_its_default_and_bounds():
    text = reference()
    assert "| `spec.workers.scaler` | string | `builtin` | one of `builtin`, `external` |" in text
    assert "| `spec.source` | object (required) |  | exactly one of `s3`, `urls` |" in text
    assert "| `status.queue` | string |" in text
    assert "| `status.conditions[].reason` | string |" in text


def test_kompressor_reference_prints_it(capsys: pytest.CaptureFixture[str]):
    assert main(["reference"]) == 0
    assert capsys.readouterr().out == reference()


def _operator_source() -> str:
    files = [*(ROOT / "operator" / "kompressor_operator").glob("*.py"), *(ROOT / "kompressor").rglob("*.py")]
    return "\n".join(path.read_text() for path in files)


def test_every_reason_the_troubleshooting_page_quotes_is_one_the_operator_writes():
    """Bold code (**`Reason`**) marks the operator's own reasons and phases; each must be a string
    literal in its code, so renaming one without the page fails here."""
    quoted = set(re.findall(r"\*\*`([A-Za-z]+)`\*\*", (DOCS / "troubleshooting.md").read_text()))
    assert {"SpecInvalid", "TooManyFailures", "Failed", "SpecImmutable"} <= quoted
    source = _operator_source()
    missing = sorted(word for word in quoted if f'"{word}"' not in source)
    assert not missing, f"troubleshooting.md quotes reasons no code writes: {missing}"


def test_the_readme_links_every_page_in_docs():
    readme = (ROOT / "README.md").read_text()
    pages = sorted(path.name for path in DOCS.glob("*.md"))
    assert pages and all(f"(docs/{page})" in readme for page in pages), pages


def _yaml_blocks(page: str) -> list[dict]:
    import yaml

    blocks = re.findall(r"```yaml\n(.*?)```", (DOCS / page).read_text(), re.S)
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]


def test_the_scaling_examples_target_what_the_operator_makes_and_exports():
    """The ScaledObject and the HPA name the job's worker Deployment, the job as owner, the worker
    broker's queue and the operator's backlog gauge as the code spells them."""
    from kompressor.crd import API_VERSION, KIND
    from kompressor.messages import JobRef
    from kompressor_operator.builders import worker_deployment_name
    from kompressor_operator.metrics import OperatorMetrics

    docs = {doc.get("kind") or next(iter(doc)): doc for doc in _yaml_blocks("scaling.md")}
    scaled, hpa = docs["ScaledObject"], docs["HorizontalPodAutoscaler"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker_deployment_name("catalog")
    assert hpa["spec"]["scaleTargetRef"]["name"] == worker_deployment_name("catalog")
    owner = scaled["metadata"]["ownerReferences"][0]
    assert (owner["apiVersion"], owner["kind"], owner["name"]) == (API_VERSION, KIND, "catalog")
    trigger = scaled["spec"]["triggers"][0]
    assert (trigger["type"], trigger["metadata"]["protocol"], trigger["metadata"]["queueName"]) == (
        "rabbitmq",
        "http",
        "QUEUE",
    )
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]
    metrics = OperatorMetrics()
    metrics.observe(JobRef(namespace="shop", name="catalog", uid="u"), outstanding=1, desired=1)
    series = {s.name: s.labels for family in metrics.registry.collect() for s in family.samples}
    assert metric["name"] in series, sorted(series)
    assert set(metric["selector"]["matchLabels"]) <= set(series[metric["name"]])
