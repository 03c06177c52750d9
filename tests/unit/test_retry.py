"""The retry policy: attempt numbers from headers anyone could have written, and the delays."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompressor.messages import ATTEMPTS_HEADER
from kompressor_worker.retry import (
    FIRST_DELAY_SECONDS,
    MAX_DELAY_SECONDS,
    attempt_number,
    backoff_seconds,
    retry_delay,
)


def test_attempts_count_earlier_copies_and_redeliveries():
    assert attempt_number(None) == 1
    assert attempt_number({}) == 1
    assert attempt_number({"x-delivery-count": 2}) == 3  # two deliveries of this copy ended unsettled
    assert attempt_number({ATTEMPTS_HEADER: 2}) == 3  # a copy from the retry queue after two failures
    assert attempt_number({ATTEMPTS_HEADER: 1, "x-delivery-count": 1}) == 3


@pytest.mark.parametrize(
    "value", ["abc", "3", b"3", [1, 2], {"a": 1}, None, True, -5, 2**62, 10**30, 1.5, float("nan")]
)
def test_a_header_that_is_no_plausible_count_counts_as_none(value):
    # Regression: int("abc"), int([1, 2]) and int(None) raised in the consumer before ack/reject.
    assert attempt_number({"x-delivery-count": value, ATTEMPTS_HEADER: value}) == 1


# Any value pika can decode from an AMQP table, nested.
_AMQP = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary() | st.decimals(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from(["x-delivery-count", ATTEMPTS_HEADER, "other"]), _AMQP))
def test_any_headers_give_an_attempt_number_within_bounds(headers):
    assert 1 <= attempt_number(headers) <= 2001


def test_backoff_doubles_from_the_first_delay_up_to_the_cap():
    assert [backoff_seconds(n) for n in range(1, 5)] == [FIRST_DELAY_SECONDS * f for f in (1, 2, 4, 8)]
    assert backoff_seconds(10**6) == MAX_DELAY_SECONDS


@given(st.integers(min_value=1, max_value=20), st.integers(min_value=1, max_value=20))
def test_the_last_attempt_is_never_retried_and_the_others_always_are(attempt: int, max_attempts: int):
    delay = retry_delay(attempt, max_attempts)
    if attempt >= max_attempts:
        assert delay is None
    else:
        assert delay == backoff_seconds(attempt)
        assert 0 < delay <= MAX_DELAY_SECONDS


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [(7.0, 7.0), (0.0, 0.0), (-3.0, 0.0), (10**9, MAX_DELAY_SECONDS), (float("inf"), MAX_DELAY_SECONDS)],
)
def test_retry_after_replaces_the_backoff_within_the_cap(retry_after: float, delay: float):
    assert retry_delay(1, 3, retry_after) == delay
    assert retry_delay(3, 3, retry_after) is None  # and never adds an attempt
