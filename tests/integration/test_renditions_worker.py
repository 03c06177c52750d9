"""A worker making renditions on the real broker and store: each output with its format's
Content-Type, the job's Cache-Control and (copyMetadata) the source's user metadata; one rendition's
failure ends that rendition only, and the others are stored. Source metadata that does not fit
S3's 2 KB limit beside the outputs' own is left out, and the result says so."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from kompressor.crd import parse_spec
from kompressor.messages import Outcome
from testbed import RabbitMQ, S3Server
from tests.corpus import animated_gif
from tests.jobs import collect_results, new_job, publish_job, workers


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def test_renditions_are_stored_as_s3_users_expect_and_fail_one_by_one(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    client = s3.client()
    # 1,905 bytes of notes: with the outputs' own metadata over S3's 2 KB, so not copied (and said so).
    metadata = {"notes": "n" * 1900, "owner": "alice"}
    client.put_object(Bucket=bucket, Key="in/wide.png", Body=_png((400, 300)), Metadata=metadata)
    # 100 x 20000: WebP refuses a side above 16383 px, JPEG takes it.
    client.put_object(Bucket=bucket, Key="in/tall.png", Body=_png((100, 20000)))
    spec = parse_spec(
        {
            "source": {"s3": {"bucket": bucket, "prefix": "in/"}},
            "destination": {
                "s3": {"bucket": bucket, "prefix": "out/"},
                "cacheControl": "public, max-age=31536000, immutable",
                "copyMetadata": True,
            },
            "renditions": [{"name": "r", "widths": [100], "formats": ["webp", "jpeg"], "neverLarger": False}],
            "limits": {"taskTimeoutSeconds": 60},
        }
    )
    job = new_job("renditions")
    assert publish_job(rabbitmq, s3, job, spec) == 2
    pool = workers(rabbitmq, s3, job, tmp_path)
    pool.start_one()
    try:
        results = collect_results(rabbitmq, job, 2, timeout=120).final()
    finally:
        pool.stop_all()
    by_source = {r.source.rsplit("/", 1)[1]: r for r in results.values()}

    wide = by_source["wide.png"]
    assert wide.outcome is Outcome.done and [r.outcome for r in wide.renditions] == [Outcome.done] * 2
    for rendition, content_type in zip(wide.renditions, ("image/webp", "image/jpeg"), strict=True):
        key = rendition.dest.removeprefix(f"s3://{bucket}/")
        assert key == f"out/wide.png-r-100w.{'webp' if rendition.format == 'webp' else 'jpg'}"
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == content_type
        assert head["CacheControl"] == "public, max-age=31536000, immutable"
        assert head["Metadata"]["owner"] == "alice" and "notes" not in head["Metadata"]
        assert "metadata notes not copied: S3 keeps at most 2048 bytes" in rendition.message
        assert (
            head["Metadata"]["kompressor-size"]
            == "100x75"
            == f"{rendition.stored_width}x{rendition.stored_height}"
        )
        assert head["ContentLength"] == rendition.bytes_out
    assert wide.bytes_out == sum(r.bytes_out for r in wide.renditions)

    tall = by_source["tall.png"]
    webp, jpeg = tall.renditions
    assert (webp.outcome, webp.reason, webp.dest) == (Outcome.failed, "encode_error", "")
    assert jpeg.outcome is Outcome.done
    assert client.head_object(Bucket=bucket, Key="out/tall.png-r-100w.jpg")["ContentLength"] == jpeg.bytes_out
    # The input is failed (one of its outputs is), with the failed rendition named.
    assert (tall.outcome, tall.reason) == (Outcome.failed, "encode_error")
    assert "rendition r 100w webp" in tall.message


def test_an_animated_gif_kept_as_animated_webp_with_its_frames_in_the_result(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    client = s3.client()
    client.put_object(Bucket=bucket, Key="in/spin.gif", Body=animated_gif())  # 3 frames, 40x30
    spec = parse_spec(
        {
            "source": {"s3": {"bucket": bucket, "prefix": "in/"}},
            "destination": {"s3": {"bucket": bucket, "prefix": "anim/"}},
            "renditions": [
                {
                    "name": "a",
                    "widths": [20],
                    "formats": ["webp", "png"],
                    "animation": "keep",
                    "neverLarger": False,
                }
            ],
        }
    )
    job = new_job("animated")
    assert publish_job(rabbitmq, s3, job, spec) == 1
    pool = workers(rabbitmq, s3, job, tmp_path)
    pool.start_one()
    try:
        (result,) = collect_results(rabbitmq, job, 1, timeout=120).final().values()
    finally:
        pool.stop_all()
    assert (result.outcome, result.frames) == (Outcome.done, 3)
    webp, png = result.renditions
    assert (webp.outcome, png.outcome, webp.stored_width) == (Outcome.done, Outcome.done, 20)
    body = client.get_object(Bucket=bucket, Key="anim/spin.gif-a-20w.webp")["Body"].read()
    with Image.open(io.BytesIO(body)) as image:
        assert (image.n_frames, image.size) == (3, (20, 15))
    body = client.get_object(Bucket=bucket, Key="anim/spin.gif-a-20w.png")["Body"].read()
    with Image.open(io.BytesIO(body)) as image:  # png has no animation here: the first frame
        assert getattr(image, "n_frames", 1) == 1
    assert webp.bytes_out == len(
        client.get_object(Bucket=bucket, Key="anim/spin.gif-a-20w.webp")["Body"].read()
    )
