"""S3 adapter of the control plane: list a job's inputs, read a URL manifest, write the manifest."""

from __future__ import annotations

from collections.abc import Iterator

from botocore.exceptions import ClientError

from kompressor.crd import S3Source, UrlSource
from kompressor.messages import SourceObject
from kompressor_operator.planning import ManifestError, parse_url_manifest

MANIFEST_MAX_BYTES = 256 * 2**20


def kompressor_key(key: str) -> bool:
    """Is `key` possibly in a job's own area (its ledger and manifest)? A job keeps them under
    `<destination prefix>.kompressor/<job>/`, and a destination prefix need not end in `/`: the
    area of a job writing under `sr` is `sr.kompressor/`, which a listing of the prefix `sr` meets.
    So any key with `.kompressor/` in it is ours, not only those with a `.kompressor` folder."""
    return ".kompressor/" in key


def list_s3_sources(client, source: S3Source, start_after: str = "") -> Iterator[SourceObject]:
    """Objects under the prefix that match the include globs, in key order, paginated; resumable
    after a key. Keys in a job's own area (`kompressor_key`) are never inputs."""
    paginator = client.get_paginator("list_objects_v2")
    arguments = {"Bucket": source.bucket, "Prefix": source.prefix}
    if start_after:
        arguments["StartAfter"] = start_after
    for page in paginator.paginate(**arguments):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/") or kompressor_key(key) or not source.matches(key):
                continue
            yield SourceObject(
                bucket=source.bucket, key=key, etag=item.get("ETag", "").strip('"'), size=item.get("Size")
            )


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
