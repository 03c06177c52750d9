"""Task and result messages: versioned JSON that refuses what it does not know; stable output keys."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompressor.crd import Format, parse_spec
from kompressor.messages import (
    MAX_ID,
    MAX_MESSAGE_CHARS,
    MAX_OBJECT_BYTES,
    MAX_RESULT_BYTES,
    JobRef,
    MessageError,
    Outcome,
    Result,
    SourceObject,
    Task,
    job_queues,
    output_key,
    public_source,
    retry_queue_arguments,
    task_queue_arguments,
)

JOB = JobRef(namespace="shop", name="catalog", uid="0f3c2a9e-1111-2222-3333-444455556666")
SPEC = parse_spec(
    {
        "source": {"s3": {"bucket": "raw", "prefix": "products/"}},
        "destination": {"s3": {"bucket": "web", "prefix": "out/"}},
        "output": {"format": "webp", "quality": 70},
    }
)


def _task(**overrides) -> Task:
    fields = dict(
        job=JOB,
        id=7,
        source=SourceObject(bucket="raw", key="products/a/b.jpg", etag="e1", size=10),
        dest_bucket="web",
        dest_key="out/a/b.webp",
        existing=SPEC.destination.existing,
        output=SPEC.output,
        limits=SPEC.limits,
    )
    return Task(**(fields | overrides))


def test_task_and_result_round_trip():
    task = _task()
    assert Task.decode(task.encode()) == task
    result = Result(job=JOB, id=7, outcome=Outcome.failed, source="s3://raw/x", reason="decode_error")
    assert Result.decode(result.encode()) == result
    assert json.loads(task.encode())["v"] == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed_message"),
        (b"[1, 2]", "malformed_message"),
        (b'{"v": 2, "id": 1}', "unknown_schema_version"),
        (b'{"id": 1}', "unknown_schema_version"),
        (b'{"v": 1, "id": -1}', "malformed_message"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(body: bytes, reason: str):
    with pytest.raises(MessageError) as caught:
        Task.decode(body)
    assert caught.value.reason == reason


def test_queue_names_are_per_job_and_distinct():
    names = job_queues(JOB)
    assert names == [
        "kompressor.shop.catalog.0f3c2a9e.tasks",
        "kompressor.shop.catalog.0f3c2a9e.results",
        "kompressor.shop.catalog.0f3c2a9e.dead",
        "kompressor.shop.catalog.0f3c2a9e.retry",
    ]
    arguments = task_queue_arguments(JOB, SPEC.limits)
    assert arguments["x-queue-type"] == "quorum"
    assert arguments["x-dead-letter-routing-key"] == names[2]
    retry = retry_queue_arguments(JOB)
    assert retry["x-dead-letter-routing-key"] == names[0]  # an expired retry goes back to the tasks
    assert retry["x-dead-letter-strategy"] == "at-least-once" and retry["x-overflow"] == "reject-publish"


def test_output_key_replaces_prefix_and_extension():
    source = SourceObject(bucket="raw", key="products/a/b.JPG")
    assert output_key(source, "products/", SPEC.destination, SPEC.output) == "out/a/b.webp"
    url = SourceObject(url="https://cdn.example.com/img/c.png?x=1")
    assert output_key(url, "", SPEC.destination, SPEC.output) == "out/cdn.example.com/img/c.webp"


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=1500))
def test_output_keys_are_deterministic_bounded_and_under_the_prefix(name: str):
    source = SourceObject(bucket="raw", key="products/" + name)
    key = output_key(source, "products/", SPEC.destination, SPEC.output)
    assert key == output_key(source, "products/", SPEC.destination, SPEC.output)
    assert key.startswith("out/") and key.endswith(".webp")
    assert len(key.encode()) <= 1024


def test_keep_names_the_format_the_codec_stores():
    """`keep` stores opt-in lossless formats as PNG and HEIF / JPEG 2000 as JPEG: keys say so."""
    keep = SPEC.output.model_copy(update={"format": Format.keep})
    expected = {"a.heic": "out/a.jpg", "a.JP2": "out/a.jpg", "a.psd": "out/a.png", "a.pgm": "out/a.png"}
    expected |= {"a.bmp": "out/a.png", "a.tiff": "out/a.png", "a.webp": "out/a.webp"}
    for name, key in expected.items():
        source = SourceObject(bucket="raw", key=f"products/{name}")
        assert output_key(source, "products/", SPEC.destination, keep) == key


@pytest.mark.parametrize(
    "change",
    [
        {"id": 2**63},  # past any index: OverflowError in the ledger's bitmap before the bound
        {"id": MAX_ID + 1},
        {"id": -1},
        {"bytes_in": -1},  # would turn the status's byte totals negative
        {"bytes_out": MAX_OBJECT_BYTES + 1},
    ],
)
def test_results_with_ids_or_byte_counts_out_of_bounds_are_malformed(change: dict):
    body = json.loads(Result(job=JOB, id=7, outcome=Outcome.done, source="s3://raw/x").encode())
    with pytest.raises(MessageError) as caught:
        Result.decode(json.dumps(body | change).encode())
    assert caught.value.reason == "malformed_message"


def test_a_result_message_over_the_size_bound_is_refused_before_parsing():
    result = Result(job=JOB, id=7, outcome=Outcome.failed, source="s3://raw/x", message="m" * 60_000)
    assert result.message == "m" * MAX_MESSAGE_CHARS  # a worker's long error is cut, not refused
    assert Result.decode(result.encode()) == result
    body = json.loads(result.encode()) | {"message": "m" * MAX_RESULT_BYTES}
    with pytest.raises(MessageError, match="over"):
        Result.decode(json.dumps(body).encode())
    with pytest.raises(MessageError):  # a reason is a word: a key of status.failuresByReason
        Result.decode(json.dumps(json.loads(result.encode()) | {"reason": "r" * 65}).encode())


# --- what is stored of a source ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "stored"),
    [
        (
            "https://bucket.s3.amazonaws.com/a/b.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc",
            "https://bucket.s3.amazonaws.com/a/b.jpg",
        ),
        ("https://user:secret@cdn.example.com:8443/a.png?token=t#frag", "https://cdn.example.com:8443/a.png"),
        ("http://a:b@c@host/x@y.jpg", "http://host/x@y.jpg"),  # the last '@' of the authority ends it
        ("HTTP://u:p@host?q=1", "HTTP://host"),
        ("https://host/p.jpg#access_token=t", "https://host/p.jpg"),
        ("http://[::1]:8080/a.jpg?x", "http://[::1]:8080/a.jpg"),
        ("s3://raw/odd?key#with@signs.jpg", "s3://raw/odd?key#with@signs.jpg"),  # a key, kept whole
        ("not a url?x=1", "not a url?x=1"),
        ("", ""),
    ],
)
def test_public_source_drops_user_info_query_and_fragment_of_urls(source: str, stored: str):
    assert public_source(source) == stored


@given(st.text(max_size=200))
def test_public_source_is_total_idempotent_and_never_keeps_a_query_or_user_info(text: str):
    url = "https://" + text
    stored = public_source(url)
    assert public_source(stored) == stored
    assert "?" not in stored and "#" not in stored
    authority = stored.removeprefix("https://").split("/", 1)[0]
    assert "@" not in authority
    if not set("@?#") & set(text):
        assert stored == url  # nothing to drop: nothing dropped


def test_a_url_source_is_described_and_reported_without_its_secrets():
    source = SourceObject(url="https://u:pw@cdn.example.com/a.jpg?X-Amz-Signature=s3cr3t")
    assert source.describe() == "https://cdn.example.com/a.jpg"
    # A result keeps no credential whoever built it: a worker of an older version, a forged message.
    forged = json.dumps(
        {"v": 1, "job": JOB.model_dump(), "id": 1, "outcome": "failed", "source": source.url}
    ).encode()
    assert Result.decode(forged).source == "https://cdn.example.com/a.jpg"
