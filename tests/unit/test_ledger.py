"""The ledger's trust rules as pure functions: which results may be recorded, and which lines read
back from a ledger part count (a damaged one is skipped, never a reason to fail a restart)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompressor.messages import JobRef, ManifestLine, Outcome, RenditionResult, Result
from kompressor_operator.ledger import UNPUBLISHED_ID, WRONG_JOB, _ledger_result, manifest_line, refusal

JOB = JobRef(namespace="shop", name="catalog", uid="0f3c2a9e-1111-2222-3333-444455556666")
OTHER = JOB.model_copy(update={"uid": "0f3c2a9e-9999-2222-3333-444455556666"})  # same uid8, same queues


def _result(job: JobRef = JOB, id: int = 3) -> Result:
    return Result(job=job, id=id, outcome=Outcome.done, source="s3://raw/a.jpg", bytes_in=10, bytes_out=4)


@given(
    st.integers(min_value=0, max_value=2**53 - 1), st.integers(min_value=0, max_value=2**40), st.booleans()
)
def test_a_result_is_recorded_only_for_this_job_and_a_published_id(id: int, published: int, ours: bool):
    reason = refusal(_result(JOB if ours else OTHER, id), JOB, published)
    if not ours:
        assert reason == WRONG_JOB
    elif id >= published:
        assert reason == UNPUBLISHED_ID
    else:
        assert reason is None


def test_nothing_is_recorded_before_anything_is_published():
    assert refusal(_result(id=0), JOB, 0) == UNPUBLISHED_ID


def _line(**change) -> str:
    return json.dumps(manifest_line(_result()).model_dump(by_alias=True, exclude_none=True) | change)


def test_a_ledger_line_reads_back_as_the_result_it_recorded():
    result = _ledger_result(_line(), published=4)
    assert isinstance(result, Result)
    assert (result.id, result.outcome, result.bytes_in, result.bytes_out) == (3, Outcome.done, 10, 4)
    assert isinstance(_ledger_result(_line(), published=None), Result)  # no cursor to bound ids by


@pytest.mark.parametrize(
    ("line", "published", "problem"),
    [
        (_line(id=10**20), 4, "ValidationError"),  # what d116cca wrote for a forged result
        (_line(id=2**32), 4, "never published"),
        (_line(id=4), 4, "never published"),
        (_line(id=-1), 4, "ValidationError"),
        (_line(bytesIn=-5), 4, "ValidationError"),
        (_line(outcome="exploded"), 4, "outcome"),
        (json.dumps({"id": 1}), 4, "source\n  Field required"),
        ("[1, 2, 3]", 4, "valid dictionary"),
        (_line(renditions=[1]), 4, "renditions.0"),
        (_line(reason="x" * 65), 4, "ValidationError"),  # a Result's reason is at most 64 characters
        ("not json at all", 4, "JSONDecodeError"),
        ("\ufffd\ufffd", 4, "JSONDecodeError"),  # a part that was not UTF-8, decoded with replacement
        ("[" * 100_000, 4, ""),  # nested too deep: RecursionError or a JSON error, never a crash
    ],
)
def test_a_damaged_ledger_line_is_named_not_raised(line: str, published: int, problem: str):
    found = _ledger_result(line, published)
    assert isinstance(found, str) and problem in found


# --- the manifest line: what the ledger wrote before ManifestLine, it writes and reads still -------


def _old_manifest_line(result: Result) -> dict:
    """`ledger.manifest_line` as it was before the ManifestLine model (0b54f43): a dict, dumped by
    `json.dumps(..., separators=(",", ":"))`. Kept here to prove the manifest's bytes did not change."""
    from kompressor_operator.ledger import rendition_line

    line = {
        "id": result.id,
        "source": result.source,
        "dest": result.dest if result.outcome is not Outcome.failed else "",
        "outcome": result.outcome.value,
        "bytesIn": result.bytes_in,
        "bytesOut": result.bytes_out,
        "reason": result.reason,
        "message": result.message,
        "attempts": result.attempts,
    }
    if result.quality is not None:
        line["quality"] = result.quality
    if result.ssim is not None:
        line["ssim"] = result.ssim
    if result.stored_original:
        line["storedOriginal"] = True
    if result.frames is not None:
        line["frames"] = result.frames
    if result.renditions is not None:
        line["renditions"] = [rendition_line(r) for r in result.renditions]
    return line


_text = st.text(max_size=12)  # any character: non-ASCII is written \u-escaped, as json.dumps did
_renditions = st.builds(
    RenditionResult,
    name=st.text(min_size=1, max_size=12),  # a rendition set's name is never empty (the CRD's pattern)
    width=st.integers(min_value=1, max_value=10_000),
    format=st.sampled_from(["webp", "avif", "jpeg"]),
    outcome=st.sampled_from(Outcome),
    dest=st.sampled_from(["", "s3://web/a-640.webp"]),
    bytes_out=st.integers(min_value=0, max_value=2**30),
    stored_width=st.none() | st.integers(min_value=1, max_value=10_000),
    reason=st.sampled_from(["", "would_upscale", "encode_error"]),
    message=_text,
    quality=st.none() | st.integers(min_value=1, max_value=100),
    ssim=st.none() | st.floats(min_value=0, max_value=1),
    stored_original=st.booleans(),
)
_results = st.builds(
    Result,
    job=st.just(JOB),
    id=st.integers(min_value=0, max_value=2**53 - 1),
    outcome=st.sampled_from(Outcome),
    source=st.sampled_from(["s3://raw/a.jpg", "s3://raw/café ü.jpg", "https://example.com/p.png"]),
    dest=st.sampled_from(["", "s3://out/a.webp"]),
    bytes_in=st.integers(min_value=0, max_value=5 * 2**40),
    bytes_out=st.integers(min_value=0, max_value=5 * 2**40),
    reason=st.sampled_from(["", "not_smaller", "decode_error", "a word from a newer worker"]),
    message=_text,
    attempts=st.integers(min_value=1, max_value=10),
    quality=st.none() | st.integers(min_value=1, max_value=100),
    ssim=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    stored_original=st.booleans(),
    frames=st.none() | st.integers(min_value=1, max_value=1000),
    renditions=st.none() | st.lists(_renditions, max_size=3),
)


@given(_results)
def test_a_manifest_line_is_the_bytes_the_ledger_wrote_before_and_reads_back_the_same(result: Result):
    old = json.dumps(_old_manifest_line(result), separators=(",", ":"))
    line = manifest_line(result)
    assert line.encode() == old
    assert ManifestLine.decode(old.encode()).encode() == old  # an existing line reads back the same
    counted = _ledger_result(old.encode(), published=None)
    assert isinstance(counted, Result)
    expected = {"bytes_in", "bytes_out", "reason", "outcome", "source", "id"}
    assert counted.model_dump(include=expected) == result.model_dump(include=expected)
    assert counted.dest == (result.dest if result.outcome is not Outcome.failed else "")
    assert [(r.name, r.width, r.format, r.outcome, r.dest) for r in counted.renditions or ()] == [
        (r.name, r.width, r.format, r.outcome, r.dest) for r in result.renditions or ()
    ]


def test_a_manifest_line_reads_keys_it_does_not_know_and_fills_what_an_older_line_left_out():
    line = ManifestLine.decode(
        b'{"id":1,"source":"s","outcome":"done","bytesIn":3,"bytesOut":2,"reason":"","fromTheFuture":7}'
    )
    assert (line.dest, line.message, line.attempts, line.renditions) == ("", "", 1, None)
    assert line.encode() == (
        '{"id":1,"source":"s","dest":"","outcome":"done","bytesIn":3,"bytesOut":2,'
        '"reason":"","message":"","attempts":1}'
    )


def test_only_inputs_with_an_output_count_in_the_bytes_saved():
    from kompressor_operator.ledger import Tally

    tally = Tally()
    tally.add(_result(id=1))  # done: 10 -> 4
    tally.add(
        _result(id=2).model_copy(
            update={"outcome": Outcome.skipped, "reason": "exists", "dest": "s3://out/a.webp"}
        )
    )
    not_smaller = {"outcome": Outcome.skipped, "reason": "not_smaller", "dest": "", "bytes_out": 0}
    tally.add(_result(id=3).model_copy(update=not_smaller))
    failed = {"outcome": Outcome.failed, "reason": "decode", "bytes_out": 0}
    tally.add(_result(id=4).model_copy(update=failed))
    assert (tally.succeeded, tally.skipped, tally.failed) == (1, 2, 1)
    # Before: 40 in, 8 out (80 % "saved") though two inputs had no output at all.
    assert (tally.bytes_in, tally.bytes_out) == (20, 8)


# --- compaction: which parts merge, which a restart reads -------------------------------------------


def _grow(batches: int, fanin: int) -> list[tuple[int, int]]:
    """The live parts after `batches` records with compaction (the ledger's loop, without S3)."""
    from kompressor_operator.ledger import compaction

    spans: list[tuple[int, int]] = []
    for n in range(1, batches + 1):
        spans.append((n, n))
        while (merge := compaction(spans, fanin)) is not None:
            inside = [s for s in spans if merge[0] <= s[0] and s[1] <= merge[1]]
            at = spans.index(inside[0])
            assert spans[at : at + len(inside)] == inside  # a merge takes a run of neighbours
            spans[at : at + len(inside)] = [merge]
    return spans


@given(st.integers(min_value=1, max_value=5000), st.integers(min_value=2, max_value=20))
def test_compaction_keeps_every_batch_once_and_the_parts_few(batches: int, fanin: int):
    import math

    spans = _grow(batches, fanin)
    covered = [n for first, last in spans for n in range(first, last + 1)]
    assert covered == list(range(1, batches + 1))  # in order, each batch once
    levels = math.floor(math.log(batches, fanin)) + 1
    assert len(spans) <= (fanin - 1) * levels


def test_a_million_results_in_batches_of_1000_leave_few_parts():
    from kompressor_operator.ledger import COMPACT_FANIN

    assert len(_grow(1000, COMPACT_FANIN)) <= 45


@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 20)), max_size=30))
def test_live_spans_drop_the_parts_another_holds(raw):
    from kompressor_operator.ledger import live_spans

    spans = [(first, first + width) for first, width in raw]
    live, covered = live_spans(spans)
    assert sorted(set(live) | set(covered)) == sorted(set(spans))
    for a, b in itertools.pairwise(live):
        assert a[1] < b[1] and a[0] < b[0]
    for first, last in covered:
        assert any(start <= first and last <= end for start, end in live)


@given(st.sets(st.integers(min_value=0, max_value=3_000_000), max_size=200), st.integers(0, 3))
def test_a_summary_round_trips_and_merges(ids: set[int], failed_every: int):
    from kompressor_operator.ledger import Summary

    results = [
        Result(
            job=JOB,
            id=n,
            outcome=Outcome.failed if failed_every and n % (failed_every + 1) == 0 else Outcome.done,
            source="s3://raw/a.jpg",
            reason="decode_error",
            bytes_in=n % 97,
            bytes_out=n % 13,
        )
        for n in sorted(ids)
    ]
    half = len(results) // 2
    merged = Summary.of(results[:half])
    merged.merge(Summary.of(results[half:]))
    whole = Summary.of(results)
    assert merged.ids == whole.ids == sum(1 << n for n in ids)
    assert merged.tally == whole.tally
    decoded = Summary.decode(whole.encode())
    assert (decoded.ids, decoded.tally) == (whole.ids, whole.tally)


@pytest.mark.parametrize(
    "change",
    [{"succeeded": -1}, {"succeeded": 5}, {"bits": "not base64!"}, {"base": "0"}, {"failures": {"x": 9}}],
)
def test_a_damaged_summary_is_refused(change: dict):
    from kompressor_operator.ledger import Summary

    good = json.loads(Summary.of([_result(id=3), _result(id=9)]).encode())
    with pytest.raises((ValueError, KeyError, TypeError)):
        Summary.decode(json.dumps(good | change).encode())
