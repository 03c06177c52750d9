"""The ledger's trust rules as pure functions: which results may be recorded, and which lines read
back from a ledger part count (a damaged one is skipped, never a reason to fail a restart)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompressor.messages import JobRef, Outcome, Result
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
    return json.dumps(manifest_line(_result()) | change)


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
        (_line(outcome="exploded"), 4, "ValueError"),
        (json.dumps({"id": 1}), 4, "KeyError"),
        ("[1, 2, 3]", 4, "TypeError"),
        ("not json at all", 4, "JSONDecodeError"),
        ("\ufffd\ufffd", 4, "JSONDecodeError"),  # a part that was not UTF-8, decoded with replacement
        ("[" * 100_000, 4, ""),  # nested too deep: RecursionError or a JSON error, never a crash
    ],
)
def test_a_damaged_ledger_line_is_named_not_raised(line: str, published: int, problem: str):
    found = _ledger_result(line, published)
    assert isinstance(found, str) and problem in found


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
