"""A store that answers InternalError to the ledger's writes (as one whose disk is full does), on the
real broker and store: the step fails as a storage outage naming the error, nothing is lost, and the
results are recorded once the store answers again. (The operator's condition and Events for it are
tested end to end in tests/e2e/test_operator_faults.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest
from pydantic import SecretStr

from kompressor.messages import Outcome, Result, result_queue
from kompressor.settings import StorageSettings
from kompressor_operator import broker
from kompressor_operator.engine import JobEngine, StepFailed
from kompressor_operator.status import Dependency
from kompressor_s3 import s3_client
from testbed import RabbitMQ, S3Server
from tests.chaos.tools import S3Faults, photo_inputs, upload_parallel, wait_for
from tests.jobs import job_spec, new_job


def ledger_parts(method: str, path: str) -> bool:
    return method == "PUT" and "/.kompressor/" in path and "/part-" in path


@pytest.fixture
def faults(s3: S3Server) -> Iterator[S3Faults]:
    proxy = S3Faults(s3.port, refuse=ledger_parts).start()
    yield proxy
    proxy.stop()


def test_a_store_refusing_ledger_writes_fails_the_step_as_storage_and_loses_nothing(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, faults: S3Faults
):
    upload_parallel(s3, bucket, photo_inputs(3))
    job, spec = new_job("outage"), job_spec(bucket)
    storage = StorageSettings(
        endpoint_url=faults.url,
        access_key_id=SecretStr(s3.access_key),
        secret_access_key=SecretStr(s3.secret_key),
        max_attempts=2,
    )
    engine = JobEngine(job, spec, rabbitmq.url, s3_client(storage), retry_delays=()).open()
    try:
        assert engine.step().published_now == 3
        connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
        for id in range(3):  # what the workers would report
            result = Result(job=job, id=id, outcome=Outcome.done, source=f"s3://{bucket}/in/{id}", bytes_in=9)
            connection.channel().basic_publish("", result_queue(job), result.encode())
        # a step reads what the results queue holds ready when it starts (broker.drain_results)
        channel = connection.channel()
        wait_for(lambda: broker.queue_depth(channel, result_queue(job)).ready == 3, 10, "3 results queued")
        connection.close()

        faults.failing.set()
        with pytest.raises(StepFailed) as failed:
            engine.step()
        assert failed.value.dependency is Dependency.storage
        assert "InternalError" in str(failed.value) and "PutObject" in str(failed.value)
        assert faults.refused and all("/part-00000001.jsonl" in r for r in faults.refused)

        faults.failing.clear()
        connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
        channel = connection.channel()
        wait_for(lambda: broker.queue_depth(channel, result_queue(job)).ready == 3, 10, "3 results back")
        connection.close()
        progress = engine.step()  # the unacked results came back to the queue
        assert (progress.accounted_now, progress.counts.succeeded) == (3, 3)
        assert progress.finished
    finally:
        engine.delete_queues()
        engine.close()
