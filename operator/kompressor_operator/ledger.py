"""A job's ledger in S3: how each input ended, and how far the fan-out got.

The ledger is what makes the status exact across restarts. Results are appended as numbered parts
(`.kompressor/<job>/ledger/<uid8>/part-00000001.jsonl`) and only then acked on the broker; on a
restart the parts are read back, so an input is counted once however often its result is delivered.
The fan-out cursor (next task id, last listed key) is stored beside them after each published batch.
At the end the parts become the job's `manifest.jsonl`, one line per input.

Results are not trusted: anything holding the broker credentials can publish onto a results queue.
Only a result for this job (its uid) and for an id the fan-out published is recorded (`refusal`);
the others are dropped before anything is stored. Reading the parts back skips a line (or a part)
that is not a ledger line for a published id, with a log line, instead of failing every restart.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field

from kompressor.crd import CompressionJobSpec
from kompressor.messages import JobRef, Outcome, Result
from kompressor.reasons import Reason

log = logging.getLogger("kompressor.ledger")

MULTIPART_CHUNK = 8 * 2**20

WRONG_JOB = Reason.wrong_job
UNPUBLISHED_ID = Reason.unpublished_id


def refusal(result: Result, job: JobRef, published: int) -> Reason | None:
    """Why `result` must not be recorded in `job`'s ledger (WRONG_JOB, UNPUBLISHED_ID), or None.

    `published` is how many tasks the fan-out has saved as published: ids 0..published-1. A result
    for another job would count one of this job's inputs; an id beyond them would grow the ledger's
    bitmap without bound (id 2^32 takes 512 MiB) and make the total exceed the inputs. A real result
    can be refused too: one of a batch whose cursor was not saved (the step failed after publishing
    it). That batch is published again with the same ids, and its workers find their outputs stored
    ("already stored by this job"), so the input is still counted, once."""
    if result.job.uid != job.uid:
        return WRONG_JOB
    if result.id >= published:
        return UNPUBLISHED_ID
    return None


@dataclass(frozen=True)
class Recorded:
    """What `Ledger.record` did with a batch: how many results were new, and how many it refused
    and why."""

    new: int
    refused: Counter[str]


def ledger_prefix(job: JobRef, spec: CompressionJobSpec) -> str:
    return f"{spec.destination.s3.prefix}.kompressor/{job.name}/"


def manifest_key(job: JobRef, spec: CompressionJobSpec) -> str:
    return f"{ledger_prefix(job, spec)}manifest.jsonl"


def manifest_line(result: Result) -> dict:
    line = {
        "id": result.id,
        "source": result.source,
        "dest": result.dest if result.outcome is not Outcome.failed else "",
        "outcome": result.outcome.value,
        "bytesIn": result.bytes_in,
        "bytesOut": result.bytes_out,
        "reason": result.reason,
        "message": result.message,
        "attempts": result.attempts,
    }
    if result.quality is not None:
        line["quality"] = result.quality
    if result.ssim is not None:
        line["ssim"] = result.ssim
    if result.stored_original:
        line["storedOriginal"] = True
    return line


class _Bits:
    """A growable bitmap of task ids: ten million ids take 1.25 MB, not a set's hundreds of MB."""

    def __init__(self) -> None:
        self._bytes = bytearray()

    def __contains__(self, n: int) -> bool:
        index = n >> 3
        return index < len(self._bytes) and bool(self._bytes[index] & (1 << (n & 7)))

    def add(self, n: int) -> None:
        index = n >> 3
        if index >= len(self._bytes):
            self._bytes.extend(bytes(index - len(self._bytes) + 1 + len(self._bytes) // 2))
        self._bytes[index] |= 1 << (n & 7)


@dataclass
class Cursor:
    """How far the fan-out got: the next task id, the listing's resume key, and the total once
    listing is done. Saved with the ledger so a restarted operator continues where it stopped."""

    next_id: int = 0
    after_key: str = ""
    listing_done: bool = False
    total: int | None = None


@dataclass
class Tally:
    """A job's counts so far: inputs succeeded, skipped and failed (by reason), and bytes."""

    succeeded: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    failures: Counter = field(default_factory=Counter)

    @property
    def accounted(self) -> int:
        return self.succeeded + self.skipped + self.failed

    def add(self, result: Result) -> None:
        if result.outcome is Outcome.done:
            self.succeeded += 1
        elif result.outcome is Outcome.skipped:
            self.skipped += 1
        else:
            self.failed += 1
            self.failures[result.reason or Reason.unknown] += 1
        self.bytes_in += result.bytes_in
        self.bytes_out += result.bytes_out if result.outcome is not Outcome.failed else 0


class Ledger:
    """A job's record in its destination bucket: which task ids have a result (each counted once),
    the tally and the cursor, and the manifest lines written from it at the end."""

    def __init__(self, client, job: JobRef, spec: CompressionJobSpec):
        self.client = client
        self.job = job
        self.bucket = spec.destination.s3.bucket
        self.prefix = f"{ledger_prefix(job, spec)}ledger/{job.uid8}/"
        self.manifest_key = manifest_key(job, spec)
        self.tally = Tally()
        self.cursor = Cursor()
        self._seen = _Bits()
        self._parts = 0
        self._damaged: set[str] = set()  # parts with lines skipped on load: filtered into the manifest
        self._bound: int | None = 0  # the saved cursor's next_id when loaded (None: it was damaged)

    def load(self) -> Ledger:
        """Read back the cursor and every part (after an operator restart). The cursor first: every
        recorded id is below the saved cursor's, so it bounds what a part may hold."""
        self._bound = self._load_cursor()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}part-"):
            for item in page.get("Contents", []):
                body = self.client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                self._load_part(item["Key"], body)
                # The highest number, not how many: a new part must never overwrite a saved one.
                number = item["Key"].removeprefix(f"{self.prefix}part-").removesuffix(".jsonl")
                self._parts = max(self._parts, int(number) if number.isdigit() else 0)
        return self

    def _load_cursor(self) -> int | None:
        """The saved cursor; returns the bound on recorded ids (None: no cursor to bound them by)."""
        key = f"{self.prefix}cursor.json"
        try:
            raw = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return 0
        try:
            self.cursor = Cursor(**json.loads(raw))
            if not isinstance(self.cursor.next_id, int) or self.cursor.next_id < 0:
                raise ValueError(f"next_id {self.cursor.next_id!r}")
        except (ValueError, TypeError, RecursionError) as exc:
            # Listing again from the start publishes each input again with its old id; its workers
            # find their outputs stored, so nothing is done or counted twice.
            log.warning(
                "job %s: ledger cursor %s is damaged (%s); the listing starts again", self.job, key, exc
            )
            self.cursor = Cursor()
            return None
        return self.cursor.next_id

    def _load_part(self, key: str, body: bytes) -> None:
        """Count a part's lines; a damaged line (or a whole part that is not a ledger part) is
        skipped with a log line, never a reason to fail: a restart must get past it."""
        skipped, first = 0, ""
        for line in body.decode(errors="replace").splitlines():
            result = _ledger_result(line, self._bound)
            if isinstance(result, str):
                skipped += 1
                first = first or result
            elif result.id not in self._seen:  # counted once, whatever a part holds
                self._seen.add(result.id)
                self.tally.add(result)
        if skipped:
            self._damaged.add(key)
            log.warning(
                "job %s: ledger part %s: %d damaged line(s) skipped, the first: %s",
                self.job,
                key,
                skipped,
                first,
            )

    def seen(self, task_id: int) -> bool:
        return task_id in self._seen

    def record(self, results: list[Result]) -> Recorded:
        """Persist the results not recorded before as one part, refusing those `refusal` names.
        Call before acking them: a crash in between only redelivers what is already recorded."""
        fresh, lines = [], []
        batch_ids: set[int] = set()
        refused: Counter[str] = Counter()
        first = ""
        for result in results:
            reason = refusal(result, self.job, self.cursor.next_id)
            if reason is not None:
                refused[reason] += 1
                first = first or f"{reason}: job uid {result.job.uid[:40]!r}, id {result.id}"
                continue
            if result.id in self._seen or result.id in batch_ids:
                continue
            batch_ids.add(result.id)
            fresh.append(result)
            lines.append(json.dumps(manifest_line(result), separators=(",", ":")))
        if refused:
            log.warning(
                "job %s: dropped %d result(s) unrecorded %s (%d ids published); the first: %s",
                self.job,
                refused.total(),
                dict(refused),
                self.cursor.next_id,
                first,
            )
        if not fresh:
            return Recorded(0, refused)
        # Numbered on success only: a put that failed (and perhaps landed) is redone under the same
        # key, so the results it held, redelivered because unacked, are never in two parts.
        key = f"{self.prefix}part-{self._parts + 1:08d}.jsonl"
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=("\n".join(lines) + "\n").encode(),
            ContentType="application/x-ndjson",
        )
        self._parts += 1
        for result in fresh:
            self._seen.add(result.id)
            self.tally.add(result)
        return Recorded(len(fresh), refused)

    def save_cursor(self, cursor: Cursor) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=f"{self.prefix}cursor.json",
            Body=json.dumps(cursor.__dict__).encode(),
            ContentType="application/json",
        )
        self.cursor = cursor

    def write_manifest(self) -> str:
        """Concatenate the parts into manifest.jsonl (multipart, so its size is not bounded by memory)."""
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}part-"):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        upload = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=self.manifest_key, ContentType="application/x-ndjson"
        )
        parts, buffer = [], bytearray()

        def flush() -> None:
            number = len(parts) + 1
            answer = self.client.upload_part(
                Bucket=self.bucket,
                Key=self.manifest_key,
                PartNumber=number,
                UploadId=upload["UploadId"],
                Body=bytes(buffer),
            )
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            buffer.clear()

        for key in keys:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            if key in self._damaged:
                lines = body.splitlines(keepends=True)
                body = b"".join(
                    line for line in lines if isinstance(_ledger_result(line, self._bound), Result)
                )
            buffer.extend(body)
            if len(buffer) >= MULTIPART_CHUNK:
                flush()
        if buffer or not parts:
            flush()
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.manifest_key,
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": parts},
        )
        return f"s3://{self.bucket}/{self.manifest_key}"


def _ledger_result(line: str | bytes, published: int | None) -> Result | str:
    """A ledger line read back as the Result it counts as, or what is wrong with it (not a ledger
    line, or an id at or above `published`, when that is known)."""
    try:
        entry = json.loads(line)
        result = Result(
            job=JobRef(namespace="", name="", uid=""),
            id=entry["id"],
            outcome=Outcome(entry["outcome"]),
            source=entry["source"],
            bytes_in=entry["bytesIn"],
            bytes_out=entry["bytesOut"],
            reason=entry["reason"],
        )
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # ValidationError is a ValueError
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    if published is not None and result.id >= published:
        return f"id {result.id} was never published ({published} were)"
    return result
