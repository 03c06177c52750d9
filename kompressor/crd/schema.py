"""The CustomResourceDefinition, generated from the spec and status models.

This is the only source of the CRD's schema: `kompressor crd` prints what `crd()` returns, and the
chart and manifests hold copies that a test compares with it.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from kompressor.crd.spec import CompressionJobSpec
from kompressor.crd.status import CompressionJobStatus

GROUP = "kompressor.dev"
VERSION = "v1alpha1"
KIND = "CompressionJob"
PLURAL = "compressionjobs"
SINGULAR = "compressionjob"
SHORT_NAMES = ["compjob"]
API_VERSION = f"{GROUP}/{VERSION}"
_DROP = {"title", "additionalProperties", "$defs", "discriminator"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Turn pydantic's JSON Schema into a Kubernetes structural schema.

    Refs are inlined, `X | None` becomes an optional X, int-or-string unions use the Kubernetes
    extension, maps keep `additionalProperties`, and enums and bounds stay as value validations.
    """
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    variants = node.get("anyOf")
    if variants is not None:
        non_null = [v for v in variants if v.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        types = {v.get("type") for v in non_null}
        if types == {"integer", "string"}:
            merged = {"x-kubernetes-int-or-string": True}
            for variant in non_null:
                merged.update({k: v for k, v in variant.items() if k != "type"})
            return _structural({**merged, **rest}, defs)
        if len(non_null) == 1:
            return _structural({**non_null[0], **rest}, defs)
        raise TypeError(f"cannot express {variants} in a structural schema")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "default" and value in (None, ""):
            # v1.20's API server reads a "" default as null and refuses the CRD; "" is the
            # models' default anyway.
            continue
        else:
            out[key] = _structural(value, defs)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = _structural(extra, defs)
    if out.get("type") == "string" and out.get("format") == "date-time":
        out.pop("default", None)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def _without_defaults(node: Any) -> Any:
    """Status is written by the operator only; the API server has nothing to default there."""
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(item) for item in node]
    return node


def _value_rules(spec: dict[str, Any]) -> dict[str, Any]:
    """Add the one-of rules the models enforce with validators, so `kubectl apply` refuses them too."""
    props = spec["properties"]
    props["source"]["oneOf"] = [{"required": ["s3"]}, {"required": ["urls"]}]
    props["source"]["properties"]["urls"]["oneOf"] = [{"required": ["manifest"]}, {"required": ["items"]}]
    props["output"]["not"] = {"required": ["quality", "targetSSIM"]}
    return spec


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Done",
        "type": "string",
        "jsonPath": ".status.progress",
        "description": "(succeeded + skipped) / total",
    },
    {"name": "Failed", "type": "integer", "jsonPath": ".status.failed"},
    {"name": "Workers", "type": "integer", "jsonPath": ".status.workers.ready"},
    {"name": "Saved", "type": "string", "jsonPath": ".status.saved"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition of CompressionJob (apiextensions.k8s.io/v1)."""
    spec = _value_rules(_schema_of(CompressionJobSpec))
    status = _without_defaults(_schema_of(CompressionJobStatus))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all", "kompressor"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A batch of images to compress into S3, run by kompressor.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }
