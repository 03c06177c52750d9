"""When a task that failed for a passing reason is tried again: its attempt number and the delay.

Pure: the consumer reads a delivery's headers and a failure's Retry-After through these functions
and does the publishing. They must never trust a header: the broker credentials every worker pod
holds can publish anything, with any header, into a task queue.

A task's attempts are counted across copies. A transient failure publishes a new copy to the job's
retry queue carrying the attempts made so far (ATTEMPTS_HEADER); the broker's `x-delivery-count`
counts the deliveries of one copy that ended without a verdict (a worker killed, a connection lost).
"""

from __future__ import annotations

from collections.abc import Mapping

from kompressor.messages import ATTEMPTS_HEADER

FIRST_DELAY_SECONDS = 1.0
# Every delay, Retry-After included, is at most this: the retry queue releases a message only after
# those ahead of it (kompressor.messages.retry_queue_arguments), so this also bounds every wait.
MAX_DELAY_SECONDS = 120.0
# Far above any honest count (maxAttempts is at most 20); a larger value is forged and ignored.
_MAX_COUNT = 1000


def _count(value: object) -> int:
    """A header that counts something: a non-negative int, or 0 for anything else (bool included)."""
    return value if type(value) is int and 0 <= value <= _MAX_COUNT else 0


def attempt_number(headers: Mapping[str, object] | None) -> int:
    """1 for a task's first attempt; earlier attempts come from the copy's ATTEMPTS_HEADER and the
    broker's `x-delivery-count`. Any header value is tolerated (a string, a list, None, a huge or
    negative number): what is not a plausible count counts as 0."""
    headers = headers or {}
    return 1 + _count(headers.get(ATTEMPTS_HEADER)) + _count(headers.get("x-delivery-count"))


def backoff_seconds(attempt: int) -> float:
    """The wait after failed attempt `attempt` (1, 2, ...): 1 s, 2 s, 4 s, ... up to MAX_DELAY_SECONDS."""
    return min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2.0 ** min(max(attempt, 1) - 1, 32))


def retry_delay(attempt: int, max_attempts: int, retry_after: float | None = None) -> float | None:
    """Seconds to wait before trying again after failed attempt `attempt`, or None when it was the
    last one allowed. An origin's Retry-After replaces the backoff, within MAX_DELAY_SECONDS."""
    if attempt >= max_attempts:
        return None
    if retry_after is not None:
        return min(MAX_DELAY_SECONDS, max(0.0, retry_after))
    return backoff_seconds(attempt)
