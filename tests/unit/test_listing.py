"""Which listed keys are a job's own files (its ledger and manifest), never inputs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kompressor.crd import CompressionJobSpec
from kompressor.messages import JobRef
from kompressor_operator.ledger import ledger_prefix, manifest_key
from kompressor_operator.listing import kompressor_key

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
