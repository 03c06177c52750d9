"""Leader election's ranking: the older operator leads, and two never tie (kopf pauses both then)."""

from __future__ import annotations

from kompressor_operator.handlers import leadership_priority


def test_the_older_operator_outranks_the_newer_one():
    assert leadership_priority(1_000.000) > leadership_priority(1_000.001)
    assert leadership_priority(1_000.0) > leadership_priority(2_000.0)


def test_operators_started_in_the_same_millisecond_are_told_apart():
    priorities = {leadership_priority(1_000.0) for _ in range(50)}
    assert len(priorities) > 1
    assert all(p > leadership_priority(1_000.001) for p in priorities)
