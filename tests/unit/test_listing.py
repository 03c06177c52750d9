"""Which listed keys are a job's own files (its ledger and manifest), never inputs; the lean parse
of a listing page."""

from __future__ import annotations

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompressor.crd import CompressionJobSpec
from kompressor.messages import JobRef
from kompressor_operator.ledger import ledger_prefix, manifest_key
from kompressor_operator.listing import _LEAN, kompressor_key, register_lean

PREFIXES = st.text(alphabet="ab/.-_", max_size=12).filter(
    lambda p: not p.startswith("/") and ".." not in p.split("/")
)


def test_the_area_beside_a_prefix_that_is_no_folder_is_ours():
    # A job writing under `sr` keeps its ledger at `sr.kompressor/`; listing the prefix `sr` meets it.
    assert kompressor_key("sr.kompressor/job/manifest.jsonl")
    assert kompressor_key("sr.kompressor/job/ledger/0a1b2c3d/part-00000001.jsonl")
    assert kompressor_key("out/.kompressor/job/manifest.jsonl")
    assert kompressor_key(".kompressor/job/cursor.json")


def test_images_are_not_ours():
    for key in ("sr/a.jpg", "sr.jpg", "a.kompressor.jpg", "x/kompressor/y.jpg", "kompressor/a.png"):
        assert not kompressor_key(key), key


@given(PREFIXES, st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True), st.text(max_size=20))
def test_every_key_of_any_jobs_area_is_ours(prefix, name, rest):
    spec = CompressionJobSpec.model_validate(
        {"source": {"s3": {"bucket": "raw"}}, "destination": {"s3": {"bucket": "web", "prefix": prefix}}}
    )
    job = JobRef(namespace="ns", name=name, uid="0a1b2c3d-0000-0000-0000-000000000000")
    assert kompressor_key(manifest_key(job, spec))
    assert kompressor_key(ledger_prefix(job, spec) + rest)


# --- the lean parse of a listing page, through botocore's own event emitter (no request sent) -------

PAGE = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>raw</Name>'
    b"<IsTruncated>true</IsTruncated><NextContinuationToken>t</NextContinuationToken>"
    b"<Contents><Key>in/a.jpg</Key><ETag>&quot;e1&quot;</ETag><Size>3</Size></Contents>"
    b"<Contents><Key>in/b%20c.jpg</Key><ETag>&quot;e2&quot;</ETag><Size>0</Size></Contents>"
    b"</ListBucketResult>"
)
ERROR = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code></Error>"


def _before_parse(body: bytes, lean: bool = True, seen: list | None = None) -> tuple[dict, dict]:
    """Emit ListObjectsV2's before-parse on a real S3 client with the lean hook registered, as
    botocore does on a response; returns (response_dict, customized_response_dict). `seen` gets
    the body botocore's S3 handlers (its check for an error inside a 200 among them) were given."""
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    register_lean(client)
    if seen is not None:
        client.meta.events.register(
            "before-parse.s3.*", lambda response_dict, **_: seen.append(response_dict["body"])
        )
    response = {"status_code": 200, "headers": {}, "body": body}
    customized: dict = {}
    _LEAN.active = lean
    try:
        client.meta.events.emit(
            "before-parse.s3.ListObjectsV2",
            operation_model=client.meta.service_model.operation_model("ListObjectsV2"),
            response_dict=response,
            customized_response_dict=customized,
        )
    finally:
        _LEAN.active = False
    return response, customized


def test_a_page_is_read_once_and_botocore_left_its_envelope():
    seen: list[bytes] = []
    response, customized = _before_parse(PAGE, seen=seen)
    assert seen == [response["body"]]  # botocore's S3 handlers parse the envelope, not the page
    assert response["status_code"] == 200
    assert customized["Contents"] == [
        {"Key": "in/a.jpg", "ETag": '"e1"', "Size": 3},
        {"Key": "in/b%20c.jpg", "ETag": '"e2"', "Size": 0},
    ]
    assert b"Contents" not in response["body"] and b"NextContinuationToken" in response["body"]


@pytest.mark.parametrize("body", [ERROR, PAGE[: len(PAGE) // 2]], ids=["error", "cut short"])
def test_an_error_inside_a_200_is_left_to_botocore_which_makes_it_a_500(body):
    """The lean hook runs first now: what is not a whole page must still reach botocore's check
    (a 500 is retried, then raised by the listing)."""
    response, customized = _before_parse(body)
    assert (response["status_code"], response["body"], customized) == (500, body, {})


def test_other_threads_listings_keep_every_field():
    response, customized = _before_parse(PAGE, lean=False)
    assert (response["body"], customized) == (PAGE, {})
