"""The wire contract between the fan-out, the workers and the result reader.

A task says which input to compress into which output key with which settings; a result says how
that input ended. Both are frozen pydantic models encoded as versioned JSON: a reader refuses a
version it does not know instead of guessing. Queue names and arguments live here too, so the
operator, local mode and the workers agree on the topology without importing each other.

It must never import a broker client: the adapters encode and decode through this module.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from kompressor import keys
from kompressor.crd import Destination, Existing, Format, Limits, Output
from kompressor.formats import EXTENSIONS, KEEP_EXTENSIONS
from kompressor.reasons import Reason

SCHEMA_VERSION = 1
CONTENT_TYPE = "application/json"

MAX_ID = 2**53 - 1
"""The largest task id. Ids index a job's listing; past 2^53 a JSON reader in another language (the
manifest's) loses precision, and an id past 2^63 cannot index anything at all."""
MAX_OBJECT_BYTES = 5 * 2**40
"""The largest byte count a result may report: S3's largest object (5 TiB). A bound keeps a forged
result from driving the status's byte totals negative or past int64."""
MAX_RESULT_BYTES = 128 * 2**10
"""The largest result message read. A real one is a few hundred bytes (keys and URLs are at most
2 KiB, a message is cut at MAX_MESSAGE_CHARS), one with renditions at most ~60 KiB (32 outputs, each
a key of at most 1 KiB and a message cut at MAX_RENDITION_MESSAGE_CHARS); the bound keeps a flood of
huge forged results from filling the reader's memory."""
MAX_MESSAGE_CHARS = 2000
MAX_RENDITION_MESSAGE_CHARS = 300


class MessageError(ValueError):
    """A message that is not valid JSON of a known schema version; the reason says which."""

    def __init__(self, reason: Reason, message: str):
        self.reason = reason
        super().__init__(message)


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def decode(cls, body: bytes) -> Any:
        try:
            version = _peek_version(body)
            if version != SCHEMA_VERSION:
                raise MessageError(
                    Reason.unknown_schema_version,
                    f"{cls.__name__} schema version {version!r} is not {SCHEMA_VERSION}",
                )
            return cls.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise MessageError(Reason.malformed_message, f"{cls.__name__} {where}: {first['msg']}") from None


def _peek_version(body: bytes) -> Any:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise MessageError(Reason.malformed_message, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError(Reason.malformed_message, "not a JSON object")
    return data.get("v")


class JobRef(BaseModel):
    """Which job a message belongs to; uid tells apart two jobs that reused a name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str
    name: str
    uid: str

    @property
    def uid8(self) -> str:
        return self.uid.replace("-", "")[:8]

    def __str__(self) -> str:
        """namespace/name, as kubectl names it: how every log line about a job names it."""
        return f"{self.namespace}/{self.name}"


def public_source(source: str) -> str:
    """A source as kompressor stores and shows it: in an output's metadata, a result, the manifest.

    A URL keeps its scheme, host, port and path and loses its user info, query and fragment, which
    may carry credentials (a presigned URL's X-Amz-Signature, an access token, `user:password@`):
    outputs are often served by public buckets with their metadata as headers. An `s3://bucket/key`
    source is kept whole (a key may hold '?', '#' or '@', and never a credential); so is text that
    is not a URL. Total: any string gives a string, and the result is its own public form.
    """
    scheme, separator, rest = source.partition("://")
    if not separator or scheme.lower() == "s3":
        return source
    # The authority ends at the first '/', '?' or '#', as urllib.parse.urlsplit (and so fetch) reads it.
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    host = rest[:end].rpartition("@")[2]
    path = rest[end:]
    path_end = min((i for i in (path.find(c) for c in "?#") if i >= 0), default=len(path))
    return f"{scheme}://{host}{path[:path_end]}"


class SourceObject(BaseModel):
    """One input: an S3 object (bucket and key) or an http(s) URL."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: str | None = None
    key: str | None = None
    url: str | None = None
    etag: str | None = None
    size: int | None = None

    @property
    def name(self) -> str:
        """The input's path, used to derive the output key."""
        if self.key is not None:
            return self.key
        assert self.url is not None
        return self.url.split("://", 1)[1].split("?", 1)[0]

    def describe(self) -> str:
        """The input as stored in outputs' metadata and results: see `public_source`."""
        return f"s3://{self.bucket}/{self.key}" if self.key is not None else public_source(str(self.url))


class PlannedRendition(BaseModel):
    """One output of a task with renditions: which set, which width, its key and its settings (a
    one-output task's `output`, with resize.maxWidth the width)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    width: int = Field(ge=1)
    key: str
    output: Output
    keep_animation: bool = Field(default=False, description="An animated input's webp output stays animated.")


class Task(_Wire):
    """Compress one input into one output object, or, with `renditions`, into each of them from one
    decode (`dest_key` is then empty and `output` unused)."""

    v: Literal[1] = SCHEMA_VERSION
    job: JobRef
    id: int = Field(ge=0, le=MAX_ID, description="Stable index of the input in the job's listing.")
    source: SourceObject
    dest_bucket: str
    dest_key: str
    existing: Existing
    output: Output
    limits: Limits
    renditions: list[PlannedRendition] | None = None
    cache_control: str | None = None
    copy_metadata: bool = False
    keep_animation: bool = False

    def dest_keys(self) -> list[str]:
        """Every output key the task plans: its renditions' or its one."""
        return [r.key for r in self.renditions] if self.renditions else [self.dest_key]

    def for_rendition(self, rendition: PlannedRendition) -> Task:
        """The one-output task this rendition is: its key, its settings. The skip check, the write
        and the provenance of one rendition are a one-output task's."""
        return self.model_copy(
            update={
                "dest_key": rendition.key,
                "output": rendition.output,
                "renditions": None,
                "keep_animation": rendition.keep_animation,
            }
        )


class Outcome(StrEnum):
    """How an input (or one rendition) ended."""

    done = "done"
    skipped = "skipped"
    failed = "failed"


class RenditionResult(BaseModel):
    """How one output of a task with renditions ended: each planned rendition has exactly one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    width: int = Field(ge=1, description="The width asked for.")
    format: str
    outcome: Outcome
    dest: str = Field(default="", description="s3://bucket/key, when an object holds it.")
    bytes_out: int = Field(default=0, ge=0, le=MAX_OBJECT_BYTES)
    stored_width: int | None = Field(default=None, description="The stored image's width and height.")
    stored_height: int | None = None
    reason: str = Field(default="", max_length=64)
    message: str = ""
    quality: int | None = None
    ssim: float | None = None
    stored_original: bool = False

    @field_validator("message", mode="before")
    @classmethod
    def _cut(cls, message: Any) -> Any:
        return message[:MAX_RENDITION_MESSAGE_CHARS] if isinstance(message, str) else message


def overall(renditions: list[RenditionResult]) -> tuple[Outcome, str]:
    """An input's outcome and reason from its renditions': failed when any failed (the first's
    reason), else done when any was stored, else skipped (the first's reason)."""
    for outcome in (Outcome.failed, Outcome.done, Outcome.skipped):
        first = next((r for r in renditions if r.outcome is outcome), None)
        if first is not None:
            return outcome, "" if outcome is Outcome.done else first.reason
    return Outcome.skipped, ""


def all_failed(task: Task, reason: str, message: str) -> list[RenditionResult] | None:
    """Each rendition of a task that ended as a whole without a worker's word on each (it gave up
    after its attempts, or the broker dead-lettered it): failed, with the task's reason. Outputs an
    earlier attempt stored are found by a rerun. None for a one-output task."""
    if not task.renditions:
        return None
    return [
        RenditionResult(
            name=r.name,
            width=r.width,
            format=r.output.format.value,
            outcome=Outcome.failed,
            reason=reason,
            message=message,
        )
        for r in task.renditions
    ]


class Result(_Wire):
    """How one task ended; the last word on an input unless it is redelivered and ends again."""

    v: Literal[1] = SCHEMA_VERSION
    job: JobRef
    id: int = Field(ge=0, le=MAX_ID)
    outcome: Outcome
    source: str = Field(description="s3://bucket/key or the URL of the input, as `public_source` shows it.")
    dest: str = Field(default="", description="s3://bucket/key of the output, when there is one.")
    bytes_in: int = Field(default=0, ge=0, le=MAX_OBJECT_BYTES)
    bytes_out: int = Field(default=0, ge=0, le=MAX_OBJECT_BYTES)
    reason: Reason | Annotated[str, Field(max_length=64)] = Field(
        default="",
        union_mode="left_to_right",
        description="Machine-readable reason, e.g. decode_error: a Reason, or a word an older or newer "
        "worker sent that this version does not know (kept as it is, counted under its own word).",
    )
    message: str = Field(default="", description="A sentence for people.")
    attempts: int = 1
    seconds: float = 0.0
    quality: int | None = None
    ssim: float | None = None
    stored_original: bool = Field(
        default=False, description="neverLarger kept the input's bytes as the output."
    )
    frames: int | None = Field(default=None, ge=1, description="Frames in the input, when decoded.")
    renditions: list[RenditionResult] | None = Field(
        default=None, max_length=64, description="With renditions: how each output ended."
    )

    @field_validator("source")
    @classmethod
    def _public(cls, source: str) -> str:
        # Whoever built it (an older worker, a forged message), a result stores no URL credential.
        return public_source(source)

    @field_validator("message", mode="before")
    @classmethod
    def _cut(cls, message: Any) -> Any:
        """Cut, not refused: a worker's long error message must not make its result unreadable."""
        return message[:MAX_MESSAGE_CHARS] if isinstance(message, str) else message

    @classmethod
    def decode(cls, body: bytes) -> Result:
        if len(body) > MAX_RESULT_BYTES:
            raise MessageError(
                Reason.malformed_message, f"Result of {len(body)} bytes is over {MAX_RESULT_BYTES}"
            )
        return super().decode(body)


class ManifestLine(BaseModel):
    """One line of a job's manifest.jsonl and of its ledger parts: how one input ended, in the
    manifest's camelCase. Written from a Result (`kompressor_operator.ledger.manifest_line`) and read
    back as the Result it counts as, after an operator restart.

    `encode` writes what the ledger wrote before this model (`json.dumps`, compact, ASCII, empty
    optional fields left out), so old ledgers and manifests read back unchanged and new ones are the
    same bytes. Reading ignores keys it does not know. `renditions` stays the list of camelCase
    dicts that `kompressor.index` reads (one `ledger.rendition_line` each)."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)

    id: int = Field(ge=0, le=MAX_ID)
    source: str
    dest: str = Field(default="", description="Empty when the input failed.")
    outcome: Outcome
    bytes_in: int = Field(ge=0, le=MAX_OBJECT_BYTES)
    bytes_out: int = Field(ge=0, le=MAX_OBJECT_BYTES)
    reason: str
    message: str = ""
    attempts: int = 1
    quality: int | None = None
    ssim: float | None = None
    stored_original: Literal[True] | None = Field(default=None, description="Written only when true.")
    frames: int | None = None
    renditions: list[dict[str, Any]] | None = None

    def encode(self) -> str:
        """The line, without its newline."""
        return json.dumps(self.model_dump(by_alias=True, exclude_none=True), separators=(",", ":"))

    @classmethod
    def decode(cls, line: str | bytes) -> ManifestLine:
        """A line read back; raises ValueError (pydantic's ValidationError is one), TypeError or
        RecursionError when it is not a manifest line."""
        return cls.model_validate(json.loads(line))


# --- output keys ----------------------------------------------------------------------------------


def relative_name(source: SourceObject, source_prefix: str) -> str:
    """The source's path below the source prefix: what output keys are made from."""
    name = source.name
    if source.key is not None and source_prefix and name.startswith(source_prefix):
        name = name[len(source_prefix) :]
    return name.lstrip("/")


def output_key(source: SourceObject, source_prefix: str, destination: Destination, output: Output) -> str:
    """The deterministic output key: the source path below its prefix, under the destination prefix,
    with the output format's extension (the input's own extension for `keep`); or, with
    destination.key, that template's key under the prefix."""
    name = relative_name(source, source_prefix)
    stem, ext = posixpath.splitext(name)
    ext = KEEP_EXTENSIONS.get(ext.lower(), ext) if output.format is Format.keep else EXTENSIONS[output.format]
    if destination.key is not None:
        fmt = ext.lstrip(".") if output.format is Format.keep else output.format.value
        return templated_key(destination, name, ext=ext.lstrip("."), format=fmt)
    return bounded_key(destination, stem + ext, ext)


def templated_key(destination: Destination, path: str, **values: str | int) -> str:
    """destination.key (or the renditions' default) rendered for the source `path` below its
    prefix, under the destination prefix."""
    template = destination.key or keys.DEFAULT_RENDITION_KEY
    key = keys.render(template, **keys.source_parts(path), **values)
    return bounded_key(destination, key, "." + str(values["ext"]))


def bounded_key(destination: Destination, relative: str, ext: str) -> str:
    """`relative` under the destination prefix; a key over S3's 1024 bytes becomes a digest of it."""
    prefix = destination.s3.prefix
    key = posixpath.join(prefix, relative) if prefix else relative
    if len(key.encode()) > 1024:
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        key = posixpath.join(prefix, f"{digest}{ext}")
    return key


# --- queues ---------------------------------------------------------------------------------------


def queue_base(job: JobRef) -> str:
    """The prefix of every queue of one job: namespace, name and the uid's first 8 characters."""
    return f"kompressor.{job.namespace}.{job.name}.{job.uid8}"


def task_queue(job: JobRef) -> str:
    """The job's tasks, consumed by its workers."""
    return f"{queue_base(job)}.tasks"


def result_queue(job: JobRef) -> str:
    """The job's results, read by the operator (or local mode) into the ledger."""
    return f"{queue_base(job)}.results"


def dead_queue(job: JobRef) -> str:
    """Tasks the broker dead-lettered: rejected, or out of delivery attempts."""
    return f"{queue_base(job)}.dead"


def retry_queue(job: JobRef) -> str:
    """Tasks waiting out their retry delay (`retry_queue_arguments`)."""
    return f"{queue_base(job)}.retry"


def job_queues(job: JobRef) -> list[str]:
    """Every queue of the job: what is declared when it starts and deleted when it goes."""
    return [task_queue(job), result_queue(job), dead_queue(job), retry_queue(job)]


# Attempts a task made before this copy was published to the retry queue (the broker's
# x-delivery-count restarts at 0 for each copy). Written and read by workers only.
ATTEMPTS_HEADER = "kompressor-attempts"


def task_queue_arguments(job: JobRef, limits: Limits) -> dict[str, Any]:
    """Quorum queue: `x-delivery-limit` bounds attempts, rejected or over-limit tasks go to the dead
    queue. The at-least-once dead-letter strategy needs `overflow: reject-publish`."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": limits.max_attempts - 1,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_queue(job),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def retry_queue_arguments(job: JobRef) -> dict[str, Any]:
    """Where a task waits before its next attempt: nothing consumes it; each message carries its
    delay as a per-message TTL (`expiration`) and, expired, is dead-lettered back to the task queue.

    RabbitMQ has no per-message delay on quorum queues, and expires messages only at the head of a
    queue: a short delay behind a longer one waits for it. Every delay is at most the workers' cap
    (kompressor_worker.retry), so no message waits longer than that cap. At-least-once
    dead-lettering (with `reject-publish`) keeps a task here until the task queue has taken it."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": task_queue(job),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def plain_queue_arguments() -> dict[str, Any]:
    """Results and dead letters: durable quorum queues, no delivery limit."""
    return {"x-queue-type": "quorum"}
