"""A job's ledger in S3: how each input ended, and how far the fan-out got.

The ledger is what makes the status exact across restarts. Results are appended as numbered parts
(`.kompressor/<job>/ledger/<uid8>/part-00000001.jsonl`) and only then acked on the broker; on a
restart the parts are read back, so an input is counted once however often its result is delivered.
The fan-out cursor (next task id, last listed key) is stored beside them after each published batch.
At the end the parts become the job's `manifest.jsonl`, one line per input.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from kompressor.crd import CompressionJobSpec
from kompressor.messages import JobRef, Outcome, Result

MULTIPART_CHUNK = 8 * 2**20


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
    next_id: int = 0
    after_key: str = ""
    listing_done: bool = False
    total: int | None = None


@dataclass
class Tally:
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
            self.failures[result.reason or "unknown"] += 1
        self.bytes_in += result.bytes_in
        self.bytes_out += result.bytes_out if result.outcome is not Outcome.failed else 0


class Ledger:
    def __init__(self, client, job: JobRef, spec: CompressionJobSpec):
        self.client = client
        self.bucket = spec.destination.s3.bucket
        self.prefix = f"{ledger_prefix(job, spec)}ledger/{job.uid8}/"
        self.manifest_key = manifest_key(job, spec)
        self.tally = Tally()
        self.cursor = Cursor()
        self._seen = _Bits()
        self._parts = 0

    def load(self) -> Ledger:
        """Read back every part and the cursor (after an operator restart)."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}part-"):
            for item in page.get("Contents", []):
                body = self.client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                for line in body.decode().splitlines():
                    self._count(json.loads(line))
                # The highest number, not how many: a new part must never overwrite a saved one.
                number = item["Key"].removeprefix(f"{self.prefix}part-").removesuffix(".jsonl")
                self._parts = max(self._parts, int(number) if number.isdigit() else 0)
        try:
            raw = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}cursor.json")["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return self
        self.cursor = Cursor(**json.loads(raw))
        return self

    def _count(self, line: dict) -> None:
        if line["id"] in self._seen:
            return  # counted once, whatever a part holds
        self._seen.add(line["id"])
        result = Result(
            job=JobRef(namespace="", name="", uid=""),
            id=line["id"],
            outcome=Outcome(line["outcome"]),
            source=line["source"],
            bytes_in=line["bytesIn"],
            bytes_out=line["bytesOut"],
            reason=line["reason"],
        )
        self.tally.add(result)

    def seen(self, task_id: int) -> bool:
        return task_id in self._seen

    def record(self, results: list[Result]) -> int:
        """Persist the results not recorded before as one part; returns how many were new.
        Call before acking them: a crash in between only redelivers what is already recorded."""
        fresh, lines = [], []
        batch_ids: set[int] = set()
        for result in results:
            if result.id in self._seen or result.id in batch_ids:
                continue
            batch_ids.add(result.id)
            fresh.append(result)
            lines.append(json.dumps(manifest_line(result), separators=(",", ":")))
        if not fresh:
            return 0
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
        return len(fresh)

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
            buffer.extend(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
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
