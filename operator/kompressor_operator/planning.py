"""Planning: which inputs a job has and the task for each. Pure: listings come in, tasks go out.

A task's id is its input's index in the job's listing order (S3 lists keys in UTF-8 binary order;
a URL manifest in file order), so ids are stable across an operator restart and re-listing resumes
after the last published key instead of publishing anything twice.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator

from kompressor.crd import CompressionJobSpec
from kompressor.messages import JobRef, SourceObject, Task, output_key

MANIFEST_URL_COLUMN = "url"
MAX_URL_CHARS = 2048  # as the CRD's inline `urls.items`: a task must stay a small message


def plan_task(job: JobRef, spec: CompressionJobSpec, index: int, source: SourceObject) -> Task:
    prefix = spec.source.s3.prefix if spec.source.s3 is not None else ""
    return Task(
        job=job,
        id=index,
        source=source,
        dest_bucket=spec.destination.s3.bucket,
        dest_key=output_key(source, prefix, spec.destination, spec.output),
        existing=spec.destination.existing,
        output=spec.output,
        limits=spec.limits,
    )


def plan_tasks(
    job: JobRef, spec: CompressionJobSpec, sources: Iterable[SourceObject], first_index: int = 0
) -> Iterator[Task]:
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
