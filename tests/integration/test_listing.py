"""Listing a job's inputs on the real S3 server, and the engine's fan-out from it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pika
import pytest
from botocore.exceptions import ClientError

from kompressor.crd import S3Source, parse_spec
from kompressor.messages import Task, task_queue
from kompressor_operator import engine as engine_module
from kompressor_operator.engine import JobEngine
from kompressor_operator.listing import list_s3_sources
from testbed import RabbitMQ, S3Server
from tests.jobs import new_job

# Keys that S3 returns URL-encoded (botocore asks for EncodingType=url) or XML-escaped.
ODD_KEYS = ["in/a b&c.jpg", "in/é €.jpg", "in/x<y>'\".jpg", "in/plus+sign.jpg"]


def test_a_jobs_area_beside_the_source_prefix_is_never_listed(s3: S3Server, bucket: str):
    client = s3.client()
    for key in ("sr/a.jpg", "sr.kompressor/old/ledger/0a1b2c3d/part-00000001.jpg", "sr.kompressor/old/x.png"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    listed = [source.key for source in list_s3_sources(client, S3Source(bucket=bucket, prefix="sr"))]
    assert listed == ["sr/a.jpg"]


@pytest.fixture(scope="module")
def three_pages(s3: S3Server) -> tuple[str, list[str]]:
    """A bucket of 2,300 inputs (three listing pages of 1000), with odd keys and sizes."""
    client = s3.client()
    bucket = f"pages-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    keys = [f"in/{i:05d}.jpg" for i in range(2300 - len(ODD_KEYS))] + ODD_KEYS
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"x" * (len(k) % 7)), keys))
    return bucket, keys


def _botocore_listing(client, bucket: str, start_after: str = "") -> list[tuple[str, str, int]]:
    """The same listing through botocore's own parser, in this thread (the reference)."""
    arguments = {"Bucket": bucket, "Prefix": "in/", **({"StartAfter": start_after} if start_after else {})}
    pages = client.get_paginator("list_objects_v2").paginate(**arguments)
    return [(o["Key"], o["ETag"].strip('"'), o["Size"]) for page in pages for o in page.get("Contents", [])]


def test_the_prefetched_lean_listing_is_botocores_listing_in_order(s3: S3Server, three_pages):
    bucket, keys = three_pages
    client = s3.client()
    listing = list_s3_sources(client, S3Source(bucket=bucket, prefix="in/"))
    listed = [(source.key, source.etag, source.size) for source in listing]
    assert len(listed) == len(keys)
    assert [key for key, _, _ in listed] == sorted(keys, key=lambda k: k.encode())  # S3's order
    assert listed == _botocore_listing(client, bucket)
    assert all(etag for _, etag, _ in listed)
    # the lean parse is for the listing's own thread: the client's other listings keep every field
    assert "LastModified" in client.list_objects_v2(Bucket=bucket, Prefix="in/", MaxKeys=1)["Contents"][0]
    _wait_stopped(listing)


def test_a_listing_resumes_after_a_key(s3: S3Server, three_pages):
    bucket, keys = three_pages
    client = s3.client()
    after = sorted(keys)[1500]
    listed = [source.key for source in list_s3_sources(client, S3Source(bucket=bucket, prefix="in/"), after)]
    assert listed == [key for key, _, _ in _botocore_listing(client, bucket, after)]
    assert len(listed) == len(keys) - 1501


def test_closing_a_listing_part_way_stops_its_thread(s3: S3Server, three_pages):
    bucket, _ = three_pages
    listing = list_s3_sources(s3.client(), S3Source(bucket=bucket, prefix="in/"))
    first = [next(listing).key for _ in range(10)]
    assert first == [f"in/{i:05d}.jpg" for i in range(10)]
    listing.close()
    _wait_stopped(listing)
    with pytest.raises(StopIteration):
        next(listing)


def test_a_storage_error_is_raised_by_the_listing_and_stops_it(s3: S3Server):
    listing = list_s3_sources(s3.client(), S3Source(bucket="no-such-bucket-here", prefix="in/"))
    with pytest.raises(ClientError) as raised:
        next(listing)
    assert raised.value.response["Error"]["Code"] == "NoSuchBucket"
    _wait_stopped(listing)
    with pytest.raises(StopIteration):
        next(listing)


def _spec(bucket: str):
    """A job of every object under in/ of `bucket`, to WebP under out/."""
    return parse_spec(
        {
            "source": {"s3": {"bucket": bucket, "prefix": "in/"}},
            "destination": {"s3": {"bucket": bucket, "prefix": "out/"}},
            "output": {"format": "webp"},
        }
    )


def _wait_stopped(listing, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while listing.running:
        assert time.monotonic() < deadline, "the listing's thread did not stop"
        time.sleep(0.05)


def test_the_engines_fan_out_over_steps_and_a_restart_publishes_each_input_once_in_order(
    rabbitmq: RabbitMQ, s3: S3Server, three_pages, monkeypatch
):
    """The prefetched listing lives across the engine's steps (one batch each here) and stops with
    the engine; a new engine resumes from the saved cursor. The task queue then holds every input
    once, ids in listing order."""
    bucket, keys = three_pages
    monkeypatch.setattr(engine_module, "FAN_OUT_SECONDS", 0.0)  # a batch of 1000 per step
    job = new_job("overlap")
    spec = _spec(bucket)
    first = JobEngine(job, spec, rabbitmq.url, s3.client()).open()
    try:
        progress = first.step()
        # stopped for time with inputs left and room: the next step can go on at once
        assert (progress.published_now, progress.publishing) == (1000, True)
        listing = first._sources
        assert listing is not None and listing.running  # the next page is being read meanwhile
        assert first.step().published_now == 1000
    finally:
        first.close()
    _wait_stopped(listing)
    second = JobEngine(job, spec, rabbitmq.url, s3.client()).open()
    try:
        assert second.ledger.cursor.next_id == 2000
        progress = second.step()
        assert (progress.published_now, progress.counts.listing_done, progress.counts.total) == (
            300,
            True,
            2300,
        )
        assert not progress.publishing  # nothing left to publish: the next step waits a poll interval
        tasks = _drain(rabbitmq, task_queue(job))
    finally:
        second.delete_queues()
        second.close()
    assert [task.id for task in tasks] == list(range(len(keys)))
    assert [task.source.key for task in tasks] == sorted(keys, key=lambda k: k.encode())


def test_a_fan_out_held_back_by_max_outstanding_does_not_ask_for_the_next_step_at_once(
    rabbitmq: RabbitMQ, s3: S3Server, three_pages, monkeypatch
):
    """Progress.publishing is for a fan-out that stopped for time with room left: once
    maxOutstanding is reached, the job waits for results at the poll interval's pace."""
    bucket, _keys = three_pages
    monkeypatch.setattr(engine_module, "FAN_OUT_SECONDS", 0.0)  # a batch of at most 1000 per step
    job = new_job("held")
    spec = parse_spec(
        {
            "source": {"s3": {"bucket": bucket, "prefix": "in/"}},
            "destination": {"s3": {"bucket": bucket, "prefix": "out/"}},
            "output": {"format": "webp"},
            "limits": {"maxOutstanding": 1500},
        }
    )
    engine = JobEngine(job, spec, rabbitmq.url, s3.client()).open()
    try:
        steps = [engine.step() for _ in range(3)]
    finally:
        engine.delete_queues()
        engine.close()
    assert [(p.published_now, p.publishing) for p in steps] == [(1000, True), (500, False), (0, False)]
    assert not steps[-1].counts.listing_done


class _Crash(Exception):
    pass


def test_a_crash_while_a_batch_is_saved_republishes_what_was_sent_and_not_saved(
    rabbitmq: RabbitMQ, s3: S3Server, three_pages, monkeypatch
):
    """The fan-out sends each batch before the previous one's cursor is saved: a crash at a save
    leaves the batch it saves and the one sent after it unsaved. A new engine publishes both again
    with their ids; nothing is missing, and nothing before the saved cursor is sent twice."""
    bucket, keys = three_pages
    monkeypatch.setattr(engine_module, "FAN_OUT_SECONDS", 60.0)  # the three batches in one step
    job = new_job("pipelined")
    spec = _spec(bucket)
    first = JobEngine(job, spec, rabbitmq.url, s3.client()).open()
    save, saves = first.ledger.save_cursor, []

    def crashing_save(cursor) -> None:
        if saves:
            raise _Crash(cursor)
        saves.append(cursor)
        save(cursor)

    first.ledger.save_cursor = crashing_save
    try:
        with pytest.raises(_Crash):
            first.step()
    finally:
        first.close()
    assert [cursor.next_id for cursor in saves] == [1000]
    second = JobEngine(job, spec, rabbitmq.url, s3.client()).open()
    try:
        assert second.ledger.cursor.next_id == 1000
        assert second.step().counts.listing_done
        tasks = _drain(rabbitmq, task_queue(job))
    finally:
        second.delete_queues()
        second.close()
    ids = [task.id for task in tasks]
    # 0..2299 before the crash (the third batch sent while the second was saved), then 1000..2299
    assert ids == list(range(len(keys))) + list(range(1000, len(keys)))


def _drain(rabbitmq: RabbitMQ, queue: str) -> list[Task]:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    try:
        channel = connection.channel()
        tasks = []
        while (message := channel.basic_get(queue, auto_ack=True))[0] is not None:
            tasks.append(Task.decode(message[2]))
        return tasks
    finally:
        connection.close()
