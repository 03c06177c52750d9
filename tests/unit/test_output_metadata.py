"""An output's user metadata (`storage.output_metadata`): its provenance always, the source's copied
metadata only while it fits within S3's 2 KB limit, and what did not fit named."""

from __future__ import annotations

from urllib.parse import unquote

from hypothesis import given
from hypothesis import strategies as st

from kompressor.messages import SourceObject
from kompressor_worker.storage import (
    META_SOURCE,
    METADATA_LIMIT,
    output_metadata,
    source_tag,
)
from kompressor_worker.task import earlier_result
from tests.unit.test_task import _found, _task

ASCII = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)
VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=900)
KEYS = st.text(min_size=1, max_size=340).map(lambda k: "products/" + k)  # up to ~1,030 UTF-8 bytes


def _bytes(metadata: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


@given(st.dictionaries(ASCII, VALUES, max_size=8), KEYS, st.booleans())
def test_the_metadata_fits_s3s_limit_and_accounts_for_every_source_key(
    theirs: dict[str, str], key: str, copy: bool
) -> None:
    task = _task(source=SourceObject(bucket="raw", key=key, etag='"e1-123"', size=10), copy_metadata=copy)
    stored = output_metadata(task, '"e1-123"', 10**12, True, theirs, size=(16383, 16383))
    assert _bytes(stored.values) <= METADATA_LIMIT
    own = {k for k in stored.values if k.startswith("kompressor-")}
    copied = set(stored.values) - own
    eligible = {k for k in theirs if not k.lower().startswith("kompressor-")} if copy else set()
    assert copied | set(stored.left_out) == eligible and not copied & set(stored.left_out)
    assert all(stored.values[k] == theirs[k] for k in copied)
    if _bytes({k: theirs[k] for k in eligible}) + _bytes(
        {k: v for k, v in stored.values.items() if k in own}
    ) <= (METADATA_LIMIT):
        assert stored.left_out == ()


def test_what_does_not_fit_is_left_out_in_key_order_and_named():
    task = _task(copy_metadata=True)
    theirs = {"a-note": "x" * 950, "b-note": "y" * 950, "owner": "alice", "kompressor-job": "forged"}
    stored = output_metadata(task, '"e1"', 1000, False, theirs)
    assert stored.left_out == ("b-note",)
    assert stored.values["a-note"] == "x" * 950 and stored.values["owner"] == "alice"
    assert stored.values["kompressor-job"] == task.job.uid
    assert output_metadata(
        task.model_copy(update={"copy_metadata": False}), '"e1"', 1000, False, theirs
    ).values.keys() == {k for k in stored.values if k.startswith("kompressor-")}


def test_a_long_source_is_named_by_digest_and_its_task_still_finds_its_own_output():
    long_key = "products/" + "é" * 500  # 1,009 UTF-8 bytes, 3,009 characters quoted
    task = _task(source=SourceObject(bucket="raw", key=long_key, etag="e1", size=10))
    tag = output_metadata(task, "e1", 10, False).values[META_SOURCE]
    assert tag == source_tag(task.source.describe()) and tag.startswith("sha256:") and len(tag) == 71
    # A redelivery reads the tag back (existing_output unquotes it) and knows the output as its own.
    result = earlier_result(task, _found(task, source=unquote(tag)))
    assert result is not None and result.message == "already stored by this job"
    other = task.model_copy(
        update={"source": SourceObject(bucket="raw", key=long_key + "x", etag="e1", size=10)}
    )
    assert earlier_result(other, _found(task, source=unquote(tag))).reason == "output_collision"
    short = _task()
    assert unquote(source_tag(short.source.describe())) == short.source.describe()
