"""`make demo`'s script end to end: it uses the test bed's RabbitMQ and S3 (given by environment, as
a user with running services would) and must leave what it promises: a per-image table, the
manifest, WebP outputs inside 1280×1280 in S3, a second job's renditions with index.json and the
`kompressor srcset` <picture> of one source, and a contact sheet a person can open that shows that
source's set."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageChops

from testbed import RabbitMQ, S3Server
from tests.corpus import real_photos

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"
# The demo's renditions job: the first 3 photos, each at 2 widths × 3 formats.
RENDITION_PHOTOS, WIDTHS, FORMATS = 3, {480, 240}, {"AVIF", "WEBP", "JPEG"}


def test_demo_compresses_every_photo_and_shows_it(rabbitmq: RabbitMQ, s3: S3Server, tmp_path: Path) -> None:
    photos = real_photos()
    assert photos, "opencv-doc's photographs are missing: scripts/setup.sh apt"
    output = tmp_path / "demo"
    env = {**os.environ, "KOMPRESSOR_BROKER__URL": rabbitmq.url, **s3.env()}
    done = subprocess.run(
        [sys.executable, str(DEMO), "--output", str(output)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,  # ~30 s on an idle 2-core machine
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout
    # It used the services it was given and started none of its own.
    assert "using KOMPRESSOR_BROKER__URL" in out and "using KOMPRESSOR_STORAGE__ENDPOINT_URL" in out
    assert "python -m testbed" not in out
    assert "$ kompressor run " in out
    assert (
        out.rstrip().splitlines()[-1].startswith("Done in ") and "contact-sheet.png" in out.splitlines()[-1]
    )

    # The per-image table: one row per photo, bytes before → after, % saved, dimensions.
    report = out.split("4/5", 1)[1].split("5/5", 1)[0]
    size = r"[\d.]+ (?:B|KiB|MiB)"
    for name in photos:
        row = rf"^{re.escape(name)} +{size} → +{size} +\d+% +\d+×\d+ → \d+×\d+$"
        assert re.search(row, report, re.M), f"no table row for {name}:\n{report}"
    assert re.search(rf"^total \({len(photos)} images\) +{size} → +{size} +\d+%", report, re.M), report

    # The manifest: one line per photo, each compressed.
    lines = [
        json.loads(line) for line in (output / "manifest.jsonl").read_text().splitlines() if line.strip()
    ]
    assert sorted(line["source"].rsplit("/", 1)[1] for line in lines) == sorted(photos)
    assert {line["outcome"] for line in lines} == {"done"}

    # Every output in S3 is a WebP inside 1280×1280, no larger than needed, and copied locally.
    client = s3.client()
    for line in lines:
        bucket, _, key = line["dest"].removeprefix("s3://").partition("/")
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert len(body) == line["bytesOut"] < line["bytesIn"]
        with Image.open(io.BytesIO(body)) as image:
            image.load()
            assert image.format == "WEBP"
            assert image.width <= 1280 and image.height <= 1280
        assert (output / "compressed" / Path(key).name).read_bytes() == body

    # The renditions job: index.json lists the first photos, each with its whole set, stored in S3.
    featured = sorted(photos)[0]
    index = json.loads((output / "index.json").read_text())["sources"]
    assert sorted(name.rsplit("/", 1)[1] for name in index) == sorted(photos)[:RENDITION_PHOTOS]
    source = next(name for name in index if name.endswith("/" + featured))
    for sets in index.values():
        assert {(o["format"].upper(), o["width"]) for o in sets["web"]} == {
            (f, w) for f in FORMATS for w in WIDTHS
        }
    # The featured source's set is copied locally, each file the format and width the index says.
    for item in index[source]["web"]:
        body = (output / "renditions" / Path(item["key"]).name).read_bytes()
        assert body == client.get_object(Bucket="demo-web", Key=item["key"])["Body"].read()
        assert len(body) == item["bytes"]
        with Image.open(io.BytesIO(body)) as image:
            assert (image.format, image.width) == (item["format"].upper(), item["width"])
        assert re.search(rf"^  {item['format'].upper()} {item['width']}w +{size} ", out, re.M), out
    # ... and `kompressor srcset` printed its <picture>: AVIF and WebP sources, the JPEG as <img>.
    srcset = out.split("$ kompressor srcset ", 1)[1]
    picture = srcset[srcset.index("<picture>") : srcset.index("</picture>")]
    assert picture.count('<source type="image/avif"') == picture.count('<source type="image/webp"') == 1
    assert re.search(r'<img src="[^"]+-web-480w\.jpg" srcset="[^"]+ 480w, [^"]+ 240w"', picture), picture

    # The contact sheet: a PNG big enough to hold a before/after pair of thumbnails per photo, and
    # below that grid (4 pairs a row, as scripts/demo.py draws it) one source beside its 6 renditions.
    with Image.open(output / "contact-sheet.png") as sheet:
        sheet.load()
        assert sheet.format == "PNG"
        assert sheet.width >= 1000
        assert sheet.width * sheet.height >= len(photos) * 2 * 200 * 150
        grid = 70 + -(-len(photos) // 4) * (165 + 52 + 26) + 26
        band = sheet.convert("RGB").crop((0, grid, sheet.width, sheet.height))
        drawn = ImageChops.difference(band, Image.new("RGB", band.size, "white")).getbbox()
        assert drawn is not None and drawn[2] - drawn[0] >= 7 * 220 and drawn[3] - drawn[1] >= 165
    assert "kind: CompressionJob" in (output / "job.yaml").read_text()
    assert "renditions:" in (output / "renditions.yaml").read_text()
