"""RabbitMQ adapter of the control plane: a job's queues, confirmed publishing, results, depth.

Thin by design: the topology (names and arguments) comes from kompressor.messages; this module only
talks AMQP. Used by the operator's handlers and by local mode, each from one thread per connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import pika
import pika.exceptions

from kompressor.crd import Limits
from kompressor.messages import (
    CONTENT_TYPE,
    JobRef,
    Result,
    Task,
    dead_queue,
    job_queues,
    plain_queue_arguments,
    result_queue,
    retry_queue,
    retry_queue_arguments,
    task_queue,
    task_queue_arguments,
)

PERSISTENT = pika.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2)


def connect(url: str, heartbeat: int = 30) -> pika.BlockingConnection:
    """A blocking connection to the broker at `url`: with heartbeats, and given up after a minute
    blocked (the broker blocks publishers while it is short of memory or disk)."""
    parameters = pika.URLParameters(url)
    parameters.heartbeat = heartbeat
    parameters.blocked_connection_timeout = 60
    return pika.BlockingConnection(parameters)


def declare_job_queues(channel, job: JobRef, limits: Limits) -> None:
    """Each queue after the one its dead letters go to: dead, results, tasks, then retry (whose
    expired messages go back to the task queue)."""
    channel.queue_declare(dead_queue(job), durable=True, arguments=plain_queue_arguments())
    channel.queue_declare(result_queue(job), durable=True, arguments=plain_queue_arguments())
    channel.queue_declare(task_queue(job), durable=True, arguments=task_queue_arguments(job, limits))
    channel.queue_declare(retry_queue(job), durable=True, arguments=retry_queue_arguments(job))


def delete_job_queues(channel, job: JobRef) -> None:
    """Delete every queue of the job (`job_queues`), with what they still hold."""
    for name in job_queues(job):
        channel.queue_delete(name)


def publish_tasks(channel, tasks: Iterable[Task]) -> int:
    """Publish with confirms (the channel must be in confirm mode): each returns once the broker
    has it. Returns how many were published."""
    count = 0
    for task in tasks:
        channel.basic_publish("", task_queue(task.job), task.encode(), PERSISTENT, mandatory=True)
        count += 1
    return count


class ConfirmTimeout(pika.exceptions.AMQPError):
    """The broker did not confirm a batch (or open the connection) in time."""


class ConfirmedPublisher:
    """Publishes batches of tasks with publisher confirms, every message of a batch in flight at once.

    `BlockingChannel.basic_publish` in confirm mode waits for each message's confirm: one round trip
    per task (a quorum queue confirms after its Raft log write), ~400 tasks/s here. This publisher
    sends a whole batch, then waits until the broker has confirmed every message of it: one round
    trip per batch. `publish` returns only then, so a caller that saves its progress after
    `publish` returns never records a task the broker does not hold.

    It runs pika's SelectConnection on a connection of its own, in the caller's thread, only inside
    `publish`: between calls nothing services it, so use it for a burst of batches (one fan-out
    round) and close it; a connection idle past the heartbeat timeout is dropped by the broker.
    Any refusal (nack, unroutable return, closed connection, timeout) raises an AMQPError subclass
    and closes the connection: what was not confirmed must be published again.
    """

    def __init__(self, url: str, heartbeat: int = 30, timeout: float = 120.0):
        self.url = url
        self.heartbeat = heartbeat
        self.timeout = timeout
        self._connection: pika.SelectConnection | None = None
        self._channel = None
        self._error: BaseException | None = None
        self._waiting: Callable[[], bool] | None = None
        self._published = 0  # delivery tags run 1..published on the channel
        self._floor = 0  # every tag <= floor is confirmed
        self._unconfirmed: set[int] = set()
        self._lowest = 1  # the lowest tag that may be unconfirmed (_confirmed_through)
        self._returned: list[bytes] = []

    def __enter__(self) -> ConfirmedPublisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def publish(self, tasks: Sequence[Task]) -> int:
        """Publish every task (persistent, mandatory) and return once all are confirmed."""
        self.wait(self.send(tasks))
        return len(tasks)

    def send(self, tasks: Sequence[Task]) -> int:
        """Publish every task (persistent, mandatory) without waiting for its confirm; returns the
        mark to `wait` for. The frames go out, and the confirms come in, while `wait` runs."""
        if not tasks:
            return self._published
        self._open()
        channel = self._channel
        try:
            for task in tasks:
                channel.basic_publish("", task_queue(task.job), task.encode(), PERSISTENT, mandatory=True)
                self._published += 1
                self._unconfirmed.add(self._published)
        except BaseException:
            self.close()
            raise
        return self._published

    def wait(self, mark: int) -> None:
        """Return once every message sent up to `mark` (send's) is confirmed; raise as publish does."""
        if self._confirmed_through() >= mark and not self._returned:
            return
        try:
            self._run_until(lambda: self._confirmed_through() >= mark, "confirms")
            if self._returned:
                raise pika.exceptions.UnroutableError(list(self._returned))
        except BaseException:
            self.close()
            raise

    def _confirmed_through(self) -> int:
        """The highest tag up to which every message is confirmed (tags are sent in order)."""
        while self._lowest <= self._published and self._lowest not in self._unconfirmed:
            self._lowest += 1
        return self._lowest - 1

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._unconfirmed = set()  # the error that closed it was raised: what it held is sent again
        if connection is not None and not (connection.is_closed or connection.is_closing):
            try:
                connection.close()
                self._run_on(connection, lambda: connection.is_closed, 10.0)
            except Exception:  # closing a broken connection: nothing left to save
                pass

    # --- the event loop, driven from publish ----------------------------------------------------

    def _open(self) -> None:
        if self._connection is not None and self._channel is not None and self._channel.is_open:
            return
        if self._unconfirmed:  # sent on a connection now gone: never counted as confirmed on a new one
            raise pika.exceptions.AMQPConnectionError(f"{len(self._unconfirmed)} messages left unconfirmed")
        self.close()
        self._error, self._returned = None, []
        self._published, self._floor, self._unconfirmed, self._lowest = 0, 0, set(), 1
        parameters = pika.URLParameters(self.url)
        parameters.heartbeat = self.heartbeat
        parameters.blocked_connection_timeout = 60
        try:
            self._connection = pika.SelectConnection(
                parameters,
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_connection_error,
                on_close_callback=self._on_connection_closed,
            )
            self._run_until(lambda: self._channel is not None, "the connection to open")
        except BaseException:
            self.close()
            raise

    def _run_until(self, done: Callable[[], bool], what: str) -> None:
        assert self._connection is not None
        self._waiting = done
        try:
            self._run_on(self._connection, lambda: done() or self._error is not None, self.timeout, what)
        finally:
            self._waiting = None
        if self._error is not None:
            raise self._error

    @staticmethod
    def _run_on(connection, done: Callable[[], bool], timeout: float, what: str = "close") -> None:
        """Run the connection's loop until `done()`; the callbacks stop it when something changed,
        and a check every 0.1 s covers a stop requested while the loop was not running."""
        loop = connection.ioloop
        deadline = time.monotonic() + timeout

        def check() -> None:
            if done() or time.monotonic() >= deadline:
                loop.stop()
            else:
                pending[:] = [loop.call_later(0.1, check)]

        while not done():
            if time.monotonic() >= deadline:
                raise ConfirmTimeout(f"no {what} from RabbitMQ within {timeout:.0f} s")
            pending = [loop.call_later(0.1, check)]
            try:
                loop.start()
            finally:
                for handle in pending:
                    loop.remove_timeout(handle)

    def _stop_if_done(self) -> None:
        if self._connection is not None and (
            self._error is not None or (self._waiting is not None and self._waiting())
        ):
            self._connection.ioloop.stop()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if self._connection is not None:
            self._connection.ioloop.stop()

    # --- pika callbacks -------------------------------------------------------------------------

    def _on_connection_open(self, connection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_error(self, _connection, error) -> None:
        self._fail(error if isinstance(error, BaseException) else pika.exceptions.AMQPConnectionError(error))

    def _on_connection_closed(self, connection, reason) -> None:
        self._channel = None
        connection.ioloop.stop()
        if self._waiting is not None:
            self._fail(
                reason if isinstance(reason, BaseException) else pika.exceptions.AMQPConnectionError(reason)
            )

    def _on_channel_open(self, channel) -> None:
        channel.add_on_return_callback(self._on_return)
        channel.add_on_close_callback(self._on_channel_closed)
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._on_confirm_select(channel))

    def _on_confirm_select(self, channel) -> None:
        self._channel = channel
        self._stop_if_done()

    def _on_channel_closed(self, _channel, reason) -> None:
        self._channel = None
        self._fail(reason if isinstance(reason, BaseException) else pika.exceptions.AMQPChannelError(reason))

    def _on_return(self, _channel, _method, _properties, body: bytes) -> None:
        self._returned.append(body)  # a Basic.Return comes before the message's Basic.Ack

    def _on_confirm(self, frame) -> None:
        method = frame.method
        tag, multiple = method.delivery_tag, method.multiple
        if isinstance(method, pika.spec.Basic.Nack):
            self._fail(pika.exceptions.NackError([]))
            return
        if multiple:
            for confirmed in range(self._floor + 1, tag + 1):
                self._unconfirmed.discard(confirmed)
            self._floor = max(self._floor, tag)
        else:
            self._unconfirmed.discard(tag)
        self._stop_if_done()


@dataclass(frozen=True)
class Depth:
    """Messages ready in a queue (a passive declare cannot see unacked ones)."""

    ready: int


def queue_depth(channel, name: str) -> Depth:
    """How many messages the queue `name` holds ready; it must exist."""
    method = channel.queue_declare(name, passive=True).method
    return Depth(ready=method.message_count)


@dataclass(frozen=True)
class DeadLetter:
    """A task the broker dead-lettered: rejected by a worker, or out of delivery attempts."""

    body: bytes
    reason: str


def drain_results(
    channel, job: JobRef, limit: int = 1000, idle_seconds: float = 0.2
) -> Iterator[tuple[int, Result | None, bytes]]:
    """Up to `limit` results (delivery tag, decoded result or None when undecodable, raw body),
    without acking: the caller acks once what they feed is persisted. Delivered to a consumer with
    a prefetch of `limit` (a round trip per batch: a `basic_get` per result was 85 % of the
    operator's time accounting 100,000 results, bench/million.py); ends at `limit`, at what the
    queue held ready when asked, or when none came for `idle_seconds`. Deliveries not yet yielded
    go back to the queue when it ends.

    The queue's ready count is asked first (a passive declare, one round trip): an empty queue
    ends the drain at once, where waiting `idle_seconds` for a delivery that never comes cost
    every fan-out step 0.2 s (~10 % of its time, bench/million.py); results that arrive meanwhile
    are read by the next drain."""
    limit = min(limit, queue_depth(channel, result_queue(job)).ready)
    if limit <= 0:
        return
    channel.basic_qos(prefetch_count=limit)
    count = 0
    try:
        for method, _properties, body in channel.consume(
            result_queue(job), auto_ack=False, inactivity_timeout=idle_seconds
        ):
            if method is None:
                return
            try:
                yield method.delivery_tag, Result.decode(body), body
            except ValueError:
                yield method.delivery_tag, None, body
            count += 1
            if count >= limit:
                return
    finally:
        # A channel the broker closed has no consumer left to cancel, and pika then fails an assert
        # (not an AMQPError): the step would end the run instead of being retried.
        if channel.is_open:
            channel.cancel()


def drain_dead_letters(channel, job: JobRef, limit: int = 1000) -> Iterator[tuple[int, DeadLetter]]:
    """Up to `limit` of the job's dead letters, each with its delivery tag (unacked: the caller acks
    it once recorded) and the broker's first x-death reason."""
    for _ in range(limit):
        method, properties, body = channel.basic_get(dead_queue(job), auto_ack=False)
        if method is None:
            return
        deaths = (properties.headers or {}).get("x-death") or [{}]
        reason = deaths[0].get("reason", "dead_lettered")
        if isinstance(reason, bytes):
            reason = reason.decode()
        yield method.delivery_tag, DeadLetter(body=body, reason=str(reason))
