"""A worker whose process pool is stuck gives its tasks back and is restarted, instead of holding
them for ever. The pool process is frozen (SIGSTOP) while idle, before any task arrives: pebble still
sees it alive and hands it tasks it never starts (the same state as a pool process killed while it
held the lock of the task pipe, which pebble waits out for 60 s per lock)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kompressor_operator.engine import JobEngine
from testbed import RabbitMQ, S3Server
from tests.chaos.tools import (
    photo_inputs,
    pool_children,
    read_logs,
    upload_parallel,
    wait_for,
    worker_crashes,
)
from tests.jobs import job_spec, new_job, workers


def test_a_worker_with_a_frozen_pool_process_requeues_its_tasks_and_is_restarted(
    rabbitmq: RabbitMQ, s3: S3Server, bucket: str, tmp_path: Path, chaos_report
):
    total = 12
    upload_parallel(s3, bucket, photo_inputs(total))
    job = new_job("stuck")
    spec = job_spec(bucket, output={"format": "webp", "quality": 70})
    engine = JobEngine(job, spec, rabbitmq.url, s3.client()).open()
    procs = workers(rabbitmq, s3, job, tmp_path / "logs", KOMPRESSOR_PROCESSES="1")
    frozen: list[int] = []
    started = time.monotonic()
    try:
        first = procs.start_one()
        wait_for(lambda: bool(pool_children(first.pid)), 30, "the first worker's pool process")
        frozen = pool_children(first.pid)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)

        def finished() -> bool:  # the first step publishes the tasks
            procs.scale_to(1)  # a worker that exited is replaced, as by a Deployment
            return engine.step().finished

        wait_for(finished, 120, "the job finished")
        seconds = time.monotonic() - started
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        procs.stop_all(timeout=20)
        engine.delete_queues()
        engine.close()
    counts = engine.counts()
    logs = read_logs(tmp_path / "logs")
    crashed = worker_crashes(logs, set())
    chaos_report.add(
        "frozen pool process",
        inputs=total,
        kills=0,
        restarts="worker 1",
        lost=total - counts.succeeded,
        crashes=len(crashed),
        seconds=round(seconds),
    )
    chaos_report.note(
        f"stuck pool: the first worker's only pool process frozen before any task; its tasks requeued and "
        f"the worker restarted, {counts.succeeded}/{total} done in {seconds:.0f}s ({procs.started_total} "
        f"worker processes)"
    )
    assert (counts.total, counts.succeeded, counts.failed) == (total, total, 0)
    first_log = logs[str(first.log)]
    assert "the process pool is stuck" in first_log and first_log.rstrip().endswith("stopped"), first_log[
        -2000:
    ]
    assert procs.started_total == 2
    assert seconds < 70, (
        f"the stuck pool was found after {seconds:.0f}s"
    )  # 20 s watchdog, not pebble's minutes
    assert not crashed, crashed
