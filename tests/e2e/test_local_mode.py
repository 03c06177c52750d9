"""`kompressor run` end to end on the real broker and store: counts exact, errors one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import RabbitMQ, S3Server
from testbed.process import free_port, wait_until
from tests.corpus import awkward_inputs, real_photos
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
    run = start_kompressor_run(_job(bucket), tmp_path, _env(rabbitmq, s3))
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
    assert expected in err and "Traceback" not in err


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
