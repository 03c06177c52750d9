"""The ledger's trust rules as pure functions: which results may be recorded, and which lines read
back from a ledger part count (a damaged one is skipped, never a reason to fail a restart)."""

from __future__ import annotations

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
