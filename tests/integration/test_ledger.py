"""The ledger on the real broker and store, against anyone holding the broker credentials: forged
results and dead letters on a job's queues are dropped unrecorded, the job still ends with exact
counts, and a ledger part that is damaged in S3 does not stop a restart."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pika

from kompressor.messages import JobRef, Outcome, Result, SourceObject, dead_queue, result_queue
from kompressor_operator.engine import JobEngine
from kompressor_operator.ledger import ledger_prefix
from kompressor_operator.planning import plan_task
from testbed import RabbitMQ, S3Server
from tests.chaos.tools import photo_inputs, upload_parallel, wait_for
from tests.jobs import job_spec, new_job, workers

TOTAL = 6


def _publish(rabbitmq: RabbitMQ, queue: str, bodies: list[bytes], headers: dict | None = None) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, headers=headers))
    finally:
        connection.close()


def _forged_results(job: JobRef, published: int) -> list[bytes]:
    """What an attacker with the broker credentials can put on the results queue."""
    other = job.model_copy(update={"uid": job.uid[:8] + "-0000-4000-8000-000000000000"})  # same queues

    def result(who: JobRef, id: int, outcome: Outcome = Outcome.failed) -> bytes:
        return Result(job=who, id=id, outcome=outcome, source="s3://x/forged", reason="forged").encode()

    raw = json.loads(result(job, 0))
    return [
        result(other, 0),  # another job's result for a real id: would fail input 0
        result(other, published + 1, Outcome.done),
        result(job, published),  # the first id not published
        result(job, 2**32),  # 512 MiB of ledger bitmap on d116cca
        json.dumps(raw | {"id": 10**20}).encode(),  # OverflowError after the part was written, on d116cca
        json.dumps(raw | {"id": -1}).encode(),
    ]


def _parts(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", []) if "/part-" in item["Key"]]


def test_forged_results_are_dropped_unrecorded_and_the_job_ends_exactly(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path, caplog
):
    upload_parallel(s3, bucket, photo_inputs(TOTAL))
    job = new_job("forged")
    spec = job_spec(bucket, output={"format": "webp", "quality": 70})
    caplog.set_level(logging.WARNING)
    engine = JobEngine(job, spec, rabbitmq.url, s3.client()).open()
    procs = workers(rabbitmq, s3, job, tmp_path / "logs", KOMPRESSOR_PROCESSES="1")
    try:
        first = engine.step()
        assert (first.published_now, first.counts.accounted) == (TOTAL, 0)
        _publish(rabbitmq, result_queue(job), _forged_results(job, TOTAL))
        # Dead letters are forgeable too: another job's task, and one of ours with an id never published.
        template = plan_task(job, spec, 0, SourceObject(bucket=bucket, key="in/forged.jpg"))
        other_job = template.job.model_copy(update={"uid": "f" * 36})
        letters = [template.model_copy(update={"job": other_job}), template.model_copy(update={"id": TOTAL})]
        _publish(
            rabbitmq,
            dead_queue(job),
            [letter.encode() for letter in letters],
            headers={"x-death": [{"reason": "delivery_limit", "queue": "forged"}]},
        )
        second = engine.step()
        assert dict(second.refused_now) == {"wrong_job": 3, "unpublished_id": 3, "malformed": 2}
        assert second.counts.accounted == 0
        assert _parts(s3, bucket, ledger_prefix(job, spec)) == []  # nothing written
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "dropped 4 result(s) unrecorded" in logged and "2 undecodable result(s)" in logged

        procs.start_one()
        wait_for(lambda: engine.step().finished, 120, "the job finished")
    finally:
        procs.stop_all(timeout=20)
        engine.delete_queues()
        engine.close()
    counts = engine.counts()
    assert (counts.total, counts.succeeded, counts.skipped, counts.failed) == (TOTAL, TOTAL, 0, 0)
    reloaded = JobEngine(job, spec, rabbitmq.url, s3.client()).ledger.load()
    assert reloaded.tally.succeeded == TOTAL and reloaded.cursor.next_id == TOTAL


def test_a_damaged_ledger_part_does_not_stop_a_reload_and_stays_out_of_the_manifest(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path, caplog
):
    upload_parallel(s3, bucket, photo_inputs(TOTAL))
    job = new_job("damaged")
    spec = job_spec(bucket, output={"format": "webp", "quality": 70})
    engine = JobEngine(job, spec, rabbitmq.url, s3.client()).open()
    procs = workers(rabbitmq, s3, job, tmp_path / "logs", KOMPRESSOR_PROCESSES="1")
    try:
        procs.start_one()
        wait_for(lambda: engine.step().finished, 120, "the job finished")
    finally:
        procs.stop_all(timeout=20)
        engine.close()
    prefix = f"{ledger_prefix(job, spec)}ledger/{job.uid8}/"
    caplog.set_level(logging.WARNING, logger="kompressor.ledger")

    # A damaged cursor: the listing starts again, each input published again with its old id.
    s3.client().put_object(Bucket=bucket, Key=prefix + "cursor.json", Body=b'{"next_id": "seven"')
    relisted = JobEngine(job, spec, rabbitmq.url, s3.client()).open()
    try:
        assert (relisted.ledger.cursor.next_id, relisted.counts().succeeded) == (0, TOTAL)
        assert any("cursor" in r.getMessage() and "is damaged" in r.getMessage() for r in caplog.records)
        progress = relisted.step()
        assert (progress.published_now, progress.finished, progress.counts.total) == (TOTAL, True, TOTAL)
    finally:
        relisted.close()

    good = json.loads(
        s3.client()
        .get_object(Bucket=bucket, Key=_parts(s3, bucket, prefix)[0])["Body"]
        .read()
        .splitlines()[0]
    )
    damaged = {
        "part-00000090.jsonl": b"\x00\xff\xfe garbage \x81\n\x89PNG\r\n",
        # What d116cca wrote for forged results: an id past int64, one past the published ids.
        "part-00000091.jsonl": b"\n".join(
            json.dumps(good | {"id": i}).encode() for i in (10**20, 2**32, TOTAL)
        ),
        "part-00000092.jsonl": b'{"id": 1}\n[1, 2]\n' + b"[" * 50_000,
    }
    for name, body in damaged.items():
        s3.client().put_object(Bucket=bucket, Key=prefix + name, Body=body)

    reloaded = JobEngine(job, spec, rabbitmq.url, s3.client()).open()
    try:
        counts = reloaded.counts()
        assert (counts.total, counts.succeeded, counts.failed, counts.listing_done) == (TOTAL, TOTAL, 0, True)
        skipped = [r.getMessage() for r in caplog.records if "damaged line(s) skipped" in r.getMessage()]
        assert len(skipped) == len(damaged), skipped
        assert reloaded.step().finished
        manifest = reloaded.finish()
    finally:
        reloaded.delete_queues()
        reloaded.close()
    key = manifest.removeprefix(f"s3://{bucket}/")
    lines = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == list(range(TOTAL))


def test_a_step_records_results_for_a_bounded_time_and_leaves_dead_letters_until_they_are_read(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, monkeypatch
):
    """A step used to drain the results queue until empty: with results arriving faster than it
    reads them (bench/million.py) it never ended. Now each records for COLLECT_SECONDS (at least
    one batch of 1000), and reads dead letters only once the results are drained."""
    from kompressor_operator import engine as engine_module

    total = 2500
    upload_parallel(s3, bucket, {f"in/{i:05d}.jpg": b"x" for i in range(total)})
    job = new_job("bounded")
    spec = job_spec(bucket, output={"format": "webp", "quality": 70})
    engine = JobEngine(job, spec, rabbitmq.url, s3.client()).open()
    try:
        while engine.step().counts.published < total:
            pass
        results = [
            Result(job=job, id=n, outcome=Outcome.done, source=f"s3://{bucket}/in/{n:05d}.jpg", bytes_in=1)
            for n in range(total)
        ]
        _publish(rabbitmq, result_queue(job), [result.encode() for result in results])
        letter = plan_task(job, spec, 2400, SourceObject(bucket=bucket, key="in/02400.jpg")).encode()
        _publish(rabbitmq, dead_queue(job), [letter], headers={"x-death": [{"reason": "delivery_limit"}]})
        monkeypatch.setattr(engine_module, "COLLECT_SECONDS", 0.0)
        assert [engine.step().accounted_now for _ in range(4)] == [1000, 1000, 500, 0]
        counts = engine.counts()
        # the dead letter of task 2400 came after its result (read by the third step): counted once,
        # as the worker's result
        assert (counts.succeeded, counts.failed) == (total, 0)
    finally:
        engine.delete_queues()
        engine.close()
