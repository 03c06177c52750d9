"""S3 adapter of the control plane: list a job's inputs, read a URL manifest, write the manifest."""

from __future__ import annotations

import queue
import threading
import weakref
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator

from botocore.exceptions import ClientError

from kompressor.crd import S3Source, UrlSource
from kompressor.messages import SourceObject
from kompressor_operator.planning import ManifestError, parse_url_manifest

MANIFEST_MAX_BYTES = 256 * 2**20
PREFETCH_PAGES = 1
"""Listing pages fetched ahead of the fan-out: the next page's request and parse run while this one's
tasks are planned and published (bench/fanout.py), and memory stays at a page or two (1000 keys each)."""
_LEAN = threading.local()


def kompressor_key(key: str) -> bool:
    """Is `key` possibly in a job's own area (its ledger and manifest)? A job keeps them under
    `<destination prefix>.kompressor/<job>/`, and a destination prefix need not end in `/`: the
    area of a job writing under `sr` is `sr.kompressor/`, which a listing of the prefix `sr` meets.
    So any key with `.kompressor/` in it is ours, not only those with a `.kompressor` folder."""
    return ".kompressor/" in key


def _lean_contents(response_dict, customized_response_dict, operation_model=None, **_kwargs) -> None:
    """botocore's `before-parse` hook for ListObjectsV2, active only in a thread listing inputs
    (`_LEAN.active`): read each object's Key, ETag and Size with the standard library's C XML parser
    and leave botocore only the page's envelope (IsTruncated, NextContinuationToken, ...). botocore's
    generic parser built every field of every object (LastModified, StorageClass...) through its
    shape model: half of the fan-out's CPU at 100,000 inputs (bench/fanout.py). The keys stay
    URL-encoded here: botocore's `after-call` hook decodes them as before.

    It runs before botocore's own check for S3's errors inside a 200 (`register_lean`), which
    parsed every whole page once more only to read its root tag (11 % of the listing thread's
    time, bench/million.py): that check now reads the envelope. What is not a whole page of
    results (a body cut short, an error) is left untouched, for that check to make it a 500."""
    if (
        not getattr(_LEAN, "active", False)
        or operation_model is None
        or operation_model.name != "ListObjectsV2"
        or response_dict.get("status_code") != 200
    ):
        return
    try:
        root = ElementTree.fromstring(response_dict["body"])
    except ElementTree.ParseError:
        return
    namespace = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    if root.tag != f"{namespace}ListBucketResult":
        return
    key, etag, size = f"{namespace}Key", f"{namespace}ETag", f"{namespace}Size"
    contents = []
    for item in root.findall(f"{namespace}Contents"):
        found_size = item.findtext(size)
        contents.append(
            {
                "Key": item.findtext(key, ""),
                "ETag": item.findtext(etag, ""),
                "Size": int(found_size) if found_size is not None else None,
            }
        )
        root.remove(item)
    if contents:
        customized_response_dict["Contents"] = contents
        response_dict["body"] = ElementTree.tostring(root)


def register_lean(client) -> None:
    """Hook `_lean_contents` into the client, ahead of botocore's S3 handlers: botocore calls the
    handlers of `before-parse.*` before those of `before-parse.s3.*`."""
    client.meta.events.register("before-parse.*", _lean_contents, unique_id="kompressor-lean-listing")


def _lean_pages(client, arguments: dict, pages: queue.Queue, stop: threading.Event) -> None:
    """The prefetching thread: list pages into `pages` (one ahead at most), then a None; an error
    goes into the queue instead, for the consumer to raise. Ends early once `stop` is set."""
    register_lean(client)
    _LEAN.active = True

    def put(item) -> bool:
        while not stop.is_set():
            try:
                pages.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    try:
        for page in client.get_paginator("list_objects_v2").paginate(**arguments):
            if not put(page.get("Contents", [])):
                return
        put(None)
    except BaseException as exc:  # handed to the consumer, raised there
        put(exc)


class S3Listing(Iterator[SourceObject]):
    """The inputs under an S3 prefix in key order, the next page fetched in a thread while this
    one is consumed: a thread and a queue of PREFETCH_PAGES pages. The end of the listing, an error
    (raised by `__next__`, as the paginator would), `close()` or the listing's garbage collection
    stops the thread."""

    def __init__(self, client, source: S3Source, start_after: str = ""):
        self._source = source
        arguments = {"Bucket": source.bucket, "Prefix": source.prefix}
        if start_after:
            arguments["StartAfter"] = start_after
        self._pages: queue.Queue = queue.Queue(maxsize=PREFETCH_PAGES)
        self._stop = threading.Event()
        self._items: Iterator[dict] = iter(())
        self._done = False
        self._thread = threading.Thread(
            target=_lean_pages,
            args=(client, arguments, self._pages, self._stop),
            name=f"listing s3://{source.bucket}/{source.prefix}",
            daemon=True,
        )
        weakref.finalize(self, self._stop.set)
        self._thread.start()

    def __next__(self) -> SourceObject:
        source = self._source
        while True:
            for item in self._items:
                key = item["Key"]
                if key.endswith("/") or kompressor_key(key) or not source.matches(key):
                    continue
                etag = (item.get("ETag") or "").strip('"')
                return SourceObject(bucket=source.bucket, key=key, etag=etag, size=item.get("Size"))
            if self._done:
                raise StopIteration
            page = self._pages.get()
            if page is None or isinstance(page, BaseException):
                self._done = True
                self.close()
                if page is not None:
                    raise page
                raise StopIteration
            self._items = iter(page)

    def close(self) -> None:
        """Stop the prefetching thread: it ends once its current request is answered (or given up),
        without waiting for it here (a step that failed on storage must not wait on it again)."""
        self._done = True
        self._items = iter(())
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


def list_s3_sources(client, source: S3Source, start_after: str = "") -> S3Listing:
    """Objects under the prefix that match the include globs, in key order, paginated; resumable
    after a key. Keys in a job's own area (`kompressor_key`) are never inputs."""
    return S3Listing(client, source, start_after)


def url_sources(client, source: UrlSource) -> list[SourceObject]:
    """The URL inputs, inline or from the manifest object. ManifestError when the manifest is
    missing, too large, not UTF-8 or not a URL list; other storage errors propagate (retried)."""
    if source.items is not None:
        urls = list(source.items)
    else:
        assert source.manifest is not None
        bucket, key = source.manifest.bucket, source.manifest.key
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            if head["ContentLength"] > MANIFEST_MAX_BYTES:
                raise ManifestError(f"it is over {MANIFEST_MAX_BYTES} bytes")
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            urls = parse_url_manifest(body.decode("utf-8-sig"))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
            raise ManifestError(f"URL manifest s3://{bucket}/{key} does not exist") from None
        except (ManifestError, UnicodeDecodeError) as exc:
            raise ManifestError(f"URL manifest s3://{bucket}/{key}: {exc}") from None
    return [SourceObject(url=url) for url in urls]
