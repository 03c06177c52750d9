"""The engine's decisions: which dependency a failed step names (the word behind StorageReachable
and BrokerReachable), what a dead letter stands for, the fan-out's room and its cursor."""

from __future__ import annotations

import pika.exceptions
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from hypothesis import given, settings
from hypothesis import strategies as st

from kompressor.crd import CompressionJobSpec
from kompressor.messages import JobRef, Outcome, SourceObject
from kompressor_operator.engine import StepFailed, _failing, advanced, dead_letter_result, fan_out_room
from kompressor_operator.ledger import Cursor
from kompressor_operator.planning import plan_task
from kompressor_operator.status import Dependency


@pytest.mark.parametrize(
    ("error", "dependency"),
    [
        (
            ClientError({"Error": {"Code": "InternalError", "Message": "disk full"}}, "PutObject"),
            Dependency.storage,
        ),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), Dependency.storage),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), Dependency.storage),
        (pika.exceptions.AMQPConnectionError("refused"), Dependency.broker),
        (pika.exceptions.StreamLostError("reset"), Dependency.broker),
        (ConnectionResetError("reset by peer"), Dependency.broker),
    ],
)
def test_a_failed_step_names_the_dependency_and_the_error(error: Exception, dependency: Dependency):
    failed = StepFailed(_failing(error), error)
    assert failed.dependency is dependency
    assert str(failed).startswith(f"{type(error).__name__}: ")
    assert dependency.condition == {"storage": "StorageReachable", "broker": "BrokerReachable"}[dependency]


# --- the engine's decisions -------------------------------------------------------------------------

JOB = JobRef(namespace="shop", name="catalog", uid="uid-1")
SPEC = CompressionJobSpec.model_validate(
    {"source": {"s3": {"bucket": "raw", "prefix": "in/"}}, "destination": {"s3": {"bucket": "web"}}}
)
TASK = plan_task(JOB, SPEC, 7, SourceObject(bucket="raw", key="in/a.jpg"))


@pytest.mark.parametrize(
    ("reason", "named"),
    [("delivery_limit", "attempts_exhausted"), ("expired", "expired"), ("maxlen", "queue_overflow")],
)
def test_a_dead_letter_no_worker_answered_is_a_failed_result(reason, named):
    result = dead_letter_result(TASK, reason, recorded=False, max_attempts=4)
    assert result is not None
    assert (result.job, result.id, result.outcome, result.reason, result.attempts) == (
        JOB,
        7,
        Outcome.failed,
        named,
        4,
    )
    assert result.source == "s3://raw/in/a.jpg"
    assert result.message == f"dead-lettered by the broker ({reason})"


@pytest.mark.parametrize(("reason", "recorded"), [("rejected", False), ("delivery_limit", True)])
def test_a_dead_letter_whose_result_came_or_that_a_worker_rejected_adds_nothing(reason, recorded):
    """A worker confirms a failure's result before it rejects the task: that result is the word."""
    assert dead_letter_result(TASK, reason, recorded, max_attempts=4) is None


def test_the_fan_out_has_room_for_what_is_not_outstanding():
    assert fan_out_room(100, Cursor(next_id=30), accounted=10) == 80
    assert fan_out_room(100, Cursor(next_id=130), accounted=10) == -20  # lowered maxOutstanding


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 50)), min_size=1, max_size=10))
def test_the_cursor_advances_by_each_batch_and_ends_with_a_short_one(batches):
    cursor, keys_so_far = Cursor(), 0
    for asked, got in batches:
        got = min(got, asked)
        keys = [f"in/{keys_so_far + i:05d}.jpg" for i in range(got)]
        before = cursor
        cursor = advanced(cursor, keys, asked)
        keys_so_far += got
        assert cursor.next_id == keys_so_far
        assert cursor.after_key == (keys[-1] if keys else before.after_key)
        assert cursor.listing_done == (got < asked)
        assert cursor.total == (keys_so_far if got < asked else None)
        if cursor.listing_done:
            break


def test_a_url_manifest_batch_keeps_no_key():
    assert advanced(Cursor(next_id=3, after_key=""), [None, None], asked=5) == Cursor(
        next_id=5, after_key="", listing_done=True, total=5
    )
