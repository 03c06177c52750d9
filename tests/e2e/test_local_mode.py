"""`kompressor run` end to end on the real broker and store: counts exact, errors one line."""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from testbed import RabbitMQ, S3Server
from testbed.process import free_port, wait_until
from tests.chaos.tools import S3Faults
from tests.corpus import awkward_inputs, never_larger_table, opt_in_inputs, real_photos
from tests.jobs import descendants, start_kompressor_run, upload


def _job(bucket: str, **spec) -> dict:
    base = {
        "source": {"s3": {"bucket": bucket, "prefix": "in/", "include": ["*"]}},
        "destination": {"s3": {"bucket": bucket, "prefix": "out/"}},
        "output": {"format": "webp", "quality": 75, "resize": {"maxWidth": 800, "maxHeight": 800}},
        "workers": {
            "maxReplicas": 2,
            "tasksPerReplica": 10,
            "processesPerPod": 1,
            "scaleDownDelaySeconds": 2,
        },
    }
    return {
        "apiVersion": "kompressor.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "e2e"},
        "spec": base | spec,
    }


def _env(rabbitmq: RabbitMQ, s3: S3Server, **extra: str) -> dict[str, str]:
    return {**os.environ, "KOMPRESSOR_BROKER__URL": rabbitmq.url, **s3.env(), **extra}


def _manifest(s3: S3Server, url: str) -> list[dict]:
    bucket, key = url.removeprefix("s3://").split("/", 1)
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


def test_photos_and_awkward_inputs_counted_exactly(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    photos = real_photos(limit=12, max_side=1200)
    awkward = {f"{Path(n).stem}-{Path(n).suffix[1:]}{Path(n).suffix}": v for n, v in awkward_inputs().items()}
    upload(s3, bucket, photos | {name: body for name, (body, _) in awkward.items()})
    # neverLarger off: a bilevel PNG makes no smaller WebP (not_smaller has its own test).
    output = {"format": "webp", "quality": 75, "resize": {"maxWidth": 800, "maxHeight": 800}}
    output["neverLarger"] = False
    run = start_kompressor_run(_job(bucket, output=output), tmp_path, _env(rabbitmq, s3))
    out, err = run.communicate(timeout=240)
    failures = sum(1 for _, reason in awkward.values() if reason)
    # More than 1% of the inputs fail, so the job is Failed (exit 1) — with every input accounted.
    assert run.returncode == 1, err
    status = json.loads(out)
    total = len(photos) + len(awkward)
    assert (status["phase"], status["total"]) == ("Failed", total)
    assert (status["succeeded"], status["failed"], status["skipped"]) == (total - failures, failures, 0)
    assert status["failuresByReason"] == {
        reason: sum(1 for _, r in awkward.values() if r == reason) for _, reason in awkward.values() if reason
    }
    lines = _manifest(s3, status["manifest"])
    assert sorted(line["id"] for line in lines) == list(range(total))
    assert status["workers"]["ready"] == 0


def test_rerun_skips_what_exists_and_a_killed_worker_loses_nothing(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    photos = real_photos(limit=24, max_side=1600)
    upload(s3, bucket, photos)
    job = _job(bucket, output={"format": "avif", "quality": 50})
    run = start_kompressor_run(job, tmp_path, _env(rabbitmq, s3))

    def a_worker_is_busy() -> bool:
        return any(_is_worker(pid) for pid in descendants(run.pid))

    wait_until(a_worker_is_busy, 60, "a worker process")
    victim = next(pid for pid in descendants(run.pid) if _is_worker(pid))
    os.killpg(victim, signal.SIGKILL)  # the worker and its pool, as an OOM kill would
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    status = json.loads(out)
    assert (status["phase"], status["total"], status["succeeded"]) == ("Succeeded", 24, 24)
    assert len(_manifest(s3, status["manifest"])) == 24

    again = start_kompressor_run(job, tmp_path, _env(rabbitmq, s3))
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    status = json.loads(out)
    assert (status["skipped"], status["succeeded"]) == (24, 0)


def test_a_url_manifest_csv_in_s3_runs_end_to_end(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    photos = real_photos(limit=5, max_side=640)
    served = tmp_path / "served"
    served.mkdir()
    for name, body in photos.items():
        (served / name).write_bytes(body)
    # 127.0.0.2: a loopback address the run allow-lists (a URL input may not reach loopback otherwise).
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.2", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    urls = [f"http://127.0.0.2:{server.server_port}/{name}" for name in photos]
    csv = "sku,URL,title\n" + "".join(f'{i},{url},"photo, {i}"\n' for i, url in enumerate(urls))
    s3.client().put_object(Bucket=bucket, Key="lists/urls.csv", Body=("\ufeff" + csv).encode())  # with a BOM
    job = _job(bucket, source={"urls": {"manifest": {"bucket": bucket, "key": "lists/urls.csv"}}})
    env = _env(rabbitmq, s3, KOMPRESSOR_URL_ALLOW_NETWORKS='["127.0.0.2/32"]')
    try:
        run = start_kompressor_run(job, tmp_path, env)
        out, err = run.communicate(timeout=180)
    finally:
        server.shutdown()
    assert run.returncode == 0, err
    status = json.loads(out)
    assert (status["phase"], status["total"], status["succeeded"], status["failed"]) == ("Succeeded", 5, 5, 0)
    lines = _manifest(s3, status["manifest"])
    assert sorted(line["source"] for line in lines) == sorted(urls)
    for line in lines:
        key = line["dest"].removeprefix(f"s3://{bucket}/")
        assert key.startswith("out/127.0.0.2") and key.endswith(".webp"), key
        assert s3.client().head_object(Bucket=bucket, Key=key)["ContentLength"] == line["bytesOut"]


def test_a_store_that_keeps_refusing_the_ledger_ends_the_run_with_one_line(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    upload(s3, bucket, real_photos(limit=2, max_side=400))
    faults = S3Faults(s3.port, refuse=lambda method, path: method == "PUT" and "/ledger/" in path).start()
    faults.failing.set()
    job = _job(bucket, storage={"endpointURL": faults.url})
    try:
        run = start_kompressor_run(job, tmp_path, _env(rabbitmq, s3, KOMPRESSOR_STORAGE__MAX_ATTEMPTS="1"))
        out, err = run.communicate(timeout=180)
    finally:
        faults.stop()
    assert run.returncode == 2, (out, err)
    *retries, last = err.strip().splitlines()
    assert "Traceback" not in err and all(
        line.startswith("job local/e2e: step failed") for line in retries
    ), err
    assert last.startswith("kompressor: storage kept failing for 30s: ClientError"), err
    assert "InternalError" in last and "PutObject" in last, err


def _is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kompressor-worker" in cmdline and os.getpgid(pid) == pid


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("broker_down", "cannot reach RabbitMQ"),
        ("wrong_credentials", "S3 refused the credentials"),
        ("bucket_missing", "does not exist"),
        ("invalid_yaml", "is not valid YAML at line"),
        ("unknown_field", "spec.output.colour: unknown field"),
        ("overlapping_prefixes", "spec.destination"),
        ("input_format_beyond_the_installation", "heif not allowed by this installation"),
        ("manifest_not_urls", "urls.csv: 2 line(s) are not http(s) URLs, first: 'ftp://"),
        ("manifest_not_utf8", "urls.csv: 'utf-8' codec can't decode"),
        ("manifest_missing", "URL manifest s3://{bucket}/urls.csv does not exist"),
    ],
)
def test_configuration_errors_are_one_line_naming_the_fix(
    case: str, expected: str, rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    env, job = _env(rabbitmq, s3), _job(bucket)
    if case == "broker_down":
        env["KOMPRESSOR_BROKER__URL"] = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    elif case == "wrong_credentials":
        env["KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY"] = "not-the-secret"
    elif case == "bucket_missing":
        job["spec"]["source"]["s3"]["bucket"] = "no-such-bucket"
    elif case == "unknown_field":
        job["spec"]["output"]["colour"] = "red"
    elif case == "overlapping_prefixes":
        job["spec"]["destination"]["s3"]["prefix"] = "in/out/"
    elif case == "input_format_beyond_the_installation":
        job["spec"]["limits"] = {"inputFormats": ["jpeg", "heif"]}  # KOMPRESSOR_ALLOWED_INPUT_FORMATS unset
    elif case.startswith("manifest"):
        job["spec"]["source"] = {"urls": {"manifest": {"bucket": bucket, "key": "urls.csv"}}}
        body = {
            "manifest_not_urls": b"id,url\n1,https://images.example/a.jpg\n2,ftp://x/b.jpg\n3,c.jpg\n",
            "manifest_not_utf8": b"url\nhttps://images.example/\xff\xfe.jpg\n",
        }.get(case)
        if body is not None:
            s3.client().put_object(Bucket=bucket, Key="urls.csv", Body=body)
    run = start_kompressor_run(job, tmp_path, env)
    if case == "invalid_yaml":
        (tmp_path / "job.yaml").write_text("spec: [unclosed\n")
        run.wait(30)
        run = subprocess.Popen(
            [sys.executable, "-m", "kompressor_operator.cli", "run", str(tmp_path / "job.yaml")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    out, err = run.communicate(timeout=60)
    assert run.returncode == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert expected.format(bucket=bucket) in err and "Traceback" not in err


def test_never_larger_stores_smaller_outputs_the_original_or_nothing(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    """Issue 18 end to end, worker and S3 real: with neverLarger no stored object is larger than
    its input, and the manifest says which of the three it was."""
    palette = never_larger_table()["palette-transparent-400x300.png"]  # its JPEG is ~3x larger
    low = io.BytesIO()
    Image.open(io.BytesIO(real_photos(max_side=200)["building.jpg"])).save(low, "JPEG", quality=20)
    photo = io.BytesIO()
    Image.open(io.BytesIO(real_photos(max_side=400)["baboon.jpg"])).save(photo, "PNG")
    inputs = {"palette.png": palette, "low.jpg": low.getvalue(), "photo.png": photo.getvalue()}
    upload(s3, bucket, inputs)
    job = _job(bucket, output={"format": "jpeg", "quality": 90, "neverLarger": True})
    run = start_kompressor_run(job, tmp_path, _env(rabbitmq, s3))
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    status = json.loads(out)
    assert (status["succeeded"], status["skipped"], status["failed"]) == (2, 1, 0)
    lines = {line["source"].rsplit("/", 1)[1]: line for line in _manifest(s3, status["manifest"])}
    client = s3.client()

    def stored(key: str) -> tuple[int, str]:
        head = client.head_object(Bucket=bucket, Key=key)
        return head["ContentLength"], head["ContentType"]

    skipped = lines["palette.png"]
    assert (skipped["outcome"], skipped["reason"], skipped["dest"]) == ("skipped", "not_smaller", "")
    assert skipped["bytesIn"] == len(palette) and "the input is png, not jpeg" in skipped["message"]
    with pytest.raises(client.exceptions.ClientError):
        client.head_object(Bucket=bucket, Key="out/palette.jpg")

    original = lines["low.jpg"]
    assert (original["outcome"], original["dest"], original.get("storedOriginal")) == (
        "done",
        f"s3://{bucket}/out/low.jpg",
        True,
    )
    assert stored("out/low.jpg") == (len(inputs["low.jpg"]), "image/jpeg")
    assert original["bytesOut"] == original["bytesIn"] == len(inputs["low.jpg"])
    assert client.get_object(Bucket=bucket, Key="out/low.jpg")["Body"].read() == inputs["low.jpg"]

    smaller = lines["photo.png"]
    assert (smaller["outcome"], smaller["dest"], "storedOriginal" in smaller) == (
        "done",
        f"s3://{bucket}/out/photo.jpg",
        False,
    )
    size, content_type = stored("out/photo.jpg")
    assert size == smaller["bytesOut"] < len(inputs["photo.png"]) and content_type == "image/jpeg"


def test_opt_in_input_formats_through_the_installation_and_the_job(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    """The installation allows BMP and HEIF, the job chooses BMP: the BMP is compressed by a real
    worker, the HEIC fails naming the job's setting, the photo (web set) is not accepted either."""
    inputs = opt_in_inputs()
    upload(s3, bucket, {"a.bmp": inputs["image.bmp"][0], "b.heic": inputs["image.heic"][0]})
    upload(s3, bucket, {"c.jpg": real_photos(limit=1, max_side=200)["aero1.jpg"]})
    job = _job(bucket, limits={"inputFormats": ["bmp"]})
    env = _env(rabbitmq, s3, KOMPRESSOR_ALLOWED_INPUT_FORMATS='["jpeg", "bmp", "heif"]')
    run = start_kompressor_run(job, tmp_path, env)
    out, err = run.communicate(timeout=120)
    status = json.loads(out)
    assert (status["succeeded"], status["failed"]) == (1, 2), err
    lines = {line["source"].rsplit("/", 1)[1]: line for line in _manifest(s3, status["manifest"])}
    assert (lines["a.bmp"]["outcome"], lines["a.bmp"]["dest"]) == ("done", f"s3://{bucket}/out/a.webp")
    for name, fmt in (("b.heic", "heif"), ("c.jpg", "jpeg")):
        assert (lines[name]["outcome"], lines[name]["reason"]) == ("failed", "unsupported_format")
        assert f"add {fmt} to spec.limits.inputFormats" in lines[name]["message"]


def test_a_dry_run_lists_and_estimates_and_leaves_nothing_behind(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    photos = real_photos(limit=6, max_side=600)
    upload(s3, bucket, photos)
    job = _job(bucket)
    job["metadata"]["name"] = "dry-run-check"
    before = rabbitmq.ctl("list_queues", "-q", "name")
    run = start_kompressor_run(job, tmp_path, _env(rabbitmq, s3), "--dry-run")
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    plan = json.loads(out)
    assert plan["inputs"] == len(photos)
    assert plan["bytes"] == sum(len(body) for body in photos.values())
    assert plan["estimatedSeconds"] > 0 and plan["processes"] >= 1
    assert plan["first"][0]["dest"].startswith(f"s3://{bucket}/out/") and plan["first"][0]["dest"].endswith(
        ".webp"
    )
    # Nothing was published or written: no queue of the job, nothing under the destination.
    assert ".dry-run-check." not in rabbitmq.ctl("list_queues", "-q", "name")
    assert rabbitmq.ctl("list_queues", "-q", "name") == before
    assert s3.client().list_objects_v2(Bucket=bucket, Prefix="out/").get("KeyCount") == 0
    assert not (tmp_path / "logs").exists(), "a worker was started"
    # Without --json, a person reads the same.
    text = subprocess.run(
        [sys.executable, "-m", "kompressor_operator.cli", "run", "--dry-run", str(tmp_path / "job.yaml")],
        env=_env(rabbitmq, s3),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0, text.stderr
    assert f"inputs: {len(photos)}," in text.stdout and "estimate: ~" in text.stdout
    assert "nothing published or written" in text.stdout


def test_version():
    import tomllib

    version = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"][
        "version"
    ]
    result = subprocess.run(
        [sys.executable, "-m", "kompressor_operator.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stdout.strip()) == (0, f"kompressor {version}")
