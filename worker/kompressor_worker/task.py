"""One task, from delivery to Result: storage and network I/O on a thread of the worker's main
process, the decode and encode in a pool child.

The split is for throughput and for the heartbeats. An encoding child that also made its own S3
calls in series sat idle during every HEAD, GET and PUT: the worker ran at 0.66x (WebP) and 0.39x
(JPEG) of the bare encoder on the same cores (bench/worker.py). With the I/O on threads, the next
tasks' inputs are fetched while the children encode, and the children do nothing but decode and
encode. The broker connection stays responsive because pika is serviced from its own thread and the
CPU-bound work runs in other processes.

A task ends in one of three ways: a `Result` (done, skipped, or a permanent failure with its
reason), a `TransientError` that the consumer turns into a requeue (or a failure on the last
attempt), or an exception of the pool (timeout, a killed child) that the consumer treats the same.

`limits.taskTimeoutSeconds` bounds the fetch and the encode together: the encode is given what is
left and its child is killed when it runs over. Storage calls are bounded by the S3 client's own
connect/read timeouts and retries.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import posixpath
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait

from kompressor.addresses import AddressPolicy
from kompressor.crd import Existing, InputFormat, Limits, Output
from kompressor.formats import CONTENT_TYPES
from kompressor.messages import Outcome, Result, Task
from kompressor.reasons import Reason
from kompressor_s3 import s3_client
from kompressor_worker.codec import CodecError, Compressed, compress
from kompressor_worker.fetch import FetchError, RateLimiter, fetch_url
from kompressor_worker.never_larger import NotSmaller
from kompressor_worker.settings import WorkerSettings
from kompressor_worker.storage import (
    ExistingOutput,
    OutputChanged,
    StorageError,
    existing_output,
    read_source,
    settings_fingerprint,
    write_output,
)


class TransientError(Exception):
    """Worth another attempt: the storage or origin was unavailable, or the task ran out of time.
    `retry_after`: the seconds the origin asked to wait (HTTP 429/503 Retry-After), if it did."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


# --- in the pool's children ------------------------------------------------------------------------

_memory_budget: int | None = None


def init_child(memory_budget: int | None) -> None:
    """Pool initializer: the bytes one child may use for the pixels of one image."""
    global _memory_budget
    _memory_budget = memory_budget


def encode(
    data: bytes, output: Output, limits: Limits, allowed_input_formats: tuple[InputFormat, ...]
) -> Compressed:
    """Entry point in a child; raises CodecError for an input that cannot become an output, and
    NotSmaller when neverLarger stores nothing."""
    compressed = compress(data, output, limits, _memory_budget, allowed_input_formats)
    # The automatic-quality search's trail stays here: nothing downstream reads it.
    return dataclasses.replace(compressed, attempts=())


# --- on the worker's I/O threads -------------------------------------------------------------------


def check_key(key: str) -> str | None:
    """Why an output key is unsafe, or None: no absolute path, no `..`, at most 1024 bytes."""
    if not key or key.startswith("/"):
        return "must be a relative, non-empty key"
    if ".." in key.split("/") or posixpath.normpath(key) != key.rstrip("/"):
        return "must not contain '..', '.' or empty segments"
    if len(key.encode()) > 1024:
        return "is longer than 1024 bytes"
    return None


class TaskRunner:
    """Runs tasks on the caller's thread, sending the encode to `pool`. Thread-safe: one S3 client
    (boto3 clients are) and one URL rate limiter, shared by all of the worker's tasks, so an origin
    sees one rate per worker, whatever its number of processes."""

    def __init__(self, settings: WorkerSettings, pool):
        self.pool = pool
        self.client = s3_client(settings.storage)
        self.policy = AddressPolicy(
            allow_networks=tuple(ipaddress.ip_network(n) for n in settings.url_allow_networks)
        )
        self.limiter = RateLimiter(
            rate=settings.url_requests_per_second, burst=max(1, int(settings.url_requests_per_second))
        )
        self.allowed_input_formats = tuple(settings.allowed_input_formats)
        self._closing = threading.Event()

    def close(self) -> None:
        """Stop waiting for encodes: a stuck pool may never finish or cancel them."""
        self._closing.set()

    def run(self, task: Task, attempts: int, on_encode: Callable[[Future], None] = lambda _: None) -> Result:
        """The task's Result; `on_encode` receives the pool's future once the encode is scheduled."""
        started = time.monotonic()
        result = self._run(task, started + task.limits.task_timeout_seconds, on_encode)
        seconds = round(time.monotonic() - started, 4)
        return result.model_copy(update={"attempts": attempts, "seconds": seconds})

    def _run(self, task: Task, deadline: float, on_encode: Callable[[Future], None]) -> Result:
        problem = check_key(task.dest_key)
        if problem:
            return _result(task, Outcome.failed, reason=Reason.invalid_key, message=f"output key {problem}")
        try:
            found = existing_output(self.client, task.dest_bucket, task.dest_key)
            earlier = _earlier_result(task, found)
            if earlier is not None:
                return earlier
            data, etag = self._fetch(task, deadline)
            try:
                compressed = self._encode(task, data, deadline, on_encode)
            except CodecError as exc:
                return _result(task, Outcome.failed, bytes_in=len(data), reason=exc.reason, message=str(exc))
            except NotSmaller as exc:  # neverLarger: no object (so no dest), and the manifest says why
                skipped = _result(
                    task, Outcome.skipped, bytes_in=len(data), reason=exc.reason, message=exc.message
                )
                return skipped.model_copy(update={"dest": ""})
            try:
                write_output(
                    self.client,
                    task,
                    compressed.data,
                    CONTENT_TYPES[compressed.format],
                    etag,
                    len(data),
                    compressed.stored_original,
                    replaces=found,
                )
            except OutputChanged:
                return self._raced(task)
            return _result(
                task,
                Outcome.done,
                bytes_in=len(data),
                bytes_out=len(compressed.data),
                quality=compressed.quality,
                ssim=compressed.ssim,
                reason=compressed.reason,
                message=_quality_message(task, compressed),
                stored_original=compressed.stored_original,
            )
        except (StorageError, FetchError) as exc:
            if exc.transient:
                retry_after = exc.retry_after if isinstance(exc, FetchError) else None
                raise TransientError(exc.reason, str(exc), retry_after) from None
            return _result(task, Outcome.failed, reason=exc.reason, message=str(exc))

    def _raced(self, task: Task) -> Result:
        """Another task wrote the output key while this one worked: say what it holds now."""
        found = existing_output(self.client, task.dest_bucket, task.dest_key)
        earlier = _earlier_result(task, found)
        if earlier is None:  # another job or run wrote it: start over with what is there now
            raise TransientError(Reason.output_changed, "the output was written by someone else meanwhile")
        return earlier

    def _fetch(self, task: Task, deadline: float) -> tuple[bytes, str]:
        source, limit = task.source, task.limits.max_input_bytes
        if source.key is not None:
            return read_source(self.client, source.bucket or "", source.key, limit)
        assert source.url is not None
        timeout = max(0.0, deadline - time.monotonic())
        data = fetch_url(source.url, limit, timeout, self.policy, self.limiter)
        return data, source.etag or ""

    def _encode(self, task: Task, data: bytes, deadline: float, on_encode) -> Compressed:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TransientError(Reason.timeout, f"fetching took all of {task.limits.task_timeout_seconds}s")
        try:
            args = (data, task.output, task.limits, self.allowed_input_formats)
            future = self.pool.schedule(encode, args=args, timeout=remaining)
        except RuntimeError:  # the pool is broken; the consumer restarts the worker
            raise TransientError(Reason.worker_crashed, "the process pool is broken") from None
        on_encode(future)
        while not wait([future], timeout=0.5, return_when=FIRST_COMPLETED).done:
            if self._closing.is_set():
                raise TransientError(Reason.worker_stopping, "the worker stopped before the encode finished")
        return future.result()


def _earlier_result(task: Task, found: ExistingOutput | None) -> Result | None:
    """The Result when the output key already holds this task's output (an earlier delivery
    stored it, or `existing: skip` finds it from another run) or another source's of this job."""
    if found is None:
        return None
    settings = settings_fingerprint(task)
    if found.job == task.job.uid and not _same_input(task, found):
        return _result(
            task,
            Outcome.failed,
            reason=Reason.output_collision,
            message=f"{found.source} of this job already maps to the same output key",
        )
    if found.job == task.job.uid and found.settings == settings:
        # This job already stored it: an earlier delivery died before its result was confirmed.
        return _result(
            task,
            Outcome.done,
            bytes_in=found.bytes_in,
            bytes_out=found.bytes_out,
            stored_original=found.stored_original,
            message="already stored by this job",
        )
    same_source = task.source.etag and found.source_etag == task.source.etag
    if task.existing is Existing.skip and same_source and found.settings == settings:
        return _result(
            task,
            Outcome.skipped,
            bytes_in=found.bytes_in,
            bytes_out=found.bytes_out,
            reason=Reason.exists,
            message="output exists for this source version and settings",
        )
    return None


def _same_input(task: Task, found: ExistingOutput) -> bool:
    """Whether an output of this task's job was made from this task's input. A URL is stored
    without its query (public_source), so URLs that differ only there (`?size=s`, `?size=l`) are
    told apart by task id: a job's URL list gives each URL the same id on every fan-out."""
    if found.source != task.source.describe():
        return False
    return task.source.url is None or found.task in ("", str(task.id))


def _result(task: Task, outcome: Outcome, **fields) -> Result:
    return Result(
        job=task.job,
        id=task.id,
        outcome=outcome,
        source=task.source.describe(),
        dest=f"s3://{task.dest_bucket}/{task.dest_key}",
        **fields,
    )


def _quality_message(task: Task, compressed: Compressed) -> str:
    """Why automatic quality stored an output below its floor, for people; else empty."""
    if not compressed.reason:
        return ""
    return (
        f"no quality within the search's bounds reached SSIM {task.output.target_ssim}; stored the "
        f"best attempt (quality {compressed.quality}, SSIM {compressed.ssim:.4f})"
    )
