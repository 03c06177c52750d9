"""S3 I/O for one task: bounded reads, outputs with provenance metadata, and the skip check.

An output's metadata records which job wrote it, from which source version (ETag) and with which
settings (a fingerprint). A redelivered task finds its own output and reports it instead of doing the
work again; `existing: skip` finds another run's output for the same source and settings and skips.

Writes are conditional on what the task saw before it started (nothing: If-None-Match *; an older
output: If-Match its ETag), so of two tasks racing for one key (a duplicate delivery, two sources
of one job with the same output key) exactly one writes; the other learns it from `OutputChanged`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import quote, unquote

from botocore.exceptions import BotoCoreError, ClientError

from kompressor.messages import Task
from kompressor.reasons import Reason

META_JOB = "kompressor-job"
META_TASK = "kompressor-task"
META_SOURCE = "kompressor-source"
META_SOURCE_ETAG = "kompressor-source-etag"
META_SETTINGS = "kompressor-settings"
META_BYTES_IN = "kompressor-bytes-in"
META_ORIGINAL = "kompressor-stored-original"

_CHUNK = 1 << 20
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_PERMANENT = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidBucketName"}


class StorageError(Exception):
    """A storage failure with a machine-readable reason; `transient` ones are worth another attempt."""

    def __init__(self, reason: str, message: str, transient: bool):
        super().__init__(message)
        self.reason = reason
        self.transient = transient


def _classify(exc: Exception, what: str) -> StorageError:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _MISSING:
            return StorageError(Reason.source_missing, f"{what}: not found ({code})", transient=False)
        if code in _PERMANENT or status == 403:
            return StorageError(Reason.access_denied, f"{what}: {code or status}", transient=False)
        return StorageError(Reason.storage_error, f"{what}: {code or status}", transient=True)
    return StorageError(Reason.storage_unavailable, f"{what}: {exc}", transient=True)


class OutputChanged(Exception):
    """The output key changed since the task looked at it: another task wrote it meanwhile."""


def settings_fingerprint(task: Task) -> str:
    """Identifies the output settings, so an output made with other settings is never skipped."""
    payload = task.output.model_dump_json() + task.limits.model_dump_json(include={"max_pixels"})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_source(client, bucket: str, key: str, max_bytes: int) -> tuple[bytes, str]:
    """The object's bytes and ETag, refusing (`too_large`) as soon as more than max_bytes arrive."""
    what = f"s3://{bucket}/{key}"
    try:
        response = client.get_object(Bucket=bucket, Key=key)
        if response.get("ContentLength", 0) > max_bytes:
            response["Body"].close()
            raise StorageError(
                Reason.too_large, f"{what} is {response['ContentLength']} bytes; limit {max_bytes}", False
            )
        chunks, size = [], 0
        for chunk in response["Body"].iter_chunks(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                response["Body"].close()
                raise StorageError(Reason.too_large, f"{what} exceeds the {max_bytes}-byte limit", False)
            chunks.append(chunk)
        return b"".join(chunks), response.get("ETag", "").strip('"')
    except (ClientError, BotoCoreError) as exc:
        raise _classify(exc, what) from None


@dataclass(frozen=True)
class ExistingOutput:
    etag: str
    job: str
    task: str  # the writing task's id; empty when written before it was recorded
    source: str
    source_etag: str
    settings: str
    bytes_in: int
    bytes_out: int
    stored_original: bool


def existing_output(client, bucket: str, key: str) -> ExistingOutput | None:
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        error = _classify(exc, f"s3://{bucket}/{key}")
        if error.reason == Reason.source_missing:
            return None
        raise error from None
    except BotoCoreError as exc:
        raise _classify(exc, f"s3://{bucket}/{key}") from None
    meta = head.get("Metadata", {})
    return ExistingOutput(
        etag=head.get("ETag", ""),
        job=meta.get(META_JOB, ""),
        task=meta.get(META_TASK, ""),
        source=unquote(meta.get(META_SOURCE, "")),
        source_etag=meta.get(META_SOURCE_ETAG, ""),
        settings=meta.get(META_SETTINGS, ""),
        bytes_in=int(meta.get(META_BYTES_IN, "0") or 0),
        bytes_out=int(head.get("ContentLength", 0)),
        stored_original=meta.get(META_ORIGINAL) == "true",
    )


def write_output(
    client,
    task: Task,
    body: bytes,
    content_type: str,
    source_etag: str,
    bytes_in: int,
    stored_original: bool,
    replaces: ExistingOutput | None,
) -> None:
    """Store the output, only if the key still holds `replaces` (None: nothing); else OutputChanged."""
    metadata = {
        META_JOB: task.job.uid,
        META_TASK: str(task.id),
        # Object metadata must be ASCII: URL-quote the source's key or URL (its public form: the
        # metadata of an output in a public bucket is served to anyone as x-amz-meta-* headers).
        META_SOURCE: quote(task.source.describe(), safe=":/"),
        META_SOURCE_ETAG: source_etag,
        META_SETTINGS: settings_fingerprint(task),
        META_BYTES_IN: str(bytes_in),
        META_ORIGINAL: "true" if stored_original else "false",
    }
    condition = {"IfNoneMatch": "*"} if replaces is None else {"IfMatch": replaces.etag}
    try:
        client.put_object(
            Bucket=task.dest_bucket,
            Key=task.dest_key,
            Body=body,
            ContentType=content_type,
            Metadata=metadata,
            **condition,
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise OutputChanged(f"s3://{task.dest_bucket}/{task.dest_key}") from None
        raise _output_error(exc, task) from None
    except BotoCoreError as exc:
        raise _output_error(exc, task) from None


def _output_error(exc: Exception, task: Task) -> StorageError:
    error = _classify(exc, f"s3://{task.dest_bucket}/{task.dest_key}")
    if error.reason == Reason.source_missing:  # the destination bucket is gone
        return StorageError(Reason.destination_missing, str(error), transient=False)
    return error
