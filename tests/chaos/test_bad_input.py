"""Bad input at every door but the CR spec (see test_operator_chaos.py for that one): task messages
published straight into a job's queue, URL sources that lead to refused addresses, object keys that
make bad or over-long output keys, and image bytes fuzzed in a separate process (so a crash or a
hang is seen as one, not as a dead test run)."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pebble
import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kompressor.crd import Format, InputFormat, Limits, Output, Resize
from kompressor.messages import SourceObject, task_queue
from kompressor_operator.engine import JobEngine
from kompressor_operator.planning import plan_task
from kompressor_worker import codec
from kompressor_worker.codec import CodecError, Compressed, compress
from kompressor_worker.never_larger import NotSmaller
from testbed import RabbitMQ, S3Server
from tests.chaos.tools import photo_inputs, read_logs, upload_parallel, wait_for, worker_crashes
from tests.corpus import opt_in_inputs, real_photos
from tests.jobs import job_spec, new_job, start_kompressor_run, workers

# --- task messages ----------------------------------------------------------------------------------


def _bad_messages(valid: bytes) -> dict[str, bytes]:
    task = json.loads(valid)
    return {
        "empty body": b"",
        "not JSON": b"compress everything please",
        "not UTF-8": b"\xff\xfe\x00\x81garbage",
        "JSON array": b"[1, 2, 3]",
        "JSON null": b"null",
        "unknown schema version": json.dumps({**task, "v": 2}).encode(),
        "no schema version": json.dumps({k: v for k, v in task.items() if k != "v"}).encode(),
        "missing fields": b'{"v": 1}',
        "extra field": json.dumps({**task, "shell": "rm -rf /"}).encode(),
        "negative id": json.dumps({**task, "id": -1}).encode(),
        "wrong types": json.dumps({**task, "id": "seven", "limits": "none"}).encode(),
        "deeply nested": b"[" * 100_000,
        "1 MiB of noise": os.urandom(2**20),
    }


def test_malformed_task_messages_are_dead_lettered_and_the_worker_keeps_going(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path, chaos_report, caplog
):
    total = 24
    upload_parallel(s3, bucket, photo_inputs(total))
    job = new_job("badmsg")
    spec = job_spec(bucket, output={"format": "webp", "quality": 70})
    engine = JobEngine(job, spec, rabbitmq.url, s3.client()).open()
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    channel = connection.channel()
    channel.confirm_delivery()
    caplog.set_level(logging.WARNING, logger="kompressor.engine")
    procs = workers(rabbitmq, s3, job, tmp_path / "logs", KOMPRESSOR_PROCESSES="1", KOMPRESSOR_PREFETCH="1")
    try:
        template = plan_task(job, spec, 0, SourceObject(bucket=bucket, key="in/template.jpg"))
        bad = _bad_messages(template.encode())
        # Queued as: half of them, the real tasks, the other half.
        names = list(bad)
        for name in names[: len(names) // 2]:
            channel.basic_publish("", task_queue(job), bad[name], pika.BasicProperties(delivery_mode=2))
        engine.step()  # publishes the real tasks
        for name in names[len(names) // 2 :]:
            channel.basic_publish("", task_queue(job), bad[name], pika.BasicProperties(delivery_mode=2))
        worker = procs.start_one()

        def dropped() -> int:
            return sum("undecodable dead letter" in record.getMessage() for record in caplog.records)

        def settled() -> bool:
            assert worker.alive(), "the worker died"
            return engine.step().finished and dropped() >= len(bad)

        wait_for(settled, 90, f"every task done and {len(bad)} dead letters dropped")
        assert worker.alive() and procs.started_total == 1
    finally:
        procs.stop_all(timeout=20)
        connection.close()
        engine.delete_queues()
        engine.close()
    counts = engine.counts()
    logs = read_logs(tmp_path / "logs")
    rejected = sum(text.count("rejecting an undecodable task") for text in logs.values())
    crashed = worker_crashes(logs, set())
    chaos_report.add(
        "bad task messages", bad_inputs=len(bad), lost=total - counts.succeeded, crashes=len(crashed)
    )
    chaos_report.note(
        f"task messages: {len(bad)} bad ones ({', '.join(bad)}) among {total} tasks: {rejected} rejected "
        f"by the worker into the dead-letter queue, {dropped()} dropped there by the engine; "
        f"{counts.succeeded}/{total} real tasks done, one worker process throughout"
    )
    assert (counts.total, counts.succeeded, counts.failed) == (total, total, 0)
    assert rejected == len(bad) and dropped() == len(bad)
    assert not crashed, crashed


# --- URL sources and the output keys they make -------------------------------------------------------


class _Server:
    """An HTTP server on one loopback address: serves a JPEG at every path, redirects /to/<n> to
    `redirects[n]`, and keeps the paths it was asked for."""

    def __init__(self, host: str, image: bytes, redirects: list[str] | None = None):
        server = self
        self.paths: list[str] = []
        self.redirects = redirects or []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.paths.append(self.path)
                if self.path.startswith("/to/"):
                    self.send_response(302)
                    self.send_header("Location", server.redirects[int(self.path.removeprefix("/to/"))])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                self.wfile.write(image)

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.http.server_port
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.http.shutdown()


def _run_local(job: dict, tmp_path: Path, env: dict[str, str], timeout: float = 120) -> tuple[int, dict, str]:
    run = start_kompressor_run(job, tmp_path, env)
    try:
        out, err = run.communicate(timeout=timeout)
    finally:
        run.kill()
    return run.returncode, json.loads(out) if out.strip() else {}, err


def _manifest(s3: S3Server, url: str) -> dict[str, dict]:
    bucket, key = url.removeprefix("s3://").split("/", 1)
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return {line["source"]: line for line in map(json.loads, body.splitlines())}


def test_url_sources_that_lead_to_refused_addresses_fail_forbidden_address(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path, chaos_report
):
    image = next(iter(real_photos(max_side=160).values()))
    target = _Server("127.0.0.1", image)  # what an attacker would like to reach: loopback
    t = target.port
    # An origin the test allow-lists (127.0.0.2/32), so that redirects have somewhere to start.
    origin = _Server(
        "127.0.0.2",
        image,
        redirects=[
            f"http://127.0.0.1:{t}/via-redirect.jpg",
            "http://169.254.169.254/latest/meta-data/iam.jpg",
            f"http://localhost:{t}/via-redirect-name.jpg",
            f"http://[::ffff:127.0.0.1]:{t}/via-redirect-mapped.jpg",
        ],
    )
    o = origin.port
    forbidden = [
        f"http://127.0.0.1:{t}/loopback.jpg",
        f"http://localhost:{t}/name-to-loopback.jpg",
        f"http://[::1]:{t}/ipv6-loopback.jpg",
        f"http://[::ffff:127.0.0.1]:{t}/ipv4-mapped.jpg",
        f"http://[::ffff:7f00:1]:{t}/ipv4-mapped-hex.jpg",
        f"http://0x7f.1:{t}/hex-spelling.jpg",
        f"http://2130706433:{t}/decimal-spelling.jpg",
        f"http://127.1:{t}/short-spelling.jpg",
        "http://169.254.169.254/latest/meta-data/metadata.jpg",
        "http://[fd00:ec2::254]/latest/aws-ipv6-metadata.jpg",
        "http://[64:ff9b::a9fe:a9fe]/nat64-metadata.jpg",
        "http://10.1.2.3/private-10.jpg",
        "http://172.16.0.1/private-172.jpg",
        "http://192.168.1.1/private-192.jpg",
        "http://100.100.100.200/cgnat-metadata.jpg",
        "http://0.0.0.0:80/unspecified.jpg",
        "http://[fe80::1]/link-local.jpg",
        "https://[::1]/https-loopback.jpg",
        *(f"http://127.0.0.2:{o}/to/{n}" for n in range(4)),
    ]
    bad_keys = [
        f"http://127.0.0.2:{o}/a/../../../etc/dot-dot.jpg",
        f"http://127.0.0.2:{o}/./dot.jpg",
        f"http://127.0.0.2:{o}/a//empty-segment.jpg",
    ]
    control = f"http://127.0.0.2:{o}/fine.jpg"
    job = {
        "apiVersion": "kompressor.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "ssrf"},
        "spec": {
            "source": {"urls": {"items": [*forbidden, *bad_keys, control]}},
            "destination": {"s3": {"bucket": bucket, "prefix": "out/"}},
            "output": {"format": "webp", "quality": 70},
            "limits": {"taskTimeoutSeconds": 20},
            "workers": {"maxReplicas": 1, "processesPerPod": 1},
        },
    }
    env = {
        **os.environ,
        "KOMPRESSOR_BROKER__URL": rabbitmq.url,
        **s3.env(),
        "KOMPRESSOR_URL_ALLOW_NETWORKS": '["127.0.0.2/32"]',
    }
    try:
        code, status, err = _run_local(job, tmp_path, env)
    finally:
        target.stop()
        origin.stop()
    assert code == 1, err  # Failed: more than 1% of the inputs failed
    lines = _manifest(s3, status["manifest"])
    outcomes = {url: (lines[url]["outcome"], lines[url]["reason"]) for url in lines}
    wrong = {
        url: outcomes.get(url) for url in forbidden if outcomes.get(url) != ("failed", "forbidden_address")
    }
    wrong |= {url: outcomes.get(url) for url in bad_keys if outcomes.get(url) != ("failed", "invalid_key")}
    if outcomes.get(control) != ("done", ""):
        wrong[control] = outcomes.get(control)
    crashed = worker_crashes(read_logs(tmp_path / "logs"), set())
    chaos_report.add(
        "URL sources, URL-made keys", bad_inputs=len(forbidden) + len(bad_keys), crashes=len(crashed)
    )
    chaos_report.note(
        f"URL sources: {len(forbidden)} URLs to loopback, private, link-local, metadata, IPv6 and odd "
        f"IPv4 spellings, names and redirects to them: all failed forbidden_address, the loopback target "
        f"got {len(target.paths)} requests; {len(bad_keys)} URLs whose output key has '..', '.' or an "
        f"empty segment: invalid_key; the allow-listed control URL: done"
    )
    assert not wrong, wrong
    assert target.paths == [], target.paths
    assert not any("/etc/" in p or "dot.jpg" in p or "empty-segment" in p for p in origin.paths), origin.paths
    assert sorted(origin.paths) == sorted(["/fine.jpg", *(f"/to/{n}" for n in range(4))])
    assert not crashed, crashed


def test_over_long_keys_get_a_hashed_output_key_within_1024_bytes(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path, chaos_report
):
    photo = next(iter(real_photos(max_side=160).values()))
    keys = {
        "ascii": "in/" + "/".join(["d" * 200] * 4) + "/" + "x" * 190 + ".jpg",  # 998 bytes
        "multibyte": "in/" + "/".join(["ü" * 100] * 4) + "/" + "é" * 90 + ".jpg",  # 990 bytes
        "short": "in/short.jpg",
    }
    for key in keys.values():
        s3.client().put_object(Bucket=bucket, Key=key, Body=photo)
    prefix = "out/" + "p" * 150 + "/"
    job = {
        "apiVersion": "kompressor.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "longkeys"},
        "spec": {
            "source": {"s3": {"bucket": bucket, "prefix": "in/"}},
            "destination": {"s3": {"bucket": bucket, "prefix": prefix}},
            "output": {"format": "webp", "quality": 70},
            "workers": {"maxReplicas": 1, "processesPerPod": 1},
        },
    }
    env = {**os.environ, "KOMPRESSOR_BROKER__URL": rabbitmq.url, **s3.env()}
    code, status, err = _run_local(job, tmp_path, env)
    assert code == 0, err
    lines = _manifest(s3, status["manifest"])
    dests = {
        name: lines[f"s3://{bucket}/{key}"]["dest"].removeprefix(f"s3://{bucket}/")
        for name, key in keys.items()
    }
    chaos_report.add("over-long object keys", bad_inputs=2, crashes=0)
    for name in ("ascii", "multibyte"):
        dest = dests[name]
        assert len(dest.encode()) <= 1024 and dest.startswith(prefix) and dest.endswith(".webp"), dest
        assert len(dest.removeprefix(prefix)) == len("0123456789abcdef.webp"), dest  # hashed
        head = s3.client().head_object(Bucket=bucket, Key=dest)
        assert head["ContentLength"] > 0
    assert dests["short"] == prefix + "short.webp"


# --- image bytes ------------------------------------------------------------------------------------

FUZZ_EXAMPLES = 800  # 400 before the opt-in formats' 8 seeds and 6 magic numbers; ~10 s here
FUZZ_TIMEOUT = 20.0
# Every input format a job can accept is fuzzed: the installation allows them all, the job too.
EVERY_INPUT_FORMAT = tuple(InputFormat)
FUZZ_LIMITS = Limits(max_pixels=4_000_000, input_formats=list(EVERY_INPUT_FORMAT))
FUZZ_BUDGET = 256 * 2**20


def _seeds() -> dict[str, bytes]:
    photos = real_photos(max_side=200)
    seeds = {}
    for i, (name, data) in enumerate(list(photos.items())[:3]):
        seeds[f"jpeg-{name}"] = data
        with Image.open(io.BytesIO(data)) as image:
            for fmt in ("PNG", "WEBP"):
                buffer = io.BytesIO()
                rgba = image.convert("RGBA") if i == 0 else image
                rgba.save(buffer, fmt, **({"quality": 80} if fmt == "WEBP" else {}))
                seeds[f"{fmt.lower()}-{name}"] = buffer.getvalue()
    # One seed per opt-in format (BMP, TGA, ICO, PPM, PGM, JPEG 2000, layered PSD, HEIC).
    seeds |= {f"opt-in-{name}": data for name, (data, _) in opt_in_inputs().items()}
    return seeds


SEEDS = _seeds()
MAGIC = [
    b"\xff\xd8\xff\xe0",
    b"\x89PNG\r\n\x1a\n",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    b"GIF89a",
    b"II*\x00",
    b"BM",
    b"\x00\x00\x01\x00\x01\x00",  # ICO
    b"P6\n64 48\n255\n",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",  # JPEG 2000
    b"8BPS\x00\x01",
    b"\x00\x00\x00\x18ftypheic",
]


def _mutate(seed: str, edits: list[tuple]) -> bytes:
    data = bytearray(SEEDS[seed])
    for edit in edits:
        kind, where = edit[0], int(edit[1] * len(data)) if isinstance(edit[1], float) else edit[1]
        if not data:
            break
        where = min(where, len(data) - 1)
        if kind == "set":
            data[where] = edit[2]
        elif kind == "header":
            data[min(edit[1], len(data) - 1)] = edit[2]
        elif kind == "cut":
            del data[max(1, where) :]
        elif kind == "insert":
            data[where:where] = edit[2]
        elif kind == "repeat":
            end = min(len(data), where + 1 + int(edit[2] * 4096))
            data[where:where] = data[where:end]
    return bytes(data)


EDITS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
        st.tuples(st.just("header"), st.integers(0, 63), st.integers(0, 255)),
        st.tuples(st.just("cut"), st.floats(0.01, 1, exclude_max=True)),
        st.tuples(st.just("insert"), st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("repeat"), st.floats(0, 1, exclude_max=True), st.floats(0, 1)),
    ),
    min_size=1,
    max_size=6,
)
IMAGE_BYTES = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda magic, tail: magic + tail, st.sampled_from(MAGIC), st.binary(max_size=2048)),
    st.builds(_mutate, st.sampled_from(sorted(SEEDS)), EDITS),
)


@pytest.fixture(scope="module")
def codec_pool() -> Iterator[pebble.ProcessPool]:
    pool = pebble.ProcessPool(max_workers=2, context=multiprocessing.get_context("forkserver"))
    yield pool
    pool.stop()
    pool.join(timeout=10)


def _compress_checked(data: bytes, output: Output) -> tuple[str, str]:
    """In the pool child: ("ok", format) for an output that decodes, ("error", reason) for a CodecError."""
    try:
        result = compress(data, output, FUZZ_LIMITS, FUZZ_BUDGET, EVERY_INPUT_FORMAT)
    except CodecError as error:
        return "error", error.reason
    except NotSmaller as skipped:  # neverLarger stored nothing: a clean outcome too
        return "skipped", skipped.reason
    assert isinstance(result, Compressed) and result.data
    with Image.open(io.BytesIO(result.data)) as image:
        image.load()
    return "ok", result.format


def test_fuzzed_image_bytes_end_in_clean_codec_errors_without_crash_or_hang(codec_pool, chaos_report):
    seen: Counter[str] = Counter()
    crashes, hangs, others = [], [], []
    started = time.monotonic()

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        data=IMAGE_BYTES,
        fmt=st.sampled_from([Format.webp, Format.jpeg, Format.png, Format.keep]),
        side=st.none() | st.integers(1, 300),
    )
    def fuzz(data: bytes, fmt: Format, side: int | None) -> None:
        output = Output(format=fmt, quality=70, resize=Resize(max_width=side, max_height=side))
        future = codec_pool.schedule(_compress_checked, args=(data, output), timeout=FUZZ_TIMEOUT)
        try:
            outcome, detail = future.result()
        except pebble.ProcessExpired as exc:
            crashes.append((data[:64], exc.exitcode))
            return
        except FutureTimeout:
            hangs.append(data[:64])
            return
        except (
            Exception
        ) as exc:  # anything but a CodecError escaping compress, or an output that does not decode
            others.append(f"{type(exc).__name__}: {exc}")
            return
        seen[f"{outcome}:{detail}"] += 1
        if outcome == "error":
            assert detail in codec.REASONS, detail

    fuzz()
    seconds = time.monotonic() - started
    examples = sum(seen.values()) + len(crashes) + len(hangs) + len(others)
    chaos_report.add(
        "fuzzed image bytes", bad_inputs=examples, crashes=len(crashes) + len(hangs), seconds=round(seconds)
    )
    chaos_report.note(
        f"codec fuzz: {examples} random, magic-prefixed and mutated JPEG/PNG/WebP and opt-in format "
        f"(BMP/TGA/ICO/PNM/JPEG 2000/PSD/HEIC) inputs in a pool process "
        f"({FUZZ_TIMEOUT:.0f}s timeout each): {dict(sorted(seen.items()))}; {len(crashes)} crashes, "
        f"{len(hangs)} hangs, {len(others)} other exceptions"
    )
    assert not crashes and not hangs and not others, (crashes[:3], hangs[:3], others[:3])


def test_the_fuzz_harness_sees_a_crash_and_a_hang(codec_pool):
    """The pool reports a dead child and a timeout as such: the fuzz's zeros mean something."""
    crash = codec_pool.schedule(os.abort)
    with pytest.raises(pebble.ProcessExpired):
        crash.result()
    hang = codec_pool.schedule(time.sleep, args=(30,), timeout=1)
    with pytest.raises(FutureTimeout):
        hang.result()
    wait_for(lambda: codec_pool.active, 10, "the pool")
