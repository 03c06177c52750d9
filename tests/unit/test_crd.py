"""The CompressionJob contract: the generated CRD is structural and described; bad specs are named."""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompressor.crd import (
    REQUESTABLE_URL_PATTERN,
    CompressionJobSpec,
    SpecError,
    crd,
    parse_byte_quantity,
    parse_spec,
)

VALID = {
    "source": {"s3": {"bucket": "raw", "prefix": "products/"}},
    "destination": {"s3": {"bucket": "web", "prefix": "products/"}},
}


def _walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def _root() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_every_spec_and_status_field_has_a_description_and_a_type():
    root = _root()
    for part in ("spec", "status"):
        for path, node in _walk(root["properties"][part], part):
            if not path.endswith(("[]", "{}")):  # list items and map values are described by their field
                assert node.get("description"), f"{path} has no description"
            assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{path} has no type"


def test_the_schema_is_structural():
    """No $ref, no anyOf of types, no titles: what apiextensions.k8s.io/v1 accepts."""
    text = repr(crd())
    for forbidden in ("$ref", "anyOf", "'title'", "$defs"):
        assert forbidden not in text


def test_crd_names_status_and_printer_columns():
    definition = crd()
    assert definition["metadata"]["name"] == "compressionjobs.kompressor.dev"
    assert definition["spec"]["names"]["shortNames"] == ["compjob"]
    version = definition["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = version["additionalPrinterColumns"]
    # Renditions only with -o wide (priority 1): the default columns stay as they were.
    assert [c["name"] for c in columns if c.get("priority", 0) == 1] == ["Renditions"]
    assert [c["name"] for c in columns if c.get("priority", 0) == 0] == [
        "Phase",
        "Done",
        "Failed",
        "Workers",
        "Saved",
        "Age",
    ]
    status_props = _root()["properties"]["status"]["properties"]
    for column in version["additionalPrinterColumns"]:
        first, *rest = column["jsonPath"].lstrip(".").split(".")
        if first == "status":
            node = _root()["properties"]["status"]
            for part in rest:
                node = node["properties"][part]
    assert "conditions" in status_props and "observedGeneration" in status_props


def test_defaults_fill_a_minimal_spec():
    spec = parse_spec(VALID)
    assert spec.output.format == "webp"
    assert spec.output.effective_quality == 80
    assert spec.limits.max_input_bytes == 50 * 2**20
    assert spec.workers.max_replicas == 20
    assert spec.destination.existing == "skip"
    assert spec.source.s3 is not None and spec.source.s3.matches("products/a/B.JPG")
    assert not spec.source.s3.matches("products/readme.txt")


def _with(path: str, value: Any) -> dict[str, Any]:
    import copy

    spec = copy.deepcopy(VALID)
    node = spec
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return spec


@pytest.mark.parametrize(
    ("spec", "field", "rule"),
    [
        (_with("output.quality", 101), "spec.output.quality", "less than or equal to 100"),
        (_with("output.format", "bmp"), "spec.output.format", "'jpeg', 'webp', 'avif', 'png' or 'keep'"),
        (_with("limits.maxAttempts", 0), "spec.limits.maxAttempts", "greater than or equal to 1"),
        (_with("limits.maxInputBytes", "lots"), "spec.limits.maxInputBytes", "not a byte quantity"),
        (_with("workers.minReplicas", 30), "spec.workers", "must not exceed maxReplicas"),
        (
            _with("output.targetSSIM", 0.95) | {"output": {"quality": 80, "targetSSIM": 0.95}},
            "spec.output",
            "quality or targetSSIM, not both",
        ),
        (_with("source.urls", {"items": ["https://x/a.jpg"]}), "spec.source", "exactly one of s3 or urls"),
        (_with("source.s3.prefix", "../etc/"), "spec.source.s3.prefix", "'..'"),
        (_with("destination.s3.bucket", "UPPER"), "spec.destination.s3.bucket", "pattern"),
        (_with("output.colour", "red"), "spec.output.colour", "unknown field"),
        ({"source": VALID["source"]}, "spec.destination", "required field is missing"),
        (
            _with("workers.affinity", {"nodeAfinity": {}}),
            "spec.workers.affinity",
            "unknown affinity nodeAfinity",
        ),
        (
            _with("workers.tolerations", [{"effect": "Sometimes"}]),
            "spec.workers.tolerations.0.effect",
            "NoExecute",
        ),
        (_with("workers.priorityClassName", "Urgent!"), "spec.workers.priorityClassName", "pattern"),
    ],
)
def test_invalid_specs_name_the_field_and_the_rule(spec, field, rule):
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    message = str(caught.value)
    assert field in message and rule in message, message


def test_a_spec_that_is_not_a_mapping_is_refused():
    with pytest.raises(SpecError, match="spec: must be a mapping"):
        parse_spec(["not", "a", "mapping"])


@given(st.integers(min_value=0, max_value=2**40))
def test_byte_quantities_round_trip(number: int):
    assert parse_byte_quantity(str(number)) == number
    assert parse_byte_quantity(number) == number
    if number % 2**20 == 0:
        assert parse_byte_quantity(f"{number // 2**20}Mi") == number


def test_the_model_round_trips_through_its_camel_case_wire_form():
    spec = parse_spec(_with("workers.scaleDownDelaySeconds", 5))
    wire = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert wire["workers"]["scaleDownDelaySeconds"] == 5
    assert CompressionJobSpec.model_validate(wire) == spec


CANNOT_BE_REQUESTED = [
    "http://hooks.example.com/a b",  # http.client refuses the request line
    "http://hooks.example.com/a\tb",
    "http://hooks.example.com/\u00e9",
    "http://hooks.example.com:99999/x",  # urlsplit refuses the port
    "http://hooks.example.com:0/x",
    "http://hooks.example.com:/x",
    "http://user:secret@hooks.example.com/x",  # credentials never come from a spec
    "http://a..b/x",  # the resolver's IDNA codec refuses empty and long labels
    "http://" + "a" * 64 + ".example.com/",
    "http://[1.2.3.4]/",
    "http:///x",
    "ftp://hooks.example.com/x",
]
REQUESTABLE = [
    "https://hooks.example.com/x?team=web&sig=a%20b",
    "http://receiver.shop.svc:8080/",
    "http://10.1.2.3:65535",
    "http://[2001:db8::1]:443/hook",
]


@pytest.mark.parametrize("url", CANNOT_BE_REQUESTED)
def test_a_webhook_url_that_cannot_be_requested_is_refused_by_the_model_and_the_crd(url):
    spec = VALID | {"notify": {"webhookURL": url}}
    with pytest.raises(SpecError, match=r"spec\.notify\.webhookURL: .* cannot be requested"):
        parse_spec(spec)
    jsonschema = pytest.importorskip("jsonschema")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, _root()["properties"]["spec"])


def test_a_bracketed_host_that_is_no_ipv6_address_is_refused_by_the_model():
    """The CRD's pattern only sees hex digits, colons and dots; the model parses the address."""
    with pytest.raises(SpecError, match="cannot be requested"):
        parse_spec(VALID | {"notify": {"webhookURL": "http://[:::::]/"}})


@pytest.mark.parametrize("url", REQUESTABLE)
def test_a_requestable_webhook_url_passes_both(url):
    spec = VALID | {"notify": {"webhookURL": url}}
    assert parse_spec(spec).notify is not None
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(spec, _root()["properties"]["spec"])


@given(st.from_regex(REQUESTABLE_URL_PATTERN, fullmatch=True))
def test_every_webhook_url_the_model_accepts_makes_a_request_line(url: str):
    """What the model accepts, http.client and the resolver's name encoding accept too."""
    try:
        parse_spec(VALID | {"notify": {"webhookURL": url}})
    except SpecError:
        return  # a bracketed host that is no IPv6 address: refused, as it should be
    parts = urlsplit(url)
    assert parts.port is None or 1 <= parts.port <= 65535
    (parts.hostname or "").encode("idna")
    # As notify.py makes it: always with a port (http.client reads "::a" alone as host ":" port "a").
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80)
    connection.putrequest("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
