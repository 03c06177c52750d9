"""The worker on the real broker and store: every task ends exactly once, whatever is killed."""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

from kompressor.messages import Outcome, SourceObject
from kompressor_operator.planning import plan_task
from kompressor_worker.storage import OutputChanged, existing_output, output_metadata, write_output
from testbed import RabbitMQ, S3Server
from testbed.process import wait_until
from tests.corpus import awkward_inputs, real_photos
from tests.jobs import collect_results, descendants, job_spec, new_job, publish_job, upload, workers


def _decoded(s3: S3Server, bucket: str, key: str) -> Image.Image:
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def test_photos_and_awkward_inputs_all_end_with_the_right_outcome(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    photos = real_photos(limit=8, max_side=1200)
    # Distinct stems: image.tiff and image.bmp would both become image.webp (see the collision test).
    awkward = {f"{Path(n).stem}-{Path(n).suffix[1:]}{Path(n).suffix}": v for n, v in awkward_inputs().items()}
    upload(s3, bucket, photos | {name: body for name, (body, _) in awkward.items()})
    # neverLarger off: these tiny inputs test decoding, and the rule has its own tests (a bilevel
    # PNG makes no smaller WebP, so it would be skipped as not_smaller).
    job, spec = new_job("mixed"), job_spec(bucket, output={"neverLarger": False})
    total = publish_job(rabbitmq, s3, job, spec)
    assert total == len(photos) + len(awkward)

    pool = workers(rabbitmq, s3, job, tmp_path)
    worker = pool.start_one()
    try:
        results = collect_results(rabbitmq, job, total, timeout=120).final()
        assert worker.alive(), "the worker crashed"
    finally:
        pool.stop_all()
    assert worker.process.returncode == 0

    by_source = {r.source.rsplit("/in/", 1)[1]: r for r in results.values()}
    assert len(by_source) == total
    for name, (_body, reason) in awkward.items():
        result = by_source[name]
        if reason is None:
            assert result.outcome is Outcome.done, (name, result)
        else:
            assert (result.outcome, result.reason) == (Outcome.failed, reason), (name, result)
            assert result.message, name
    for name in photos:
        assert by_source[name].outcome is Outcome.done
    for result in results.values():
        if result.outcome is Outcome.done:
            image = _decoded(s3, bucket, result.dest.split(f"s3://{bucket}/", 1)[1])
            assert image.format == "WEBP"
            assert max(image.size) <= 640
    rotated = _decoded(s3, bucket, "out/exif-rotated-6-jpg.webp")
    original = Image.open(io.BytesIO(awkward["exif-rotated-6-jpg.jpg"][0]))
    assert (rotated.width > rotated.height) != (original.width > original.height)  # orientation applied
    assert _decoded(s3, bucket, "out/icc-srgb-jpg.webp").info.get("icc_profile")


def test_an_output_is_written_only_over_what_its_task_saw(s3: S3Server, bucket: str):
    """Two tasks racing for one key (a duplicate delivery; two sources with one output key): the
    write is conditional on the key's state when the task looked, so only the first one lands."""
    client = s3.client()
    task = plan_task(new_job("race"), job_spec(bucket), 0, SourceObject(bucket=bucket, key="in/a.jpg"))

    def write(body: bytes, replaces) -> None:
        write_output(
            client, task, body, "image/webp", output_metadata(task, "etag", 10, False), replaces=replaces
        )

    write(b"first", replaces=None)
    with pytest.raises(OutputChanged):
        write(b"second", replaces=None)  # saw no output, but one is there now
    seen = existing_output(client, bucket, task.dest_key)
    assert seen is not None and seen.job == task.job.uid
    write(b"third", replaces=seen)
    with pytest.raises(OutputChanged):
        write(b"fourth", replaces=seen)  # what it saw was replaced meanwhile
    body = client.get_object(Bucket=bucket, Key=task.dest_key)["Body"].read()
    assert body == b"third"


def test_two_inputs_for_one_output_key_end_as_one_output_and_one_collision(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    photo = next(iter(real_photos(limit=1, max_side=400).values()))
    png = io.BytesIO()
    Image.open(io.BytesIO(photo)).save(png, "PNG")
    upload(s3, bucket, {"same.jpg": photo, "same.png": png.getvalue()})
    job = new_job("collide")
    publish_job(rabbitmq, s3, job, job_spec(bucket))
    # Two processes: both tasks look at the key before either writes it.
    pool = workers(rabbitmq, s3, job, tmp_path, KOMPRESSOR_PROCESSES="2")
    pool.start_one()
    try:
        final = collect_results(rabbitmq, job, 2, timeout=60).final()
    finally:
        pool.stop_all()
    outcomes = sorted((r.outcome.value, r.reason) for r in final.values())
    assert outcomes == [("done", ""), ("failed", "output_collision")]
    collided = next(r for r in final.values() if r.reason == "output_collision")
    assert "same." in collided.message


def test_a_pool_child_killed_mid_task_loses_nothing(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    upload(s3, bucket, real_photos(limit=24, max_side=1600))
    job, spec = new_job("child-kill"), job_spec(bucket, output={"format": "avif", "quality": 50})
    total = publish_job(rabbitmq, s3, job, spec)
    pool = workers(rabbitmq, s3, job, tmp_path)
    worker = pool.start_one()
    try:
        results = collect_results(rabbitmq, job, total, timeout=60, until=lambda r: len(r.by_id) >= 2)
        children = [pid for pid in descendants(worker.pid) if pid not in _direct_children(worker.pid)]
        assert children, "no pool children found"
        for pid in children[:2]:
            os.kill(pid, signal.SIGKILL)
        results = collect_results(rabbitmq, job, total, timeout=180, results=results)
        assert worker.alive()
    finally:
        pool.stop_all()
    final = results.final()
    assert sorted(final) == list(range(total))
    assert all(r.outcome is Outcome.done for r in final.values())
    assert len(s3.client().list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]) == total


def _direct_children(pid: int) -> set[int]:
    return {child for child in descendants(pid) if _parent(child) == pid}


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_worker_killed_mid_batch_loses_nothing_and_redoes_nothing(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    upload(s3, bucket, real_photos(limit=24, max_side=1600))
    job, spec = new_job("worker-kill"), job_spec(bucket)
    total = publish_job(rabbitmq, s3, job, spec)
    pool = workers(rabbitmq, s3, job, tmp_path)
    try:
        first = pool.start_one()
        results = collect_results(rabbitmq, job, total, timeout=60, until=lambda r: len(r.by_id) >= 6)
        pool.kill(first)
        pool.start_one()
        results = collect_results(rabbitmq, job, total, timeout=180, results=results)
    finally:
        pool.stop_all()
    final = results.final()
    assert sorted(final) == list(range(total))
    assert all(r.outcome is Outcome.done for r in final.values())
    # A task whose output was stored before the kill is recognised, not compressed again.
    redelivered = [r for r in final.values() if r.attempts > 1]
    assert all(r.message in ("", "already stored by this job") for r in redelivered)
    assert len(s3.client().list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]) == total


def test_sigterm_drains_in_flight_tasks_and_exits_zero(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    upload(s3, bucket, real_photos(limit=24, max_side=1600))
    job, spec = new_job("drain"), job_spec(bucket, output={"format": "avif", "quality": 50})
    total = publish_job(rabbitmq, s3, job, spec)
    pool = workers(rabbitmq, s3, job, tmp_path)
    first = pool.start_one()
    results = collect_results(rabbitmq, job, total, timeout=60, until=lambda r: len(r.by_id) >= 1)
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(60) == 0
    pool.start_one()
    try:
        results = collect_results(rabbitmq, job, total, timeout=180, results=results)
    finally:
        pool.stop_all()
    final = results.final()
    assert sorted(final) == list(range(total))
    # Every task the first worker took on was finished by it: none ran twice. (A delivery in transit
    # at the cancel is requeued unstarted; RabbitMQ counts it as an attempt, so attempts may be 2.)
    twice = {i: [(r.attempts, r.message) for r in rs] for i, rs in results.by_id.items() if len(rs) > 1}
    assert not twice, (twice, first.log.read_text()[-3000:])
    assert not [r for r in final.values() if r.message == "already stored by this job"]


def test_a_task_longer_than_the_heartbeat_keeps_the_connection(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path
):
    big = Image.effect_noise((5000, 4000), 64).convert("RGB")
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=95)
    upload(s3, bucket, {"big.jpg": buffer.getvalue()})
    job = new_job("heartbeat")
    spec = job_spec(
        bucket,
        output={"format": "png", "resize": {"maxWidth": 5000, "maxHeight": 5000}, "neverLarger": False},
    )
    publish_job(rabbitmq, s3, job, spec)
    pool = workers(rabbitmq, s3, job, tmp_path, KOMPRESSOR_BROKER__HEARTBEAT_SECONDS="1")
    worker = pool.start_one()
    try:
        started = time.monotonic()
        results = collect_results(rabbitmq, job, 1, timeout=120).final()
        elapsed = time.monotonic() - started
    finally:
        pool.stop_all()
    assert elapsed > 3, f"the task took {elapsed:.1f}s: not longer than several heartbeats"
    assert results[0].outcome is Outcome.done and results[0].attempts == 1
    assert "connection lost" not in worker.log.read_text()


@pytest.mark.parametrize("env", [{"KOMPRESSOR_QUEUE": ""}, {"KOMPRESSOR_PROCESSES": "lots"}])
def test_bad_configuration_is_one_line_naming_the_variable(
    env: dict[str, str], tmp_path: Path, rabbitmq: RabbitMQ, s3: S3Server
):
    pool = workers(rabbitmq, s3, new_job(), tmp_path, **env)
    worker = pool.start_one()
    assert worker.process.wait(30) == 2
    output = worker.log.read_text().strip()
    assert len(output.splitlines()) == 1
    assert next(iter(env)) in output


def test_health_endpoints_answer(rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path):
    import urllib.request

    from testbed.process import free_port

    port = free_port()
    job = new_job("health")
    publish_job(rabbitmq, s3, job, job_spec(bucket))  # declares the queues; no inputs
    pool = workers(rabbitmq, s3, job, tmp_path, KOMPRESSOR_HEALTH_PORT=str(port))
    pool.start_one()
    try:

        def ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                return response.status == 200

        wait_until(ready, 30, "worker /readyz")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            # The worker's series name its job, from the environment the operator gives it.
            labels = f'compressionjob="{job.name}",namespace="{job.namespace}"'
            assert f"kompressor_busy_processes{{{labels}}}" in response.read().decode()
    finally:
        pool.stop_all()
