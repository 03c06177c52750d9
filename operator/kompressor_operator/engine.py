"""One job's data path, for the operator and for local mode alike: fan-out and accounting.

Each `step()` reads the results (and dead letters) that came back, records them in the ledger, acks
them, then tops the task queue up to `maxOutstanding` from the listing (publishing for at most
FAN_OUT_SECONDS per step), and reports what it saw.
The decisions (replicas, status) stay with the caller and its pure functions: this class only moves
data between S3, RabbitMQ and the ledger. It is used from one thread at a time (pika's
BlockingConnection is not thread-safe).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice

import pika.exceptions
from botocore.exceptions import BotoCoreError, ClientError

from kompressor.crd import CompressionJobSpec
from kompressor.logs import reason
from kompressor.messages import JobRef, MessageError, Outcome, Result, Task, all_failed, task_queue
from kompressor.reasons import Reason
from kompressor_operator import broker
from kompressor_operator.ledger import Cursor, Ledger
from kompressor_operator.listing import list_s3_sources, url_sources
from kompressor_operator.planning import plan_task
from kompressor_operator.policy import Sample
from kompressor_operator.status import Counts, Dependency

log = logging.getLogger("kompressor.engine")

PUBLISH_BATCH = 1000
# A step publishes for at most about this long (at least one batch), the rest in the next steps: the
# caller then decides replicas and writes status within seconds of a backlog appearing, instead of
# after the whole first fan-out (50,000 tasks by default, ~9 s at the ~5,700 tasks/s measured by
# bench/fanout.py).
FAN_OUT_SECONDS = 2.0
# A step records results for at most about this long (at least one batch of 1000): while results
# arrive faster than one `basic_get` each can take them (a million, bench/million.py), a step that
# drained until empty never ended, and neither status nor fan-out moved.
COLLECT_SECONDS = 2.0
# Dead-letter reasons that mean no worker published a result for the task.
_DEAD_REASONS = {
    "delivery_limit": Reason.attempts_exhausted,
    "expired": Reason.expired,
    "maxlen": Reason.queue_overflow,
}
# A broker restart or a short storage outage: the step is tried again after each delay (~30 s in all).
STEP_RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0)
_TRANSIENT = (pika.exceptions.AMQPError, OSError, BotoCoreError, ClientError)
MALFORMED = "malformed"


class StepFailed(Exception):
    """A broker or storage error that outlasted the step's retries; `dependency` says which failed."""

    def __init__(self, dependency: Dependency, error: BaseException):
        super().__init__(f"{type(error).__name__}: {error}")
        self.dependency = dependency


def _failing(error: BaseException) -> Dependency:
    # botocore wraps its socket errors (EndpointConnectionError, ReadTimeoutError...): an error that
    # is not botocore's came from the broker connection.
    return Dependency.storage if isinstance(error, BotoCoreError | ClientError) else Dependency.broker


@dataclass(frozen=True)
class Progress:
    """What one step saw: the ledger's counts and the broker's ready count."""

    counts: Counts
    ready: int
    accounted_now: int
    published_now: int
    refused_now: Mapping[str, int] = field(default_factory=dict)
    """Results and dead letters read in this step and dropped unrecorded, by reason."""
    publishing: bool = False
    """The fan-out stopped at FAN_OUT_SECONDS with inputs left to list and room under
    maxOutstanding for them: the next step can go on publishing at once."""

    @property
    def finished(self) -> bool:
        return self.counts.listing_done and self.counts.accounted >= self.counts.total

    def sample(self, suspended: bool) -> Sample:
        """What the scaling policy needs. In-flight tasks are not visible to a passive declare;
        published − accounted counts them."""
        return Sample(
            ready=self.ready,
            published=self.counts.published,
            accounted=self.counts.accounted,
            finished=self.finished,
            suspended=suspended,
        )


def dead_letter_result(task: Task, reason: str, recorded: bool, max_attempts: int) -> Result | None:
    """The failed Result a dead-lettered task stands for, or None: when its result is `recorded`
    already (a worker confirms a failure's result before rejecting the task), or when the broker's
    `reason` is not one that means no worker published a result."""
    if recorded or reason not in _DEAD_REASONS:
        return None
    return Result(
        job=task.job,  # the ledger refuses a dead letter of another job, as a result
        id=task.id,
        outcome=Outcome.failed,
        source=task.source.describe(),
        reason=_DEAD_REASONS[reason],
        message=f"dead-lettered by the broker ({reason})",
        attempts=max_attempts,
        renditions=all_failed(task, _DEAD_REASONS[reason], f"dead-lettered by the broker ({reason})"),
    )


def fan_out_room(max_outstanding: int, cursor: Cursor, accounted: int) -> int:
    """Tasks the fan-out may publish now: maxOutstanding less those published and not accounted
    (≤ 0: none)."""
    return max_outstanding - (cursor.next_id - accounted)


def advanced(cursor: Cursor, keys: Sequence[str | None], asked: int) -> Cursor:
    """The cursor after publishing one batch of sources (`keys`: their listing keys, None for a URL
    manifest's rows) of the `asked` taken from the listing: fewer than asked means the listing is
    exhausted, so it is done and the total known."""
    exhausted = len(keys) < asked
    next_id = cursor.next_id + len(keys)
    return Cursor(
        next_id=next_id,
        after_key=keys[-1] or "" if keys else cursor.after_key,
        listing_done=exhausted,
        total=next_id if exhausted else cursor.total,
    )


class JobEngine:
    """One job's I/O with the broker and S3: the listing and fan-out of its tasks, the results
    read into its ledger, the manifest at the end. The controller and local mode each drive one per
    job through `step`; it decides nothing the reconcile decides."""

    def __init__(
        self,
        job: JobRef,
        spec: CompressionJobSpec,
        broker_url: str,
        s3_client,
        retry_delays: Sequence[float] = STEP_RETRY_DELAYS,
    ):
        self.job = job
        self.spec = spec
        self.broker_url = broker_url
        self.s3 = s3_client
        self.retry_delays = retry_delays
        self.ledger = Ledger(s3_client, job, spec)
        self._connection = None
        self._channel = None
        self._sources: Iterator | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self) -> JobEngine:
        """Declare the queues and read the ledger back (resuming after a restart)."""
        self.ledger.load()
        self._ensure_channel()
        return self

    def close(self) -> None:
        """Close the broker connection and stop the listing (the next step lists again from the
        saved cursor)."""
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except (pika.exceptions.AMQPError, OSError):
                pass
        self._connection = self._channel = None
        close = getattr(self._sources, "close", None)
        if close is not None:
            close()  # stops an S3 listing's prefetching thread
        self._sources = None

    def delete_queues(self) -> None:
        channel = self._ensure_channel()
        broker.delete_job_queues(channel, self.job)

    def _ensure_channel(self):
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._connection = broker.connect(self.broker_url)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
            broker.declare_job_queues(self._channel, self.job, self.spec.limits)
        return self._channel

    # --- the step -------------------------------------------------------------------------------

    def step(self) -> Progress:
        """One round. A round that fails part-way leaves nothing half done: the connection is closed
        (results read but not acked go back to their queue) and the listing starts again from the
        saved cursor (a batch published but not saved is published again, with the same ids).
        Broker and storage errors are retried after each of `retry_delays`, then raised as
        StepFailed. A URL manifest that cannot be read as one raises ManifestError."""
        for delay in (*self.retry_delays, None):
            try:
                return self._step()
            except _TRANSIENT as exc:
                self._reset()
                if delay is None:
                    raise StepFailed(_failing(exc), exc) from exc
                log.warning("job %s: step failed (%s); retrying in %.0fs", self.job, reason(exc), delay)
                time.sleep(delay)
            except BaseException:
                self._reset()
                raise
        raise AssertionError("unreachable")

    def _reset(self) -> None:
        self.close()

    def _step(self) -> Progress:
        channel = self._ensure_channel()
        accounted, refused = self._collect(channel)
        published, publishing = self._fan_out(channel)
        ready = broker.queue_depth(channel, task_queue(self.job)).ready
        return Progress(self.counts(), ready, accounted, published, refused, publishing)

    def counts(self) -> Counts:
        tally, cursor = self.ledger.tally, self.ledger.cursor
        total = cursor.total if cursor.total is not None else cursor.next_id
        return Counts(
            total=total,
            published=cursor.next_id,
            succeeded=tally.succeeded,
            skipped=tally.skipped,
            failed=tally.failed,
            bytes_in=tally.bytes_in,
            bytes_out=tally.bytes_out,
            failures_by_reason=tuple(tally.failures.items()),
            renditions=(
                tally.renditions[Outcome.done],
                tally.renditions[Outcome.skipped],
                tally.renditions[Outcome.failed],
            ),
            listing_done=cursor.listing_done,
            listing_started=True,
        )

    def _collect(self, channel) -> tuple[int, Counter[str]]:
        """Results first (for up to COLLECT_SECONDS), then dead letters: a worker confirms a
        failure's result before rejecting the task, so a rejected dead letter's result is always
        read before the dead letter, when the results are drained first.
        Returns how many were new and how many were dropped unrecorded (by reason)."""
        new, refused = 0, Counter[str]()
        deadline = time.monotonic() + COLLECT_SECONDS
        while True:
            # Tags and decoded results only: an undecodable body is not kept past its decode.
            batch = [(tag, result) for tag, result, _body in broker.drain_results(channel, self.job)]
            if not batch:
                break
            results = [result for _tag, result in batch if result is not None]
            if len(results) < len(batch):
                refused[MALFORMED] += len(batch) - len(results)
                log.warning("job %s: dropped %d undecodable result(s)", self.job, len(batch) - len(results))
            recorded = self.ledger.record(results)
            new += recorded.new
            refused += recorded.refused
            channel.basic_ack(batch[-1][0], multiple=True)
            if time.monotonic() >= deadline:
                # The rest in the next steps, the dead letters too: one read now could have its
                # result among those left (and be counted as the broker's failure, not the worker's).
                return new, refused
        dead: list[Result] = []
        last_tag = None
        for tag, letter in broker.drain_dead_letters(channel, self.job):
            try:
                task = Task.decode(letter.body)
            except (MessageError, RecursionError) as exc:  # RecursionError: JSON nested too deep
                log.warning("job %s: dropping an undecodable dead letter (%s)", self.job, exc)
                refused[MALFORMED] += 1
                last_tag = tag
                continue
            result = dead_letter_result(
                task, letter.reason, self.ledger.seen(task.id), self.spec.limits.max_attempts
            )
            if result is not None:
                dead.append(result)
            last_tag = tag
        if dead:
            recorded = self.ledger.record(dead)
            new += recorded.new
            refused += recorded.refused
        if last_tag is not None:
            channel.basic_ack(last_tag, multiple=True)
        return new, refused

    def _fan_out(self, channel) -> tuple[int, bool]:
        """Publish while fewer than maxOutstanding tasks are unaccounted, for up to FAN_OUT_SECONDS;
        save the cursor per batch. Returns how many were published, and whether it stopped for time
        with room left (Progress.publishing).

        Each batch is sent before the previous one's confirms are awaited and its cursor saved, so
        the broker stores one batch while the next is listed, planned and encoded (bench/million.py).
        A crash republishes on restart what was sent and not saved, at most two batches: the
        duplicates find their outputs already stored and the ledger counts each id once."""
        cursor = self.ledger.cursor
        if cursor.listing_done:
            return 0, False
        room = fan_out_room(self.spec.limits.max_outstanding, cursor, self.ledger.tally.accounted)
        published = 0
        deadline = time.monotonic() + FAN_OUT_SECONDS
        # A batch's tasks are all in flight at once and confirmed together (one round trip per
        # batch, not per task); the connection lasts this round only (see ConfirmedPublisher).
        with broker.ConfirmedPublisher(self.broker_url) as publisher:
            sent: tuple[int, Cursor] | None = None  # the batch sent, not yet confirmed and saved
            while room > 0:
                asked = min(room, PUBLISH_BATCH)
                sources = list(islice(self._source_iterator(cursor), asked))
                tasks = [plan_task(self.job, self.spec, cursor.next_id + i, s) for i, s in enumerate(sources)]
                mark = publisher.send(tasks)
                cursor = advanced(cursor, [s.key for s in sources], asked)
                if sent is not None:
                    self._confirmed(publisher, *sent)
                sent = (mark, cursor)
                published += len(sources)
                room -= len(sources)
                if cursor.listing_done or time.monotonic() >= deadline:
                    break
            if sent is not None:
                self._confirmed(publisher, *sent)
        if cursor.listing_done:
            self._sources = None  # an S3 listing's thread ended with the listing
            return published, False
        return published, room > 0

    def _confirmed(self, publisher: broker.ConfirmedPublisher, mark: int, cursor: Cursor) -> None:
        """Wait for a batch's confirms, then save the cursor after it: never a task the broker may
        not hold recorded as published."""
        publisher.wait(mark)
        self.ledger.save_cursor(cursor)

    def _source_iterator(self, cursor: Cursor) -> Iterator:
        if self._sources is None:
            if self.spec.source.s3 is not None:
                self._sources = list_s3_sources(self.s3, self.spec.source.s3, start_after=cursor.after_key)
            else:
                assert self.spec.source.urls is not None
                urls = url_sources(self.s3, self.spec.source.urls)
                self._sources = iter(urls[cursor.next_id :])
        return self._sources

    def finish(self) -> str:
        """Write manifest.jsonl from the ledger; returns its s3:// URL."""
        return self.ledger.write_manifest()
