"""Planning: which inputs a job has, the task for each, and what they would cost (the dry run's
estimate). Pure: listings come in, tasks and figures go out.

A task's id is its input's index in the job's listing order (S3 lists keys in UTF-8 binary order;
a URL manifest in file order), so ids are stable across an operator restart and re-listing resumes
after the last published key instead of publishing anything twice.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from kompressor.crd import CompressionJobSpec, Format
from kompressor.messages import JobRef, SourceObject, Task, output_key
from kompressor.renditions import plan_renditions

MANIFEST_URL_COLUMN = "url"
MAX_URL_CHARS = 2048  # as the CRD's inline `urls.items`: a task must stay a small message


def plan_task(job: JobRef, spec: CompressionJobSpec, index: int, source: SourceObject) -> Task:
    """The task for input number `index` of the job: its output key(s) and settings from the spec."""
    prefix = spec.source.s3.prefix if spec.source.s3 is not None else ""
    renditions = plan_renditions(spec, source, prefix)
    return Task(
        job=job,
        id=index,
        source=source,
        dest_bucket=spec.destination.s3.bucket,
        dest_key="" if renditions else output_key(source, prefix, spec.destination, spec.output),
        existing=spec.destination.existing,
        output=spec.output,
        limits=spec.limits,
        renditions=renditions or None,
        cache_control=spec.destination.cache_control,
        copy_metadata=spec.destination.copy_metadata,
    )


def plan_tasks(
    job: JobRef, spec: CompressionJobSpec, sources: Iterable[SourceObject], first_index: int = 0
) -> Iterator[Task]:
    """`plan_task` for each source, numbered from `first_index` (where the fan-out resumes)."""
    for index, source in enumerate(sources, start=first_index):
        yield plan_task(job, spec, index, source)


class ManifestError(ValueError):
    """A URL manifest that cannot be a job's inputs; the message says where and why. The job fails:
    reading it again gives the same answer."""


def parse_url_manifest(text: str) -> list[str]:
    """A CSV with a `url` column, or one URL per line (blank lines and `#` comments skipped)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        return []
    header = next(csv.reader([lines[0]]))
    if MANIFEST_URL_COLUMN in [column.strip().lower() for column in header]:
        rows = csv.DictReader(io.StringIO("\n".join(lines)))
        rows.fieldnames = [name.strip().lower() for name in rows.fieldnames or []]
        urls = [(row.get(MANIFEST_URL_COLUMN) or "").strip() for row in rows]
    else:
        urls = [line.strip() for line in lines]
    bad = [url for url in urls if not url.startswith(("http://", "https://"))]
    if bad:
        raise ManifestError(f"{len(bad)} line(s) are not http(s) URLs, first: {bad[0][:200]!r}")
    long = [url for url in urls if len(url) > MAX_URL_CHARS]
    if long:
        raise ManifestError(
            f"{len(long)} URL(s) are over {MAX_URL_CHARS} characters, first: {long[0][:200]!r}..."
        )
    return urls


# --- the dry run's estimate -----------------------------------------------------------------------

CPU_SECONDS_PER_MIB = {Format.jpeg: 0.10, Format.webp: 0.38, Format.avif: 3.3, Format.png: 2.7}
"""CPU seconds to compress one MiB of input, by output format: `codec.compress` with the default
settings, fit 1600, over the 24 photographs of tests.corpus.real_photos() (3.0 MB of JPEG), on one
AMD EPYC vCPU (measured 2026-12-01: 12, 45, 389 and 325 ms per image). The bare encoder agrees with
README's Performance section (43-49 ms per image for WebP)."""
TARGET_SSIM_FACTOR = 3.0
"""Automatic quality encodes several times per image: measured ×2.7 (WebP) and ×4.2 (JPEG)."""
TASK_OVERHEAD_CPU_SECONDS = 0.03
"""Per input besides its encode: S3 head/get/put and the AMQP delivery and result in the worker
(~20 ms), the broker's and the S3 server's share (~10 ms) (README: the pipeline's 66 + 10 ms per
WebP image against the bare encoder's 45 ms)."""
_FORMAT_OF_EXTENSION = {".jpg": Format.jpeg, ".jpeg": Format.jpeg, ".webp": Format.webp, ".avif": Format.avif}


@dataclass(frozen=True)
class Estimate:
    """What a job would do: its inputs, their bytes, and the CPU time to compress them."""

    inputs: int
    bytes: int
    unknown_sizes: int
    """Inputs whose size is not known before fetching (URL sources): not in `bytes` nor the CPU."""
    cpu_seconds: float

    def seconds(self, processes: int) -> float:
        """Wall time with `processes` compressing at once."""
        return self.cpu_seconds / max(processes, 1)


def estimate(spec: CompressionJobSpec, tasks: Iterable[Task]) -> Estimate:
    """Inputs, bytes and CPU seconds of `tasks` at the measured rates above."""
    inputs = total = unknown = 0
    cpu = 0.0
    for task in tasks:
        inputs += 1
        cpu += TASK_OVERHEAD_CPU_SECONDS
        if task.source.size is None:
            unknown += 1
            continue
        total += task.source.size
        # Renditions: each output at the rate of a full-size one, an upper bound (smaller widths
        # cost less; the decode is shared).
        for output in [r.output for r in task.renditions or ()] or [task.output]:
            factor = TARGET_SSIM_FACTOR if output.target_ssim is not None else 1.0
            fmt = output.format
            if fmt is Format.keep:
                fmt = _FORMAT_OF_EXTENSION.get(posixpath.splitext(task.dest_key)[1].lower(), Format.png)
            cpu += task.source.size / 2**20 * CPU_SECONDS_PER_MIB[fmt] * factor
    return Estimate(inputs=inputs, bytes=total, unknown_sizes=unknown, cpu_seconds=cpu)
