"""`kompressor run` with renditions end to end on the real broker and store: every (input, rendition)
counted once in the status and the manifest, index.json beside it, `kompressor srcset` reading it,
and a rerun that skips exactly what exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import RabbitMQ, S3Server
from tests.corpus import palette_transparent_png, real_photos
from tests.jobs import start_kompressor_run, upload

RENDITIONS = [
    {"name": "hero", "widths": [480, 240], "formats": ["avif", "webp", "jpeg"], "quality": 70},
    {"name": "thumb", "widths": [96], "formats": ["webp"], "quality": 60},
]
PER_INPUT = 2 * 3 + 1


def _job(bucket: str, **destination) -> dict:
    return {
        "apiVersion": "kompressor.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "e2e-renditions"},
        "spec": {
            "source": {"s3": {"bucket": bucket, "prefix": "in/", "include": ["*"]}},
            "destination": {"s3": {"bucket": bucket, "prefix": "out/"}, **destination},
            "renditions": RENDITIONS,
            "workers": {"maxReplicas": 1, "processesPerPod": 1, "scaleDownDelaySeconds": 2},
        },
    }


def _get(s3: S3Server, url: str) -> bytes:
    bucket, key = url.removeprefix("s3://").split("/", 1)
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_renditions_run_count_index_srcset_and_rerun(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    photos = real_photos(limit=3, max_side=600)
    if not photos:
        pytest.skip("opencv-doc's photos are not installed")
    # A 64 px wide PNG: every width above it is skipped (would_upscale), never upscaled.
    upload(s3, bucket, photos | {"tiny.png": palette_transparent_png()})
    env = {**os.environ, "KOMPRESSOR_BROKER__URL": rabbitmq.url, **s3.env()}
    run = start_kompressor_run(_job(bucket), tmp_path, env)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    status = json.loads(out)
    inputs = len(photos) + 1
    assert (status["phase"], status["total"], status["succeeded"], status["skipped"]) == (
        "Succeeded",
        inputs,
        len(photos),
        1,
    )
    renditions = status["renditions"]
    assert (renditions["succeeded"], renditions["skipped"], renditions["failed"]) == (
        len(photos) * PER_INPUT,
        PER_INPUT,
        0,
    )
    assert renditions["progress"] == f"{inputs * PER_INPUT}/{inputs * PER_INPUT}"

    lines = [json.loads(line) for line in _get(s3, status["manifest"]).decode().splitlines()]
    assert len(lines) == inputs
    tiny = next(line for line in lines if line["source"].endswith("tiny.png"))
    assert {(r["outcome"], r["reason"]) for r in tiny["renditions"]} == {("skipped", "would_upscale")}

    index_url = status["manifest"].removesuffix("manifest.jsonl") + "index.json"
    document = json.loads(_get(s3, index_url))
    assert set(document["sources"]) == {f"in/{name}" for name in photos}  # tiny.png has nothing stored
    name = sorted(photos)[0]
    hero = document["sources"][f"in/{name}"]["hero"]
    assert [(o["format"], o["width"]) for o in hero] == [
        (f, w) for w in (480, 240) for f in ("avif", "webp", "jpeg")
    ]
    for output in hero:
        ext = {"jpeg": "jpg"}.get(output["format"], output["format"])
        assert output["key"] == f"out/{name}-hero-{output['width']}w.{ext}"
        head = s3.client().head_object(Bucket=bucket, Key=output["key"])
        assert head["ContentLength"] == output["bytes"] and output["height"] > 0

    (tmp_path / "index.json").write_bytes(_get(s3, index_url))
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "kompressor_operator.cli",
            "srcset",
            str(tmp_path / "index.json"),
            f"in/{name}",
            "--base-url",
            "https://cdn.example/",
            "--alt",
            "a photo",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed.startswith('<picture>\n  <source type="image/avif"')
    assert f"https://cdn.example/out/{name}-hero-480w.webp 480w" in printed
    assert (
        f'<img src="https://cdn.example/out/{name}-hero-480w.jpg"' in printed and 'alt="a photo"' in printed
    )

    # A rerun with one more width skips exactly what exists and makes only the new width.
    job = _job(bucket)
    job["spec"]["renditions"][1]["widths"] = [96, 120]
    again = start_kompressor_run(job, tmp_path, env)
    out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    status = json.loads(out)
    assert (status["succeeded"], status["skipped"]) == (len(photos), 1)
    assert (status["renditions"]["succeeded"], status["renditions"]["skipped"]) == (
        len(photos),
        inputs * PER_INPUT + 1,  # tiny.png's 120w: would_upscale
    )
    lines = [json.loads(line) for line in _get(s3, status["manifest"]).decode().splitlines()]
    made = {(r["name"], r["width"]) for line in lines for r in line["renditions"] if r["outcome"] == "done"}
    assert made == {("thumb", 120)}
    assert {r["reason"] for line in lines for r in line["renditions"] if r["width"] != 120} == {
        "exists",
        "would_upscale",
    }
