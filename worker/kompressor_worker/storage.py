"""S3 I/O for one task: bounded reads, outputs with provenance metadata, and the skip check.

An output's metadata records which job wrote it, from which source version (ETag) and with which
settings (a fingerprint). A redelivered task finds its own output and reports it instead of doing the
work again; `existing: skip` finds another run's output for the same source and settings and skips.

Writes are conditional on what the task saw before it started (nothing: If-None-Match *; an older
output: If-Match its ETag), so of two tasks racing for one key (a duplicate delivery, two sources
of one job with the same output key) exactly one writes; the other learns it from `OutputChanged`.
A task that did not look first (task.OutputLookups) learns of an existing output the same way, so
`conditional_writes_honoured` checks once per bucket that the server does not ignore the condition.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
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
# "<width>x<height>" of a rendition, for the index when a rerun skips it as existing.
META_SIZE = "kompressor-size"

# S3 refuses user metadata over 2 KB, counted as the UTF-8 bytes of every key and value
# (MetadataTooLarge): ours always fits, the source's copied metadata takes what room is left.
METADATA_LIMIT = 2048
# A source whose quoted description is longer (a long non-ASCII key, a long URL) is recorded by its
# digest: still tells one input from another, and leaves room for the rest.
SOURCE_LIMIT = 1024

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
    if task.keep_animation:  # only then: the fingerprints of outputs made before the setting stay
        payload += "animation=keep"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_source(client, bucket: str, key: str, max_bytes: int) -> tuple[bytes, str]:
    """The object's bytes and ETag, refusing (`too_large`) as soon as more than max_bytes arrive."""
    data, etag, _ = read_source_object(client, bucket, key, max_bytes)
    return data, etag


def read_source_object(client, bucket: str, key: str, max_bytes: int) -> tuple[bytes, str, dict[str, str]]:
    """As `read_source`, with the object's user metadata (x-amz-meta-*, without the prefix)."""
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
        return b"".join(chunks), response.get("ETag", "").strip('"'), dict(response.get("Metadata") or {})
    except (ClientError, BotoCoreError) as exc:
        raise _classify(exc, what) from None


@dataclass(frozen=True)
class ExistingOutput:
    """What an output already stored says about itself (its metadata, read by HEAD): who wrote it,
    from which input and settings, so a task can tell whether it is done already."""

    etag: str
    job: str
    task: str  # the writing task's id; empty when written before it was recorded
    source: str
    source_etag: str
    settings: str
    bytes_in: int
    bytes_out: int
    stored_original: bool
    size: tuple[int, int] | None = None  # a rendition's stored width and height


def existing_output(client, bucket: str, key: str) -> ExistingOutput | None:
    """The output at `key` as `ExistingOutput`, or None when there is none; other S3 errors raise
    StorageError."""
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
        size=_size(meta.get(META_SIZE, "")),
    )


def _size(text: str) -> tuple[int, int] | None:
    width, _, height = text.partition("x")
    return (int(width), int(height)) if width.isdigit() and height.isdigit() else None


@dataclass(frozen=True)
class OutputMetadata:
    """An output's user metadata, and the keys of the source's that were not copied (no room)."""

    values: dict[str, str]
    left_out: tuple[str, ...] = ()


def output_metadata(
    task: Task,
    source_etag: str,
    bytes_in: int,
    stored_original: bool,
    source_metadata: dict[str, str] | None = None,
    size: tuple[int, int] | None = None,
) -> OutputMetadata:
    """The metadata an output is stored with: its provenance (which job, task, source version and
    settings; `size`: a rendition's, for the index) and, with `copy_metadata`, the source's user
    metadata in key order while it fits within METADATA_LIMIT (kompressor-* keys are always ours)."""
    own = {
        META_JOB: task.job.uid,
        META_TASK: str(task.id),
        META_SOURCE: source_tag(task.source.describe()),
        META_SOURCE_ETAG: source_etag,
        META_SETTINGS: settings_fingerprint(task),
        META_BYTES_IN: str(bytes_in),
        META_ORIGINAL: "true" if stored_original else "false",
    }
    if size is not None:
        own[META_SIZE] = f"{size[0]}x{size[1]}"
    copied: dict[str, str] = {}
    left_out: list[str] = []
    room = METADATA_LIMIT - _metadata_bytes(own)
    theirs = source_metadata if task.copy_metadata and source_metadata else {}
    for key in sorted(k for k in theirs if not k.lower().startswith("kompressor-")):
        cost = _metadata_bytes({key: theirs[key]})
        if cost <= room:
            copied[key] = theirs[key]
            room -= cost
        else:
            left_out.append(key)
    return OutputMetadata({**copied, **own}, tuple(left_out))


def source_tag(description: str) -> str:
    """How an output's metadata names its source. Object metadata must be ASCII: the source's key or
    URL URL-quoted (its public form: the metadata of an output in a public bucket is served to anyone
    as x-amz-meta-* headers), or past SOURCE_LIMIT its digest."""
    quoted = quote(description, safe=":/")
    if len(quoted) <= SOURCE_LIMIT:
        return quoted
    return "sha256:" + hashlib.sha256(description.encode()).hexdigest()


def _metadata_bytes(metadata: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


def write_output(
    client,
    task: Task,
    body: bytes,
    content_type: str,
    metadata: OutputMetadata,
    replaces: ExistingOutput | None,
) -> None:
    """Store the output with `metadata` and the task's Cache-Control, only if the key still holds
    `replaces` (None: nothing); else OutputChanged."""
    extra = {"CacheControl": task.cache_control} if task.cache_control else {}
    condition = {"IfNoneMatch": "*"} if replaces is None else {"IfMatch": replaces.etag}
    try:
        client.put_object(
            Bucket=task.dest_bucket,
            Key=task.dest_key,
            Body=body,
            ContentType=content_type,
            Metadata=metadata.values,
            **extra,
            **condition,
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise OutputChanged(f"s3://{task.dest_bucket}/{task.dest_key}") from None
        raise _output_error(exc, task) from None
    except BotoCoreError as exc:
        raise _output_error(exc, task) from None


def conditional_writes_honoured(write: Callable[..., None]) -> bool | None:
    """Whether the server refuses a write conditional on "no object" over an object that exists;
    None when it could not be told (a storage error). Called right after this task wrote its output
    with `replaces=None` (`write`: that write_output call, all but `replaces`): the same write again
    must fail. A server that ignores If-None-Match stores
    the same bytes and metadata again, which changes nothing but the object's date (and adds a
    version in a versioned bucket), once per bucket and worker."""
    try:
        write(replaces=None)
    except OutputChanged:
        return True
    except StorageError:
        return None
    return False


def _output_error(exc: Exception, task: Task) -> StorageError:
    error = _classify(exc, f"s3://{task.dest_bucket}/{task.dest_key}")
    if error.reason == Reason.source_missing:  # the destination bucket is gone
        return StorageError(Reason.destination_missing, str(error), transient=False)
    return error
