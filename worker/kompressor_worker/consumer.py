"""The broker side of a worker: consume tasks, hand them to the pool, settle each one exactly once.

pika's BlockingConnection is not thread-safe and services heartbeats only inside its own calls, so
the connection stays on this thread. Each task runs on an I/O thread (task.TaskRunner: storage
calls there, the encode in the process pool); its completion comes back through
`add_callback_threadsafe`, and all publishing and acking happens here. The threads are as many as
the prefetch, so every task held has a thread to fetch its input while earlier ones are encoded.

A task is settled only after its result is confirmed by the broker:
- done / skipped: publish the result, then ack.
- permanent failure: publish the result, then reject without requeue (the dead-letter queue keeps it).
- transient failure (storage or origin down, timeout, a crashed child): publish a copy to the job's
  retry queue with the delay as its TTL (it returns to the task queue when the TTL ends; see
  kompressor.messages.retry_queue_arguments), then ack; unless this was the last allowed attempt,
  which ends as a failure like a permanent one. The delay and the attempt count: retry.py.
If the connection drops first, nothing is settled: the broker redelivers and the task's output,
already stored, is recognised by the next attempt. (Likewise a copy confirmed in the retry queue
whose original was not acked: both run, and the second finds the first's output.)
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial

import pebble
import pika
import pika.exceptions

from kompressor.logs import reason
from kompressor.messages import (
    ATTEMPTS_HEADER,
    CONTENT_TYPE,
    MessageError,
    Outcome,
    Result,
    Task,
    all_failed,
    result_queue,
    retry_queue,
)
from kompressor.reasons import Reason
from kompressor_worker.health import Health
from kompressor_worker.metrics import Metrics
from kompressor_worker.retry import attempt_number, retry_delay
from kompressor_worker.settings import WorkerSettings
from kompressor_worker.task import TaskRunner, TransientError

log = logging.getLogger("kompressor.worker")

_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    ConnectionError,
    OSError,
)


@dataclass
class _InFlight:
    task: Task
    body: bytes  # as delivered: a retry publishes the same bytes again
    attempts: int
    started: float
    encoding: Future | None = None  # the encode in the pool, once scheduled (set from the I/O thread)


@dataclass(frozen=True)
class _Retry:
    reason: str
    delay: float


# Tasks handed to the pool and none of them started for this long: the pool is stuck. pebble waits
# up to 60 s per lock of the pipe its tasks go through (CONSTS.channel_lock_timeout) when a pool
# process was killed holding it, and a frozen process takes tasks it never runs; a healthy pool
# starts a task within a second or two (a new process and its initializer included).
POOL_STALL_SECONDS = 20.0


def backoff_delays(first: float = 0.5, cap: float = 30.0):
    """Reconnection delays: `first`, doubled each time, at most `cap` seconds."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * 2)


class Consumer:
    """The worker's broker side: consumes the job's task queue with a bounded prefetch, hands each
    task to `task.py` on an I/O thread, and publishes its result and acks it (or schedules a retry,
    or rejects it to the dead letters) on the connection's thread; drains on SIGTERM."""

    def __init__(
        self,
        settings: WorkerSettings,
        pool: pebble.ProcessPool,
        processes: int,
        metrics: Metrics,
        health: Health,
    ):
        self.settings = settings
        self.pool = pool
        self.processes = processes
        self.prefetch = settings.prefetch or processes * 2
        self.runner = TaskRunner(settings, pool)
        self.threads = ThreadPoolExecutor(self.prefetch, thread_name_prefix="task")
        self.metrics = metrics
        self.health = health
        self._stopping = False
        self._deadline: float | None = None
        self._inflight: dict[int, _InFlight] = {}
        self._stalled_since: float | None = None
        self._requeue_inflight = False

    def close(self) -> None:
        """After `run`: give up whatever still runs (the broker redelivers it), stop pool and threads."""
        self.runner.close()
        self.pool.stop()
        self.pool.join(timeout=10)
        self.threads.shutdown(cancel_futures=True)

    def stop(self) -> None:
        """Stop consuming and drain in-flight tasks within the grace period (safe in a signal handler)."""
        if not self._stopping:
            self._stopping = True
            self._deadline = time.monotonic() + self.settings.grace_seconds
            log.info("stopping: draining %d in-flight task(s)", len(self._inflight))

    def run(self) -> None:
        """Consume until stopped, reconnecting with backoff whenever the broker goes away."""
        delays = backoff_delays()
        parameters = pika.URLParameters(self.settings.broker.url.get_secret_value())
        parameters.heartbeat = self.settings.broker.heartbeat_seconds
        parameters.blocked_connection_timeout = 60
        while not self._stopping:
            try:
                connection = pika.BlockingConnection(parameters)
            except _CONNECTION_ERRORS as exc:
                self.health.disconnected()
                # The reason is ours to log: pika's own loggers are held quiet (kompressor.logs).
                self._pause(next(delays), f"broker unreachable ({reason(exc)})")
                continue
            self.health.connected()
            try:
                self._serve(connection)
                delays = backoff_delays()
            except _CONNECTION_ERRORS as exc:
                self.health.disconnected()
                # Settling those needs this connection; the broker redelivers them instead.
                self._inflight.clear()
                self._pause(next(delays), f"broker connection lost ({reason(exc)})")
            finally:
                if connection.is_open:
                    with contextlib.suppress(_CONNECTION_ERRORS):
                        connection.close()

    def _pool_lost(self, why: str) -> None:
        """pebble's pool is broken for good once one of its processes dies while it runs no task (an
        OOM kill of an idle child, a failing initializer), and can be stuck for minutes (see
        POOL_STALL_SECONDS). Either way: stop it, stop consuming, requeue its tasks (`_serve`, once
        the consumer is cancelled) and exit, for the Deployment (or local mode) to start a new
        worker, rather than crash on the next delivery or sit on the tasks."""
        log.error("%s; stopping to be restarted", why)
        if self.pool.active:
            self.pool.stop()
            self.pool.join(timeout=10)
        self._requeue_inflight = True
        self.stop()

    def _encodings(self) -> list[Future]:
        return [inflight.encoding for inflight in list(self._inflight.values()) if inflight.encoding]

    def _pool_stalled(self) -> bool:
        futures = self._encodings()
        if not futures or any(future.running() or future.done() for future in futures):
            self._stalled_since = None
            return False
        now = time.monotonic()
        if self._stalled_since is None:
            self._stalled_since = now
        return now - self._stalled_since > POOL_STALL_SECONDS

    def _pause(self, seconds: float, why: str) -> None:
        log.warning("%s; retrying in %.1fs", why, seconds)
        end = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < end:
            time.sleep(0.1)

    def _serve(self, connection: pika.BlockingConnection) -> None:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=self.prefetch)
        on_message = partial(self._on_message, connection)
        tag = channel.basic_consume(self.settings.queue, on_message_callback=on_message)
        self.health.consuming = True
        log.info(
            "consuming %s with %d processes, prefetch %d", self.settings.queue, self.processes, self.prefetch
        )
        while True:
            connection.process_data_events(time_limit=0.25)
            self.metrics.busy.set(sum(future.running() for future in self._encodings()))
            if not self._stopping and not self.pool.active:
                self._pool_lost("the process pool broke (a pool process died outside a task)")
            elif self._pool_stalled():  # also while draining: a stuck pool never drains
                self._pool_lost(f"the process pool is stuck: no task started for {POOL_STALL_SECONDS:.0f}s")
            if not self._stopping:
                continue
            if tag is not None:
                # Deliveries still in transit are requeued by pika during the cancel; they never
                # started here, but RabbitMQ 3.10 counts them as a delivery (x-delivery-count).
                channel.basic_cancel(tag)
                tag = None
                self.health.consuming = False
            if self._requeue_inflight:  # the pool is gone: its tasks will not finish here
                for delivery_tag in list(self._inflight):
                    channel.basic_nack(delivery_tag, requeue=True)
                self._inflight.clear()
                self._requeue_inflight = False
            if not self._inflight:
                break
            if self._deadline is not None and time.monotonic() > self._deadline:
                log.warning(
                    "grace period over with %d task(s) unfinished; the broker will redeliver them",
                    len(self._inflight),
                )
                break
        channel.close()

    def _on_message(self, connection, channel, method, properties, body: bytes) -> None:
        try:
            task = Task.decode(body)
        except (MessageError, RecursionError) as exc:  # json.loads: RecursionError when nested too deep
            reason = getattr(exc, "reason", Reason.malformed_message)
            log.error("rejecting an undecodable task (%s): %s", reason, exc)
            self.metrics.task_ended("failed", reason)
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        inflight = _InFlight(task, body, attempt_number(properties.headers), time.monotonic())
        self._inflight[method.delivery_tag] = inflight
        future = self.threads.submit(
            self.runner.run,
            task,
            inflight.attempts,
            partial(setattr, inflight, "encoding"),
            redelivered=bool(method.redelivered),
        )
        settle = partial(self._settle, channel, method.delivery_tag)

        def done(finished) -> None:
            try:
                connection.add_callback_threadsafe(partial(settle, finished))
            except pika.exceptions.ConnectionWrongStateError:
                pass  # that connection is gone; the broker redelivers the task

        future.add_done_callback(done)

    def _settle(self, channel, delivery_tag: int, future) -> None:
        inflight = self._inflight.pop(delivery_tag, None)
        if inflight is None or not channel.is_open:
            return
        task, attempts = inflight.task, inflight.attempts
        result = self._outcome(task, attempts, future)
        if isinstance(result, _Retry):
            self.metrics.task_retried(result.reason)
            self._retry_later(channel, delivery_tag, inflight, result.delay)
            return
        try:
            channel.basic_publish(
                "",
                result_queue(task.job),
                result.encode(),
                pika.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2),
                mandatory=True,
            )
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            log.error("result of task %d not accepted by the broker (%s); requeueing", task.id, exc)
            channel.basic_nack(delivery_tag, requeue=True)
            return
        self._count(result, inflight)
        if result.outcome is Outcome.failed:
            channel.basic_reject(delivery_tag, requeue=False)
        else:
            channel.basic_ack(delivery_tag)

    def _retry_later(self, channel, delivery_tag: int, inflight: _InFlight, delay: float) -> None:
        """The task's next attempt in `delay` seconds: a copy to the retry queue, confirmed, then the ack."""
        properties = pika.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=2,
            expiration=str(round(delay * 1000)),
            headers={ATTEMPTS_HEADER: inflight.attempts},
        )
        try:
            channel.basic_publish(
                "", retry_queue(inflight.task.job), inflight.body, properties, mandatory=True
            )
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            # No retry queue (declared by an older operator) or a broker refusal: retry at once.
            log.warning("task %d not accepted by the retry queue (%s); requeueing", inflight.task.id, exc)
            channel.basic_nack(delivery_tag, requeue=True)
            return
        channel.basic_ack(delivery_tag)

    def _outcome(self, task: Task, attempts: int, future) -> Result | _Retry:
        """The task's Result, or when and why to try it again."""
        retry_after = None
        try:
            return future.result()
        except TransientError as exc:
            reason, message, retry_after = exc.reason, str(exc), exc.retry_after
        except FutureTimeout:
            reason, message = Reason.timeout, f"killed after {task.limits.task_timeout_seconds}s"
        except pebble.ProcessExpired as exc:
            reason, message = Reason.worker_crashed, f"pool process died (exit code {exc.exitcode})"
        except (BrokenProcessPool, CancelledError):  # CancelledError: the pool was stopped
            reason, message = Reason.worker_crashed, "the process pool broke"
        except Exception as exc:  # a bug: retry like a transient failure, bounded by maxAttempts
            log.exception("task %d raised", task.id)
            reason, message = Reason.internal_error, f"{type(exc).__name__}: {exc}"
        delay = retry_delay(attempts, task.limits.max_attempts, retry_after)
        if delay is not None:
            log.info(
                "task %d attempt %d failed (%s: %s); retrying in %.1fs",
                task.id,
                attempts,
                reason,
                message,
                delay,
            )
            return _Retry(reason, delay)
        return Result(
            job=task.job,
            id=task.id,
            outcome=Outcome.failed,
            source=task.source.describe(),
            reason=reason,
            message=f"gave up after {attempts} attempts: {message}",
            attempts=attempts,
            renditions=all_failed(task, reason, message),
        )

    def _count(self, result: Result, inflight: _InFlight) -> None:
        self.metrics.task_ended(result.outcome.value, result.reason)
        self.metrics.task_seconds.observe(time.monotonic() - inflight.started)
        self.metrics.bytes_in.inc(result.bytes_in)
        self.metrics.bytes_out.inc(result.bytes_out)
        self.metrics.observe_quality(result.quality, result.ssim)
