"""One task, run in a pool child: fetch the input, compress it, store the output, say how it ended.

Runs in a child process so that a slow encode never starves the parent's broker connection, and a
child that hangs or crashes can be killed without losing the worker. Each child holds its own S3
client and URL rate limiter, made once by `init_child`.

Ends in one of three ways: a `Result` (done, skipped, or a permanent failure with its reason), or a
`TransientError` that the consumer turns into a requeue (or a failure on the last attempt).
"""

from __future__ import annotations

import ipaddress
import posixpath
import time
from dataclasses import dataclass

from kompressor.addresses import AddressPolicy
from kompressor.crd import Existing
from kompressor.messages import Outcome, Result, Task
from kompressor_worker.codec import CodecError, Compressed, compress
from kompressor_worker.fetch import FetchError, RateLimiter, fetch_url
from kompressor_worker.settings import WorkerSettings
from kompressor_worker.storage import (
    StorageError,
    existing_output,
    read_source,
    settings_fingerprint,
    write_output,
)

CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "avif": "image/avif",
    "png": "image/png",
    "gif": "image/gif",
    "tiff": "image/tiff",
}


class TransientError(Exception):
    """Worth another attempt: the storage or origin was unavailable, or the task timed out."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        return (TransientError, (self.reason, str(self)))


@dataclass
class _Child:
    client: object
    memory_budget: int | None
    policy: AddressPolicy
    limiter: RateLimiter


_child: _Child | None = None


def init_child(settings: WorkerSettings, memory_budget: int | None) -> None:
    """Pool initializer: one S3 client and rate limiter per child process."""
    global _child
    _child = _Child(
        client=settings.storage.client(),
        memory_budget=memory_budget,
        policy=AddressPolicy(
            allow_networks=tuple(ipaddress.ip_network(n) for n in settings.url_allow_networks)
        ),
        limiter=RateLimiter(
            rate=settings.url_requests_per_second, burst=max(1, int(settings.url_requests_per_second))
        ),
    )


def check_key(key: str) -> str | None:
    """Why an output key is unsafe, or None: no absolute path, no `..`, at most 1024 bytes."""
    if not key or key.startswith("/"):
        return "must be a relative, non-empty key"
    if ".." in key.split("/") or posixpath.normpath(key) != key.rstrip("/"):
        return "must not contain '..', '.' or empty segments"
    if len(key.encode()) > 1024:
        return "is longer than 1024 bytes"
    return None


def run(task_json: bytes, attempts: int) -> bytes:
    """Entry point in the child: the encoded Result; raises TransientError for a retry."""
    assert _child is not None, "init_child did not run"
    task = Task.decode(task_json)
    started = time.monotonic()
    result = _run(task, _child)
    return result.model_copy(
        update={"attempts": attempts, "seconds": round(time.monotonic() - started, 4)}
    ).encode()


def _result(task: Task, outcome: Outcome, **fields) -> Result:
    return Result(
        job=task.job,
        id=task.id,
        outcome=outcome,
        source=task.source.describe(),
        dest=f"s3://{task.dest_bucket}/{task.dest_key}",
        **fields,
    )


def _run(task: Task, child: _Child) -> Result:
    problem = check_key(task.dest_key)
    if problem:
        return _result(task, Outcome.failed, reason="invalid_key", message=f"output key {problem}")
    try:
        found = existing_output(child.client, task.dest_bucket, task.dest_key)
        settings = settings_fingerprint(task)
        if found is not None and found.job == task.job.uid and found.source != task.source.describe():
            return _result(
                task,
                Outcome.failed,
                reason="output_collision",
                message=f"{found.source} of this job already maps to the same output key",
            )
        if found is not None and found.job == task.job.uid and found.settings == settings:
            # This job already stored it: an earlier delivery died before its result was confirmed.
            return _result(
                task,
                Outcome.done,
                bytes_in=found.bytes_in,
                bytes_out=found.bytes_out,
                stored_original=found.stored_original,
                message="already stored by this job",
            )
        same_source = found is not None and task.source.etag and found.source_etag == task.source.etag
        if task.existing is Existing.skip and same_source and found.settings == settings:
            return _result(
                task,
                Outcome.skipped,
                bytes_in=found.bytes_in,
                bytes_out=found.bytes_out,
                reason="exists",
                message="output exists for this source version and settings",
            )
        data, etag = _fetch(task, child)
        try:
            compressed = compress(data, task.output, task.limits, child.memory_budget)
        except CodecError as exc:
            return _result(task, Outcome.failed, bytes_in=len(data), reason=exc.reason, message=str(exc))
        write_output(
            child.client,
            task,
            compressed.data,
            CONTENT_TYPES[compressed.format],
            etag,
            len(data),
            compressed.stored_original,
        )
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
            raise TransientError(exc.reason, str(exc)) from None
        return _result(task, Outcome.failed, reason=exc.reason, message=str(exc))


def _quality_message(task: Task, compressed: Compressed) -> str:
    """Why automatic quality stored an output below its floor, for people; else empty."""
    if not compressed.reason:
        return ""
    return (
        f"no quality within the search's bounds reached SSIM {task.output.target_ssim}; stored the "
        f"best attempt (quality {compressed.quality}, SSIM {compressed.ssim:.4f})"
    )


def _fetch(task: Task, child: _Child) -> tuple[bytes, str]:
    source, limit = task.source, task.limits.max_input_bytes
    if source.key is not None:
        return read_source(child.client, source.bucket or "", source.key, limit)
    assert source.url is not None
    data = fetch_url(source.url, limit, float(task.limits.task_timeout_seconds), child.policy, child.limiter)
    return data, source.etag or ""
