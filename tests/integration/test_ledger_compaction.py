"""The ledger's compaction on the real S3 server: after many results batches a restart reads a
bounded number of objects, and nothing is lost or counted twice, also when a compaction stopped
half-way or a summary is damaged."""

from __future__ import annotations

import json

from kompressor.messages import Outcome, Result
from kompressor_operator.ledger import Cursor, Ledger, ledger_prefix
from testbed import S3Server
from tests.jobs import job_spec, new_job

FANIN = 4
BATCHES = 70
BATCH = 5
TOTAL = BATCHES * BATCH


def _result(job, n: int) -> Result:
    failed = n % 7 == 0
    return Result(
        job=job,
        id=n,
        outcome=Outcome.failed if failed else Outcome.done,
        source=f"s3://raw/in/{n:05d}.jpg",
        dest=f"s3://web/out/{n:05d}.webp",
        reason="decode_error" if failed else "",
        bytes_in=1000 + n,
        bytes_out=0 if failed else 400,
    )


def _expected(job) -> tuple[int, int, int, int]:
    results = [_result(job, n) for n in range(TOTAL)]
    failed = sum(r.outcome is Outcome.failed for r in results)
    # Only inputs with an output count in the bytes (ledger.has_output).
    stored = [r for r in results if r.outcome is not Outcome.failed]
    return TOTAL - failed, failed, sum(r.bytes_in for r in stored), 400 * (TOTAL - failed)


def _counts(ledger: Ledger) -> tuple[int, int, int, int]:
    t = ledger.tally
    return t.succeeded, t.failed, t.bytes_in, t.bytes_out


def _keys(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"].removeprefix(prefix) for page in pages for item in page.get("Contents", [])]


def _recorded_ledger(s3: S3Server, bucket: str):
    job = new_job("compact")
    spec = job_spec(bucket)
    ledger = Ledger(s3.client(), job, spec, fanin=FANIN)
    ledger.save_cursor(Cursor(next_id=TOTAL, after_key="in/zz", listing_done=True, total=TOTAL))
    for batch in range(BATCHES):
        ids = range(batch * BATCH, (batch + 1) * BATCH)
        # each batch also redelivers a result of the batch before: recorded once
        redelivered = [_result(job, batch * BATCH - 1)] if batch else []
        assert ledger.record([_result(job, n) for n in ids] + redelivered).new == BATCH
    return job, spec, ledger


def test_after_many_batches_a_restart_reads_few_objects_and_counts_each_result_once(
    s3: S3Server, bucket: str
):
    job, spec, ledger = _recorded_ledger(s3, bucket)
    assert _counts(ledger) == _expected(job)
    prefix = f"{ledger_prefix(job, spec)}ledger/{job.uid8}/"
    stored = _keys(s3, bucket, prefix)
    parts = [k for k in stored if k.startswith("part-")]
    # 70 batches with fan-in 4: 64 + 4 + 2 → three parts (and two summaries) instead of seventy
    assert parts == [
        "part-00000001-00000064.jsonl",
        "part-00000065-00000068.jsonl",
        "part-00000069.jsonl",
        "part-00000070.jsonl",
    ], stored

    reloaded = Ledger(s3.client(), job, spec, fanin=FANIN).load()
    assert reloaded.objects_read == len(parts)  # the merged parts' summaries, the small parts' lines
    assert _counts(reloaded) == _expected(job)
    assert all(reloaded.seen(n) for n in range(TOTAL)) and not reloaded.seen(TOTAL)
    assert reloaded.record([_result(job, 3)]).new == 0  # still known after the restart

    manifest = reloaded.write_manifest().removeprefix(f"s3://{bucket}/")
    lines = s3.client().get_object(Bucket=bucket, Key=manifest)["Body"].read().splitlines()
    assert [json.loads(line)["id"] for line in lines] == list(range(TOTAL))


def test_a_compaction_stopped_before_its_deletes_or_a_damaged_summary_loses_and_doubles_nothing(
    s3: S3Server, bucket: str
):
    job, spec, _ = _recorded_ledger(s3, bucket)
    prefix = f"{ledger_prefix(job, spec)}ledger/{job.uid8}/"
    client = s3.client()
    # A source the merge into part-1-64 did not get to delete, and a summary that is not one.
    source = "\n".join(
        json.dumps(
            {
                "id": n,
                "source": "s",
                "dest": "d",
                "outcome": "done",
                "bytesIn": 1,
                "bytesOut": 1,
                "reason": "",
                "message": "",
                "attempts": 1,
            }
        )
        for n in range(5)
    )
    client.put_object(Bucket=bucket, Key=prefix + "part-00000001.jsonl", Body=source.encode())
    client.put_object(Bucket=bucket, Key=prefix + "sum-00000065-00000068.json", Body=b'{"succeeded": 3')

    reloaded = Ledger(client, job, spec, fanin=FANIN).load()
    assert _counts(reloaded) == _expected(job)
    assert "part-00000001.jsonl" not in _keys(s3, bucket, prefix)  # the covered source is deleted
    manifest = reloaded.write_manifest().removeprefix(f"s3://{bucket}/")
    lines = client.get_object(Bucket=bucket, Key=manifest)["Body"].read().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == list(range(TOTAL))
