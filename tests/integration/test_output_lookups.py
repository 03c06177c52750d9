"""A task that writes first (no HEAD, task.look_first) ends exactly as one that looks first,
whatever is at its output key, on the real S3 server with a real process pool."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from functools import partial

import pebble
import pytest

from kompressor.crd import Existing
from kompressor.messages import Outcome, Task
from kompressor_operator.listing import list_s3_sources
from kompressor_operator.planning import plan_tasks
from kompressor_worker.settings import WorkerSettings
from kompressor_worker.storage import (
    conditional_writes_honoured,
    existing_output,
    output_metadata,
    write_output,
)
from kompressor_worker.task import LOOK_STREAK, TaskRunner, init_child
from testbed import S3Server
from tests.chaos.tools import S3Recorder
from tests.corpus import real_photos
from tests.jobs import job_spec, new_job, upload


@pytest.fixture(scope="module")
def pool() -> Iterator[pebble.ProcessPool]:
    processes = pebble.ProcessPool(
        max_workers=1,
        initializer=init_child,
        initargs=(None,),
        context=multiprocessing.get_context("forkserver"),
    )
    yield processes
    processes.stop()
    processes.join(timeout=10)


@pytest.fixture
def recorder(s3: S3Server) -> Iterator[S3Recorder]:
    proxy = S3Recorder(s3.port).start()
    yield proxy
    proxy.stop()


def _runner(endpoint: str, s3: S3Server, pool, monkeypatch: pytest.MonkeyPatch) -> TaskRunner:
    for name, value in {**s3.env(), "KOMPRESSOR_STORAGE__ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KOMPRESSOR_QUEUE", "unused")
    return TaskRunner(WorkerSettings(), pool)


def _writing_first(runner: TaskRunner, bucket: str) -> TaskRunner:
    """As after LOOK_STREAK tasks found no output on a server that honours conditional writes."""
    runner.lookups.learned(bucket, True)
    for _ in range(LOOK_STREAK):
        runner.lookups.saw(bucket, found=False)
    assert not runner.lookups.look_first(bucket, delivered_before=False)
    return runner


def _store(s3: S3Server, task: Task, body: bytes = b"an earlier output") -> None:
    metadata = output_metadata(task, task.source.etag or "", 1234, False)
    write_output(s3.client(), task, body, "image/webp", metadata, replaces=None)


def _setups(task: Task, other_source: Task):
    """Name -> (the task as run, what is at its key before it runs)."""
    other_job = task.model_copy(update={"job": new_job("other-run")})
    other_settings = other_job.model_copy(update={"output": task.output.model_copy(update={"quality": 40})})
    overwriting = task.model_copy(update={"existing": Existing.overwrite})
    return {
        "nothing": (task, None),
        "its own output": (task, task),
        "another source of the job": (task, other_source.model_copy(update={"dest_key": task.dest_key})),
        "another run, same source and settings": (task, other_job),
        "another run, overwrite": (overwriting, other_job),
        "another run, other settings": (task, other_settings),
    }


def _tasks(s3: S3Server, bucket: str) -> tuple[Task, Task]:
    photos = real_photos(limit=2, max_side=400)
    upload(s3, bucket, dict(zip(("a.jpg", "b.jpg"), photos.values(), strict=True)))
    spec = job_spec(bucket)
    assert spec.source.s3 is not None
    first, second = plan_tasks(new_job("lookups"), spec, list_s3_sources(s3.client(), spec.source.s3))
    return first, second


@pytest.mark.parametrize(
    "setup",
    [
        "nothing",
        "its own output",
        "another source of the job",
        "another run, same source and settings",
        "another run, overwrite",
        "another run, other settings",
    ],
)
def test_writing_first_ends_as_looking_first(
    setup: str, s3: S3Server, bucket: str, pool, recorder: S3Recorder, monkeypatch: pytest.MonkeyPatch
):
    first, second = _tasks(s3, bucket)
    ends = {}
    for mode in ("looks", "writes"):
        task, before = _setups(first, second)[setup]
        task = task.model_copy(update={"dest_key": f"{mode}/{task.dest_key}"})
        if before is not None:
            _store(s3, before.model_copy(update={"dest_key": task.dest_key}))
        runner = _runner(recorder.url, s3, pool, monkeypatch)
        if mode == "writes":
            _writing_first(runner, bucket)
        result = runner.run(task, attempts=1)
        ends[mode] = result.model_dump(include={"outcome", "reason", "message", "bytes_in", "bytes_out"})
        stored = existing_output(s3.client(), bucket, task.dest_key)
        assert stored is not None
        if result.outcome is Outcome.done:  # the key holds this job's output of this input
            assert (stored.job, stored.source) == (task.job.uid, task.source.describe())
    assert ends["looks"] == ends["writes"]
    on_key = {mode: [e.method for e in recorder.exchanges if f"/{mode}/" in e.path] for mode in ends}
    assert on_key["looks"][0] == "HEAD"
    assert on_key["writes"][0] == "PUT"  # the conditional write came first
    if setup == "nothing":
        assert on_key["writes"] == ["PUT"]  # the HEAD saved
        assert on_key["looks"] == ["HEAD", "PUT", "PUT"]  # a new runner: its bucket check follows the write


def test_seaweedfs_is_found_to_honour_conditional_writes(s3: S3Server, bucket: str):
    first, _ = _tasks(s3, bucket)
    client = s3.client()
    _store(s3, first, b"the output")
    write = partial(
        write_output, client, first, b"the output", "image/webp", output_metadata(first, "etag", 10, False)
    )
    assert conditional_writes_honoured(write) is True
    assert client.get_object(Bucket=bucket, Key=first.dest_key)["Body"].read() == b"the output"


def test_a_worker_checks_each_bucket_once_then_writes_first(
    s3: S3Server, bucket: str, pool, recorder: S3Recorder, monkeypatch: pytest.MonkeyPatch
):
    first, second = _tasks(s3, bucket)
    runner = _runner(recorder.url, s3, pool, monkeypatch)
    assert runner.run(first, attempts=1).outcome is Outcome.done
    assert not runner.lookups.unknown(bucket)  # the check ran: SeaweedFS refuses the second write
    for _ in range(LOOK_STREAK):
        runner.lookups.saw(bucket, found=False)
    before = len(recorder.exchanges)
    assert runner.run(second, attempts=1).outcome is Outcome.done
    assert [e.method for e in recorder.exchanges[before:]] == ["GET", "PUT"]
    # A redelivered task looks first: its own output is likely there.
    again = runner.run(second, attempts=1, redelivered=True)
    assert (again.outcome, again.message) == (Outcome.done, "already stored by this job")
