"""Listing a job's inputs on the real S3 server."""

from __future__ import annotations

from kompressor.crd import S3Source
from kompressor_operator.listing import list_s3_sources
from testbed import S3Server


def test_a_jobs_area_beside_the_source_prefix_is_never_listed(s3: S3Server, bucket: str):
    client = s3.client()
    for key in ("sr/a.jpg", "sr.kompressor/old/ledger/0a1b2c3d/part-00000001.jpg", "sr.kompressor/old/x.png"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    listed = [source.key for source in list_s3_sources(client, S3Source(bucket=bucket, prefix="sr"))]
    assert listed == ["sr/a.jpg"]
