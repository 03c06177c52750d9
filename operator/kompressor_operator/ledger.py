"""A job's ledger in S3: how each input ended, and how far the fan-out got.

The ledger is what makes the status exact across restarts. Results are appended as numbered parts
(`.kompressor/<job>/ledger/<uid8>/part-00000001.jsonl`) and only then acked on the broker; on a
restart the parts are read back, so an input is counted once however often its result is delivered.
The fan-out cursor (next task id, last listed key) is stored beside them after each published batch.
At the end the parts become the job's `manifest.jsonl`, one line per input.

The ledger is compacted as it grows, so that a restart reads a bounded number of objects: each
COMPACT_FANIN parts of a size become one (`part-<first>-<last>.jsonl`, the parts it holds, in order)
with a summary beside it (`sum-<first>-<last>.json`: its counts and a bitmap of its ids), and a
restart reads the summaries instead of the lines. A million results in batches of 1000 leave at
most ~15 parts per level, three levels. The merged part is written before its sources are deleted;
a restart between the two reads the merged part and deletes the sources it covers (`live_spans`).

Results are not trusted: anything holding the broker credentials can publish onto a results queue.
Only a result for this job (its uid) and for an id the fan-out published is recorded (`refusal`);
the others are dropped before anything is stored. Reading the parts back skips a line (or a part)
that is not a ledger line for a published id, with a log line, instead of failing every restart.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from kompressor import index
from kompressor.crd import CompressionJobSpec
from kompressor.messages import JobRef, ManifestLine, Outcome, RenditionResult, Result
from kompressor.reasons import Reason

log = logging.getLogger("kompressor.ledger")

MULTIPART_CHUNK = 8 * 2**20
READ_CHUNK = 2**20
COMPACT_FANIN = 16
"""Parts of one size merged into one part: a restart reads at most about COMPACT_FANIN parts per
size (×16 per size: 1, 16, 256, 4096 batches), and each result is copied about log16(batches) times."""
_PART = re.compile(r"part-(\d{8})(?:-(\d{8}))?\.jsonl")
_SUMMARY = re.compile(r"sum-(\d{8})-(\d{8})\.json")

Span = tuple[int, int]
"""The batches (part numbers) a ledger part holds: (n, n) for one batch, (first, last) once merged."""

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
    """Where a job keeps its ledger and manifest: `.kompressor/<job>/` under the destination prefix."""
    return f"{spec.destination.s3.prefix}.kompressor/{job.name}/"


def manifest_key(job: JobRef, spec: CompressionJobSpec) -> str:
    """The key of the job's manifest.jsonl."""
    return f"{ledger_prefix(job, spec)}manifest.jsonl"


def manifest_line(result: Result) -> ManifestLine:
    """The manifest (and ledger) line a result is recorded as: a failed input names no output."""
    return ManifestLine(
        id=result.id,
        source=result.source,
        dest=result.dest if result.outcome is not Outcome.failed else "",
        outcome=result.outcome,
        bytes_in=result.bytes_in,
        bytes_out=result.bytes_out,
        reason=result.reason,
        message=result.message,
        attempts=result.attempts,
        quality=result.quality,
        ssim=result.ssim,
        stored_original=result.stored_original or None,
        frames=result.frames,
        renditions=None if result.renditions is None else [rendition_line(r) for r in result.renditions],
    )


def rendition_line(rendition: RenditionResult) -> dict:
    """One rendition in a manifest line: camelCase as the rest of it, empty fields left out."""
    line = {
        "name": rendition.name,
        "width": rendition.width,
        "format": rendition.format,
        "outcome": rendition.outcome.value,
        "dest": rendition.dest,
        "bytesOut": rendition.bytes_out,
        "storedWidth": rendition.stored_width,
        "storedHeight": rendition.stored_height,
        "reason": rendition.reason,
        "message": rendition.message,
        "quality": rendition.quality,
        "ssim": rendition.ssim,
        "storedOriginal": rendition.stored_original or None,
    }
    return {key: value for key, value in line.items() if value not in (None, "")}


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

    def merge(self, ids: int) -> bool:
        """Add the ids of a bitmap from id 0; False (and nothing added) when one is here already."""
        current = int.from_bytes(self._bytes, "little")
        if current & ids:
            return False
        merged = current | ids
        self._bytes = bytearray(
            merged.to_bytes(max(len(self._bytes), (merged.bit_length() + 7) // 8), "little")
        )
        return True


def part_key_name(span: Span) -> str:
    """A ledger part's name: `part-<n>.jsonl` for one batch, `part-<first>-<last>.jsonl` merged."""
    first, last = span
    return f"part-{first:08d}.jsonl" if first == last else f"part-{first:08d}-{last:08d}.jsonl"


def summary_key_name(span: Span) -> str:
    """The name of a merged part's summary."""
    return f"sum-{span[0]:08d}-{span[1]:08d}.json"


def live_spans(spans: Iterable[Span]) -> tuple[list[Span], list[Span]]:
    """(live, covered): the parts to read, in order, and those another part holds already (a
    compaction that stopped between writing the merged part and deleting its sources)."""
    live: list[Span] = []
    covered: list[Span] = []
    for span in sorted(set(spans), key=lambda s: (s[0], -s[1])):
        if live and span[1] <= live[-1][1]:
            covered.append(span)
        else:
            live.append(span)
    return live, covered


def _size_class(span: Span, fanin: int) -> int:
    batches, size = span[1] - span[0] + 1, 0
    while batches >= fanin:
        batches //= fanin
        size += 1
    return size


def compaction(spans: list[Span], fanin: int = COMPACT_FANIN) -> Span | None:
    """The span to merge the live `spans` (in order) into, or None: when `fanin` parts are of one
    size class (1, fanin, fanin², ... batches), the smallest such class. The merge takes every live
    part inside the returned span."""
    by_class: dict[int, list[Span]] = {}
    for span in spans:
        by_class.setdefault(_size_class(span, fanin), []).append(span)
    for size in sorted(by_class):
        members = by_class[size]
        if len(members) >= fanin:
            return (min(s[0] for s in members), max(s[1] for s in members))
    return None


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
    renditions: Counter = field(default_factory=Counter)
    """With renditions: outputs by outcome."""

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
        if has_output(result):
            self.bytes_in += result.bytes_in
            self.bytes_out += result.bytes_out
        self.renditions.update(r.outcome for r in result.renditions or ())

    def merge(self, other: Tally) -> None:
        self.succeeded += other.succeeded
        self.skipped += other.skipped
        self.failed += other.failed
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.failures.update(other.failures)
        self.renditions.update(other.renditions)


def has_output(result: Result) -> bool:
    """Whether an output stands for this input: made now, or kept from an earlier run. Only these count
    in the status's bytes, so a failure or a `not_smaller` skip is never reported as 100 % saved.
    With renditions: any rendition stored or kept (the result's bytes are those renditions')."""
    if result.renditions is not None:
        return any(r.dest for r in result.renditions if r.outcome is not Outcome.failed)
    return result.outcome is Outcome.done or (result.outcome is Outcome.skipped and bool(result.dest))


@dataclass
class Summary:
    """What a ledger part counts: its tally and its ids (bit i of `bits` is id `base` + i)."""

    tally: Tally = field(default_factory=Tally)
    base: int = 0
    bits: int = 0

    @classmethod
    def of(cls, results: Iterable[Result]) -> Summary:
        tally, ids = Tally(), []
        for result in results:
            tally.add(result)
            ids.append(result.id)
        if not ids:
            return cls(tally)
        base = min(ids)
        bitmap = bytearray((max(ids) - base) // 8 + 1)
        for n in ids:
            bitmap[(n - base) >> 3] |= 1 << ((n - base) & 7)
        return cls(tally, base, int.from_bytes(bitmap, "little"))

    @property
    def ids(self) -> int:
        """The ids as one bitmap from id 0."""
        return self.bits << self.base

    def merge(self, other: Summary) -> None:
        self.tally.merge(other.tally)
        if not self.bits:
            self.base, self.bits = other.base, other.bits
        elif other.bits:
            base = min(self.base, other.base)
            self.bits = (self.bits << (self.base - base)) | (other.bits << (other.base - base))
            self.base = base

    def encode(self) -> bytes:
        t = self.tally
        raw = self.bits.to_bytes((self.bits.bit_length() + 7) // 8, "little")
        return json.dumps(
            {
                "succeeded": t.succeeded,
                "skipped": t.skipped,
                "failed": t.failed,
                "bytes_in": t.bytes_in,
                "bytes_out": t.bytes_out,
                "failures": dict(t.failures),
                "renditions": {outcome.value: n for outcome, n in t.renditions.items()},
                "base": self.base,
                "bits": base64.b64encode(zlib.compress(raw)).decode(),
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Summary:
        """ValueError (or KeyError, TypeError, zlib.error) when `raw` is not a summary."""
        entry = json.loads(raw)
        names = ("succeeded", "skipped", "failed", "bytes_in", "bytes_out")
        values = {name: entry[name] for name in names}
        failures = Counter(entry["failures"])
        renditions = Counter({Outcome(k): v for k, v in entry.get("renditions", {}).items()})
        if not all(
            isinstance(v, int) and v >= 0
            for v in [*values.values(), *failures.values(), *renditions.values(), entry["base"]]
        ):
            raise ValueError("counts must be integers ≥ 0")
        bits = int.from_bytes(zlib.decompress(base64.b64decode(entry["bits"])), "little")
        summary = cls(Tally(**values, failures=failures, renditions=renditions), entry["base"], bits)
        if summary.tally.accounted != bits.bit_count() or summary.tally.failed != failures.total():
            raise ValueError(f"{summary.tally.accounted} results counted, {bits.bit_count()} ids")
        return summary


class Ledger:
    """A job's record in its destination bucket: which task ids have a result (each counted once),
    the tally and the cursor, and the manifest lines written from it at the end."""

    def __init__(self, client, job: JobRef, spec: CompressionJobSpec, fanin: int = COMPACT_FANIN):
        self.client = client
        self.job = job
        self.bucket = spec.destination.s3.bucket
        self.prefix = f"{ledger_prefix(job, spec)}ledger/{job.uid8}/"
        self.manifest_key = manifest_key(job, spec)
        self.renditions = bool(spec.renditions)
        self.fanin = fanin
        self.tally = Tally()
        self.cursor = Cursor()
        self._seen = _Bits()
        self._spans: list[Span] = []  # the live parts, in order
        self._summaries: dict[Span, Summary] = {}  # what each live part counts
        self._parts = 0
        self._damaged: set[Span] = set()  # parts with lines skipped on load: filtered when copied
        self._bound: int | None = 0  # the saved cursor's next_id when loaded (None: it was damaged)
        self.objects_read = 0
        """Ledger objects read by `load` (the parts' lines or their summaries): what a restart costs."""

    def load(self) -> Ledger:
        """Read back the cursor and the parts (after an operator restart): a merged part's summary
        when it has a sound one, else its lines. The cursor first: every recorded id is below the
        saved cursor's, so it bounds what a part may hold."""
        self._bound = self._load_cursor()
        spans, summaries = [], set()
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        ):
            for item in page.get("Contents", []):
                name = item["Key"].removeprefix(self.prefix)
                if match := _PART.fullmatch(name):
                    first = int(match[1])
                    spans.append((first, int(match[2] or first)))
                elif match := _SUMMARY.fullmatch(name):
                    summaries.add((int(match[1]), int(match[2])))
        self._spans, covered = live_spans(spans)
        for span in self._spans:
            summary = self._load_summary(span) if span in summaries else None
            if summary is None:
                summary = self._load_part(span)
            self._summaries[span] = summary
            # The highest number, not how many: a new part must never overwrite a saved one.
            self._parts = max(self._parts, span[1])
        self._delete(covered, summaries - set(self._spans))
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

    def _load_summary(self, span: Span) -> Summary | None:
        """A merged part's summary, counted; None (the part's lines are read instead) when it is
        not a summary, names an id past the cursor, or one counted already."""
        key = self.prefix + summary_key_name(span)
        raw = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        self.objects_read += 1
        try:
            summary = Summary.decode(raw)
        except (ValueError, KeyError, TypeError, RecursionError, zlib.error) as exc:
            log.warning("job %s: ledger summary %s is damaged (%s); reading its part", self.job, key, exc)
            return None
        if self._bound is not None and summary.ids.bit_length() > self._bound:
            log.warning("job %s: ledger summary %s names unpublished ids; reading its part", self.job, key)
            return None
        if not self._seen.merge(summary.ids):
            log.warning("job %s: ledger summary %s counts ids twice; reading its part", self.job, key)
            return None
        self.tally.merge(summary.tally)
        return summary

    def _load_part(self, span: Span) -> Summary:
        """Count a part's lines; a damaged line (or a whole part that is not a ledger part) is
        skipped with a log line, never a reason to fail: a restart must get past it."""
        key = self.prefix + part_key_name(span)
        skipped, first, counted = 0, "", []
        self.objects_read += 1
        for line in self._lines(key):
            result = _ledger_result(line, self._bound)
            if isinstance(result, str):
                skipped += 1
                first = first or result
            elif result.id not in self._seen:  # counted once, whatever a part holds
                self._seen.add(result.id)
                self.tally.add(result)
                counted.append(result)
        if skipped:
            self._damaged.add(span)
            log.warning(
                "job %s: ledger part %s: %d damaged line(s) skipped, the first: %s",
                self.job,
                key,
                skipped,
                first,
            )
        return Summary.of(counted)

    def _lines(self, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        return body.iter_lines(chunk_size=READ_CHUNK)

    def seen(self, task_id: int) -> bool:
        return task_id in self._seen

    def record(self, results: list[Result]) -> Recorded:
        """Persist the results not recorded before as one part, refusing those `refusal` names.
        Call before acking them: a crash in between only redelivers what is already recorded.
        Then merge parts if COMPACT_FANIN of a size have gathered."""
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
            lines.append(manifest_line(result).encode())
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
        span = (self._parts + 1, self._parts + 1)
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.prefix + part_key_name(span),
            Body=("\n".join(lines) + "\n").encode(),
            ContentType="application/x-ndjson",
        )
        self._parts += 1
        self._spans.append(span)
        self._summaries[span] = Summary.of(fresh)
        for result in fresh:
            self._seen.add(result.id)
            self.tally.add(result)
        while (merge := compaction(self._spans, self.fanin)) is not None:
            self._compact(merge)
        return Recorded(len(fresh), refused)

    def _compact(self, span: Span) -> None:
        """Merge the live parts inside `span` into one part and its summary, then delete them. The
        merged part is complete before anything is deleted (a restart in between reads it and
        deletes the rest); a failure part-way leaves the sources as they were, merged next time."""
        sources = [s for s in self._spans if span[0] <= s[0] and s[1] <= span[1]]
        summary = Summary()
        for source in sources:
            summary.merge(self._summaries[source])
        self._concatenate(sources, self.prefix + part_key_name(span))
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.prefix + summary_key_name(span),
            Body=summary.encode(),
            ContentType="application/json",
        )
        at = self._spans.index(sources[0])
        self._spans[at : at + len(sources)] = [span]
        for source in sources:
            del self._summaries[source]
            self._damaged.discard(source)  # its sound lines only were copied
        self._summaries[span] = summary
        self._delete(sources, [s for s in sources if s[0] != s[1]])

    def _delete(self, parts: Iterable[Span], summaries: Iterable[Span]) -> None:
        keys = [part_key_name(s) for s in parts] + [summary_key_name(s) for s in summaries]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            chunk = keys[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self.prefix + k} for k in chunk], "Quiet": True},
            )

    def save_cursor(self, cursor: Cursor) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=f"{self.prefix}cursor.json",
            Body=json.dumps(cursor.__dict__).encode(),
            ContentType="application/json",
        )
        self.cursor = cursor

    def write_manifest(self) -> str:
        """Concatenate the parts into manifest.jsonl; with renditions, also index.json beside it
        (kompressor.index). Both multipart, so their size is not bounded by memory."""
        self._upload(self.manifest_key, "application/x-ndjson", self._chunks(self._spans))
        if self.renditions:
            lines = (json.loads(line) for line in self._sound_lines(self._spans))
            chunks = (c.encode() for c in index.chunks(lines))
            self._upload(index_key_of(self.manifest_key), "application/json", chunks)
        return f"s3://{self.bucket}/{self.manifest_key}"

    def _concatenate(self, spans: list[Span], key: str) -> None:
        """Write the parts' lines, in order, as the object `key`."""
        self._upload(key, "application/x-ndjson", self._chunks(spans))

    def _chunks(self, spans: list[Span]) -> Iterator[bytes]:
        """The parts' bytes in order, a few MiB at a time; a damaged part's sound lines only."""
        for span in spans:
            source = self.prefix + part_key_name(span)
            if span in self._damaged:
                yield from (line + b"\n" for line in self._sound_lines([span]))
            else:
                yield from self.client.get_object(Bucket=self.bucket, Key=source)["Body"].iter_chunks(
                    READ_CHUNK
                )

    def _sound_lines(self, spans: list[Span]) -> Iterator[bytes]:
        """The parts' lines in order; of a damaged part, only those that read back as results."""
        for span in spans:
            for line in self._lines(self.prefix + part_key_name(span)):
                if line and (
                    span not in self._damaged or isinstance(_ledger_result(line, self._bound), Result)
                ):
                    yield line

    def _upload(self, key: str, content_type: str, pieces: Iterable[bytes]) -> None:
        """Store `pieces` as one object, uploaded in parts of MULTIPART_CHUNK or more (read and
        written a few MiB at a time); an upload that fails part-way is aborted."""
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)
        parts, buffer = [], bytearray()

        def flush() -> None:
            number = len(parts) + 1
            answer = self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                PartNumber=number,
                UploadId=upload["UploadId"],
                Body=bytes(buffer),
            )
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            buffer.clear()

        try:
            for piece in pieces:
                buffer.extend(piece)
                if len(buffer) >= MULTIPART_CHUNK:
                    flush()
            if buffer or not parts:
                flush()
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])
            raise


def index_key_of(manifest: str) -> str:
    """index.json beside a manifest.jsonl (key or URL)."""
    return manifest.removesuffix("manifest.jsonl") + "index.json"


def _ledger_result(line: str | bytes, published: int | None) -> Result | str:
    """A ledger line read back as the Result it counts as, or what is wrong with it (not a ledger
    line, or an id at or above `published`, when that is known)."""
    try:
        entry = ManifestLine.decode(line)
        result = Result(
            job=JobRef(namespace="", name="", uid=""),
            id=entry.id,
            outcome=entry.outcome,
            source=entry.source,
            dest=entry.dest,  # has_output reads it: a kept output's bytes count after a restart too
            bytes_in=entry.bytes_in,
            bytes_out=entry.bytes_out,
            reason=entry.reason,
            renditions=None
            if entry.renditions is None
            else [_counted_rendition(r) for r in entry.renditions],
        )
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # ValidationError is a ValueError
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    if published is not None and result.id >= published:
        return f"id {result.id} was never published ({published} were)"
    return result


def _counted_rendition(entry: dict) -> RenditionResult:
    """A manifest line's rendition, read back as much as the tally counts."""
    return RenditionResult(
        name=entry["name"],
        width=entry["width"],
        format=entry["format"],
        outcome=Outcome(entry["outcome"]),
        dest=entry.get("dest", ""),
    )
