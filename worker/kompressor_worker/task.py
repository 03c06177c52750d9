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

An output already at the task's key is found either by looking first (a HEAD) or by the write,
which is conditional on what the task saw (storage.write_output); `look_first` decides which, and
`earlier_result` decides what a found output means. Either way the same Result comes out.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import posixpath
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from functools import partial
from urllib.parse import unquote

from kompressor.addresses import AddressPolicy, connection_guard
from kompressor.crd import Existing, InputFormat, Limits, Output
from kompressor.formats import CONTENT_TYPES
from kompressor.messages import Outcome, PlannedRendition, RenditionResult, Result, Task, overall
from kompressor.reasons import Reason
from kompressor_s3 import s3_client
from kompressor_worker.codec import CodecError, Compressed, compress
from kompressor_worker.fetch import FetchError, RateLimiter, fetch_url
from kompressor_worker.never_larger import NotSmaller
from kompressor_worker.renditions import Made, make
from kompressor_worker.settings import WorkerSettings
from kompressor_worker.storage import (
    METADATA_LIMIT,
    ExistingOutput,
    OutputChanged,
    OutputMetadata,
    StorageError,
    conditional_writes_honoured,
    existing_output,
    output_metadata,
    read_source_object,
    settings_fingerprint,
    source_tag,
    write_output,
)

log = logging.getLogger("kompressor.worker")


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


def encode_in_child(
    data: bytes, output: Output, limits: Limits, allowed_input_formats: tuple[InputFormat, ...]
) -> Compressed:
    """Entry point in a child; raises CodecError for an input that cannot become an output, and
    NotSmaller when neverLarger stores nothing."""
    compressed = compress(data, output, limits, _memory_budget, allowed_input_formats)
    # The automatic-quality search's trail stays here: nothing downstream reads it.
    return dataclasses.replace(compressed, attempts=())


def encode_renditions_in_child(
    data: bytes,
    outputs: list[tuple[Output, bool]],
    limits: Limits,
    allowed_input_formats: tuple[InputFormat, ...],
) -> list[Made]:
    """Entry point in a child for a task with renditions: every output (its settings, whether it
    keeps an animation) from one decode; raises CodecError when the input cannot be decoded."""
    settings = [output for output, _ in outputs]
    animated = [keep for _, keep in outputs]
    return make(data, settings, limits, _memory_budget, allowed_input_formats, animated)


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


# Tasks in a row that found no output at their key, after which a bucket's tasks stop looking first.
LOOK_STREAK = 16


def look_first(delivered_before: bool, conditional_writes: bool | None, absent_in_a_row: int) -> bool:
    """Whether a task looks for an output at its key (a HEAD) before its work, rather than writing
    with the condition "no object" and looking only when that fails. Both find an existing output
    and end in the same Result; looking costs a request per task (14-20 % of the worker's own CPU
    per task, bench/README.md), not looking costs the fetch and encode of a task whose output turns
    out to exist. So a task looks first when the bucket's server is not known to honour the
    condition (`conditional_writes` None or False: only a look finds the output there), when it was
    delivered before (its own output may be stored), and until LOOK_STREAK tasks in a row found
    none (a re-run with `existing: skip` finds one at every key)."""
    return delivered_before or conditional_writes is not True or absent_in_a_row < LOOK_STREAK


class OutputLookups:
    """What the worker's tasks learned about their destination buckets, for `look_first`: whether
    the server honours conditional writes, and how many tasks in a row found no output. Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._conditional: dict[str, bool] = {}
        self._absent: dict[str, int] = {}

    def look_first(self, bucket: str, delivered_before: bool) -> bool:
        with self._lock:
            return look_first(delivered_before, self._conditional.get(bucket), self._absent.get(bucket, 0))

    def saw(self, bucket: str, found: bool) -> None:
        with self._lock:
            self._absent[bucket] = 0 if found else self._absent.get(bucket, 0) + 1

    def unknown(self, bucket: str) -> bool:
        with self._lock:
            return bucket not in self._conditional

    def learned(self, bucket: str, honoured: bool | None) -> None:
        if honoured is None:
            return  # a storage error: ask again after the next write
        with self._lock:
            self._conditional[bucket] = honoured


class TaskRunner:
    """Runs tasks on the caller's thread, sending the encode to `pool`. Thread-safe: one S3 client
    (boto3 clients are) and one URL rate limiter, shared by all of the worker's tasks, so an origin
    sees one rate per worker, whatever its number of processes."""

    def __init__(self, settings: WorkerSettings, pool):
        self.pool = pool
        networks = settings.storage_endpoint_allow_networks
        guard = None if networks is None else connection_guard(AddressPolicy.only(*networks))
        self.client = s3_client(settings.storage, vet=guard)
        self.policy = AddressPolicy(
            allow_networks=tuple(ipaddress.ip_network(n) for n in settings.url_allow_networks)
        )
        self.limiter = RateLimiter(
            rate=settings.url_requests_per_second, burst=max(1, int(settings.url_requests_per_second))
        )
        self.allowed_input_formats = tuple(settings.allowed_input_formats)
        self.lookups = OutputLookups()
        self._closing = threading.Event()

    def close(self) -> None:
        """Stop waiting for encodes: a stuck pool may never finish or cancel them."""
        self._closing.set()

    def run(
        self,
        task: Task,
        attempts: int,
        on_encode: Callable[[Future], None] = lambda _: None,
        redelivered: bool = False,
    ) -> Result:
        """The task's Result; `on_encode` receives the pool's future once the encode is scheduled.
        `redelivered`: the broker delivered this task before (its output may be stored already)."""
        started = time.monotonic()
        deadline = started + task.limits.task_timeout_seconds
        result = self._run(task, deadline, on_encode, delivered_before=redelivered or attempts > 1)
        seconds = round(time.monotonic() - started, 4)
        return result.model_copy(update={"attempts": attempts, "seconds": seconds})

    def _run(
        self, task: Task, deadline: float, on_encode: Callable[[Future], None], delivered_before: bool
    ) -> Result:
        if task.renditions:
            return self._run_renditions(task, task.renditions, deadline, on_encode)
        problem = check_key(task.dest_key)
        if problem:
            return _result(task, Outcome.failed, reason=Reason.invalid_key, message=f"output key {problem}")
        try:
            looked = self.lookups.look_first(task.dest_bucket, delivered_before)
            found = None
            if looked:
                found = existing_output(self.client, task.dest_bucket, task.dest_key)
                self.lookups.saw(task.dest_bucket, found is not None)
                earlier = earlier_result(task, found)
                if earlier is not None:
                    return earlier
            data, etag, metadata = self._fetch(task, deadline)
            try:
                compressed = self._encode(task, data, deadline, on_encode)
            except CodecError as exc:
                return _result(task, Outcome.failed, bytes_in=len(data), reason=exc.reason, message=str(exc))
            except NotSmaller as exc:  # neverLarger: no object (so no dest), and the manifest says why
                skipped = _result(
                    task, Outcome.skipped, bytes_in=len(data), reason=exc.reason, message=exc.message
                )
                return skipped.model_copy(update={"dest": ""})
            stored = output_metadata(task, etag, len(data), compressed.stored_original, metadata)
            write = partial(
                write_output, self.client, task, compressed.data, CONTENT_TYPES[compressed.format], stored
            )
            there = self._store(task, write, found, looked)
            if there is not None:
                return there
            if found is None and self.lookups.unknown(task.dest_bucket):
                honoured = conditional_writes_honoured(write)
                if honoured is False:
                    log.warning(
                        "s3://%s ignores writes conditional on If-None-Match: every task looks for its "
                        "output first (two tasks racing for one key are not told apart)",
                        task.dest_bucket,
                    )
                self.lookups.learned(task.dest_bucket, honoured)
            return _result(
                task,
                Outcome.done,
                bytes_in=len(data),
                bytes_out=len(compressed.data),
                quality=compressed.quality,
                ssim=compressed.ssim,
                reason=compressed.reason,
                message=_messages(_quality_message(task, compressed), _left_out_message(stored)),
                stored_original=compressed.stored_original,
                frames=compressed.frames,
            )
        except (StorageError, FetchError) as exc:
            if exc.transient:
                retry_after = exc.retry_after if isinstance(exc, FetchError) else None
                raise TransientError(exc.reason, str(exc), retry_after) from None
            return _result(task, Outcome.failed, reason=exc.reason, message=str(exc))

    def _store(
        self, task: Task, write: Callable[..., None], found: ExistingOutput | None, looked: bool
    ) -> Result | None:
        """Write the output over `found` (what the task saw; None: nothing). None once written;
        else the Result of the output at the key, when it is one to report."""
        try:
            write(replaces=found)
            if not looked:
                self.lookups.saw(task.dest_bucket, False)
            return None
        except OutputChanged:
            pass
        there = existing_output(self.client, task.dest_bucket, task.dest_key)
        self.lookups.saw(task.dest_bucket, True)
        earlier = earlier_result(task, there)
        if earlier is not None:
            return earlier
        if looked:  # another job or run wrote it since the task looked: start over with what is there
            raise _output_changed()
        # The task did not look: `there` is what looking first would have found, and not this job's
        # to report (existing: overwrite, or other settings or source), so it is replaced, as then.
        try:
            write(replaces=there)
        except OutputChanged:
            raise _output_changed() from None
        return None

    def _fetch(self, task: Task, deadline: float) -> tuple[bytes, str, dict[str, str]]:
        """The input's bytes, its ETag and (S3 sources) its user metadata."""
        source, limit = task.source, task.limits.max_input_bytes
        if source.key is not None:
            return read_source_object(self.client, source.bucket or "", source.key, limit)
        assert source.url is not None
        timeout = max(0.0, deadline - time.monotonic())
        data = fetch_url(source.url, limit, timeout, self.policy, self.limiter)
        return data, source.etag or "", {}

    def _encode(
        self, task: Task, data: bytes, deadline: float, on_encode, function=encode_in_child, settings=None
    ):
        """`function` (the one-output `encode_in_child` or `encode_renditions_in_child`) run in the
        pool on `data` with `settings` (the task's output) within the task's deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TransientError(Reason.timeout, f"fetching took all of {task.limits.task_timeout_seconds}s")
        try:
            args = (
                data,
                task.output if settings is None else settings,
                task.limits,
                self.allowed_input_formats,
            )
            future = self.pool.schedule(function, args=args, timeout=remaining)
        except RuntimeError:  # the pool is broken; the consumer restarts the worker
            raise TransientError(Reason.worker_crashed, "the process pool is broken") from None
        on_encode(future)
        while not wait([future], timeout=0.5, return_when=FIRST_COMPLETED).done:
            if self._closing.is_set():
                raise TransientError(Reason.worker_stopping, "the worker stopped before the encode finished")
        return future.result()

    def _run_renditions(
        self, task: Task, planned: list[PlannedRendition], deadline: float, on_encode
    ) -> Result:
        """Every rendition of one input, each ending once: found stored (this job's earlier
        delivery, or `existing: skip`), else made from one fetch and one decode and written; a
        rendition that fails does not stop the others. A transient storage error retries the task:
        what it stored is then found as this job's."""
        ends: dict[int, RenditionResult] = {}
        found: dict[int, ExistingOutput | None] = {}
        bytes_in, frames = 0, None
        try:
            for index, rendition in enumerate(planned):
                one = task.for_rendition(rendition)
                problem = check_key(one.dest_key)
                if problem:
                    ends[index] = _ended(
                        rendition, Outcome.failed, Reason.invalid_key, f"output key {problem}"
                    )
                    continue
                found[index] = existing_output(self.client, one.dest_bucket, one.dest_key)
                earlier = earlier_result(one, found[index])
                if earlier is not None:
                    ends[index] = _from_result(rendition, earlier, found[index])
                    bytes_in = max(bytes_in, earlier.bytes_in)
            todo = [index for index in found if index not in ends]
            if todo:
                data, etag, metadata = self._fetch(task, deadline)
                bytes_in = len(data)
                outputs = [(planned[index].output, planned[index].keep_animation) for index in todo]
                try:
                    made = self._encode(task, data, deadline, on_encode, encode_renditions_in_child, outputs)
                except CodecError as exc:  # the input cannot be decoded: none of them can be made
                    made = [Made(reason=exc.reason, message=str(exc)) for _ in todo]
                for index, one_made in zip(todo, made, strict=True):
                    ends[index] = self._store_rendition(
                        task, planned[index], one_made, data, etag, metadata, found[index]
                    )
                    frames = one_made.compressed.frames if one_made.compressed else frames
        except (StorageError, FetchError) as exc:
            if exc.transient:
                retry_after = exc.retry_after if isinstance(exc, FetchError) else None
                raise TransientError(exc.reason, str(exc), retry_after) from None
            for index, rendition in enumerate(planned):
                ends.setdefault(index, _ended(rendition, Outcome.failed, exc.reason, str(exc)))
        renditions = [ends[index] for index in range(len(planned))]
        outcome, reason = overall(renditions)
        failed = next((r for r in renditions if r.outcome is Outcome.failed), None)
        return Result(
            job=task.job,
            id=task.id,
            outcome=outcome,
            source=task.source.describe(),
            bytes_in=bytes_in,
            bytes_out=sum(r.bytes_out for r in renditions if r.outcome is not Outcome.failed),
            reason=reason,
            message=f"rendition {failed.name} {failed.width}w {failed.format}: {failed.message}"
            if failed
            else "",
            frames=frames,
            renditions=renditions,
        )

    def _raced(self, task: Task) -> Result:
        """Another task wrote a rendition's key while this one worked: say what it holds now."""
        earlier = earlier_result(task, existing_output(self.client, task.dest_bucket, task.dest_key))
        if earlier is None:  # another job or run wrote it: start over with what is there now
            raise _output_changed()
        return earlier

    def _store_rendition(
        self,
        task: Task,
        rendition: PlannedRendition,
        made: Made,
        data: bytes,
        etag: str,
        metadata: dict[str, str],
        found: ExistingOutput | None,
    ) -> RenditionResult:
        """Write one made rendition (a permanent storage error fails it alone); its end."""
        compressed = made.compressed
        if compressed is None:
            return _ended(
                rendition, Outcome.skipped if made.skipped else Outcome.failed, made.reason, made.message
            )
        one = task.for_rendition(rendition)
        size = (compressed.width, compressed.height)
        stored = output_metadata(one, etag, len(data), compressed.stored_original, metadata, size)
        try:
            write_output(
                self.client, one, compressed.data, CONTENT_TYPES[compressed.format], stored, replaces=found
            )
        except OutputChanged:
            return _from_result(rendition, self._raced(one), None)
        except StorageError as exc:
            if exc.transient:
                raise
            return _ended(rendition, Outcome.failed, exc.reason, str(exc))
        return RenditionResult(
            name=rendition.name,
            width=rendition.width,
            format=compressed.format,
            outcome=Outcome.done,
            dest=f"s3://{one.dest_bucket}/{one.dest_key}",
            bytes_out=len(compressed.data),
            stored_width=compressed.width,
            stored_height=compressed.height,
            reason=compressed.reason,
            message=_messages(_quality_message(one, compressed), _left_out_message(stored)),
            quality=compressed.quality,
            ssim=compressed.ssim,
            stored_original=compressed.stored_original,
        )


def _ended(rendition: PlannedRendition, outcome: Outcome, reason: str, message: str) -> RenditionResult:
    """A rendition that ended without an object of its own."""
    return RenditionResult(
        name=rendition.name,
        width=rendition.width,
        format=rendition.output.format.value,
        outcome=outcome,
        reason=reason,
        message=message,
    )


def _from_result(
    rendition: PlannedRendition, result: Result, found: ExistingOutput | None
) -> RenditionResult:
    """A rendition whose one-output task ended as `result` without making it (found stored)."""
    size = found.size if found is not None else None
    return RenditionResult(
        name=rendition.name,
        width=rendition.width,
        format=rendition.output.format.value,
        outcome=result.outcome,
        dest=result.dest if result.outcome is not Outcome.failed else "",
        bytes_out=result.bytes_out,
        stored_width=size[0] if size else None,
        stored_height=size[1] if size else None,
        reason=result.reason,
        message=result.message,
        stored_original=result.stored_original,
    )


def earlier_result(task: Task, found: ExistingOutput | None) -> Result | None:
    """What an output found at the task's key means, before or after the task's work (pure):
    - another source of this job wrote it: the task failed, `output_collision`;
    - this job wrote it from this input with these settings (an earlier delivery died before its
      result was confirmed): done, reported from the output's metadata;
    - `existing: skip`, and another run wrote it from the same source version (ETag) with the same
      settings: skipped, `exists`;
    - otherwise (nothing there, `existing: overwrite`, other settings or another source version):
      None, and the task writes its own output over it."""
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
    if found.source != unquote(source_tag(task.source.describe())):
        return False
    return task.source.url is None or found.task in ("", str(task.id))


def _output_changed() -> TransientError:
    return TransientError(Reason.output_changed, "the output was written by someone else meanwhile")


def _result(task: Task, outcome: Outcome, **fields) -> Result:
    return Result(
        job=task.job,
        id=task.id,
        outcome=outcome,
        source=task.source.describe(),
        dest=f"s3://{task.dest_bucket}/{task.dest_key}",
        **fields,
    )


def _left_out_message(stored: OutputMetadata) -> str:
    if not stored.left_out:
        return ""
    return (
        f"the source's metadata {', '.join(stored.left_out)} not copied: S3 keeps at most "
        f"{METADATA_LIMIT} bytes of user metadata"
    )


def _messages(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def _quality_message(task: Task, compressed: Compressed) -> str:
    """Why automatic quality stored an output below its floor, for people; else empty."""
    if not compressed.reason:
        return ""
    return (
        f"no quality within the search's bounds reached SSIM {task.output.target_ssim}; stored the "
        f"best attempt (quality {compressed.quality}, SSIM {compressed.ssim:.4f})"
    )
