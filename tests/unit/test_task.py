"""What a found output means (`earlier_result`) and when a task looks for one first (`look_first`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kompressor.crd import Existing, parse_spec
from kompressor.messages import JobRef, Outcome, SourceObject, Task
from kompressor_worker.storage import ExistingOutput, settings_fingerprint
from kompressor_worker.task import LOOK_STREAK, OutputLookups, earlier_result, look_first

JOB = JobRef(namespace="shop", name="catalog", uid="0f3c2a9e-1111-2222-3333-444455556666")
OTHER_JOB = "9d9d9d9d-1111-2222-3333-444455556666"
SPEC = parse_spec(
    {
        "source": {"s3": {"bucket": "raw", "prefix": "products/"}},
        "destination": {"s3": {"bucket": "web", "prefix": "out/"}},
        "output": {"format": "webp", "quality": 70},
    }
)


def _task(existing: Existing = Existing.skip, **overrides) -> Task:
    fields = dict(
        job=JOB,
        id=7,
        source=SourceObject(bucket="raw", key="products/a.jpg", etag="e1", size=10),
        dest_bucket="web",
        dest_key="out/a.webp",
        existing=existing,
        output=SPEC.output,
        limits=SPEC.limits,
    )
    return Task(**(fields | overrides))


def _found(of: Task, **overrides) -> ExistingOutput:
    """The output task `of` would have written."""
    fields = dict(
        etag='"abc"',
        job=of.job.uid,
        task=str(of.id),
        source=of.source.describe(),
        source_etag=of.source.etag or "",
        settings=settings_fingerprint(of),
        bytes_in=1000,
        bytes_out=400,
        stored_original=False,
    )
    return ExistingOutput(**(fields | overrides))


def test_nothing_found_means_write():
    assert earlier_result(_task(), None) is None


def test_this_tasks_own_output_is_reported_done_from_its_metadata():
    task = _task()
    result = earlier_result(task, _found(task, stored_original=True))
    assert result is not None and result.outcome is Outcome.done
    assert (result.bytes_in, result.bytes_out, result.stored_original) == (1000, 400, True)
    assert result.message == "already stored by this job"
    assert result.dest == "s3://web/out/a.webp"


def test_another_source_of_this_job_at_the_key_is_a_collision():
    task = _task()
    result = earlier_result(task, _found(task, source="s3://raw/products/a.png"))
    assert result is not None and result.outcome is Outcome.failed
    assert result.reason == "output_collision"
    assert "s3://raw/products/a.png" in result.message


def test_urls_differing_only_in_their_query_are_told_apart_by_task_id():
    url = "https://img.example/a.jpg?size=s"
    task = _task(id=3, source=SourceObject(url=url))
    assert earlier_result(task, _found(task, task="4")).reason == "output_collision"
    assert earlier_result(task, _found(task, task="3")).outcome is Outcome.done
    assert earlier_result(task, _found(task, task="")).outcome is Outcome.done  # written before ids were


def test_skip_needs_the_same_source_version_and_settings_from_another_run():
    task = _task(Existing.skip)
    result = earlier_result(task, _found(task, job=OTHER_JOB))
    assert result is not None and (result.outcome, result.reason) == (Outcome.skipped, "exists")
    assert (result.bytes_in, result.bytes_out) == (1000, 400)
    assert earlier_result(task, _found(task, job=OTHER_JOB, source_etag="e0")) is None
    assert earlier_result(task, _found(task, job=OTHER_JOB, settings="0" * 16)) is None


def test_overwrite_replaces_another_runs_output_and_reports_its_own():
    task = _task(Existing.overwrite)
    assert earlier_result(task, _found(task, job=OTHER_JOB)) is None
    assert earlier_result(task, _found(task)).outcome is Outcome.done  # this job's: a redelivery


def test_a_source_without_etag_is_never_skipped():
    task = _task(source=SourceObject(url="https://img.example/a.jpg"))
    assert earlier_result(task, _found(task, job=OTHER_JOB, source_etag="")) is None


@given(
    existing=st.sampled_from(list(Existing)),
    same_job=st.booleans(),
    same_source=st.booleans(),
    same_etag=st.booleans(),
    same_settings=st.booleans(),
)
def test_what_a_found_output_can_mean(existing, same_job, same_source, same_etag, same_settings):
    """Skipped only under `existing: skip`; a collision only within one job; done only for this job's
    own output of this input with these settings; anything else is written over."""
    task = _task(existing)
    found = _found(
        task,
        job=task.job.uid if same_job else OTHER_JOB,
        source=task.source.describe() if same_source else "s3://raw/products/other.jpg",
        source_etag="e1" if same_etag else "e0",
        settings=settings_fingerprint(task) if same_settings else "f" * 16,
    )
    result = earlier_result(task, found)
    if same_job and not same_source:
        assert result is not None and result.reason == "output_collision"
    elif same_job and same_settings:
        assert result is not None and result.outcome is Outcome.done
    elif existing is Existing.skip and not same_job and same_etag and same_settings:
        assert result is not None and result.outcome is Outcome.skipped
    else:
        assert result is None


@given(
    delivered_before=st.booleans(),
    conditional=st.sampled_from([None, False, True]),
    absent=st.integers(0, 99),
)
def test_a_task_writes_first_only_where_the_write_finds_an_output(delivered_before, conditional, absent):
    writes_first = not look_first(delivered_before, conditional, absent)
    assert writes_first == (not delivered_before and conditional is True and absent >= LOOK_STREAK)


def test_lookups_learn_per_bucket_and_start_looking_again_when_an_output_is_found():
    lookups = OutputLookups()
    assert lookups.unknown("web") and lookups.look_first("web", delivered_before=False)
    lookups.learned("web", None)  # a storage error during the check: still unknown
    assert lookups.unknown("web")
    lookups.learned("web", True)
    for _ in range(LOOK_STREAK - 1):
        lookups.saw("web", found=False)
    assert lookups.look_first("web", delivered_before=False)
    lookups.saw("web", found=False)
    assert not lookups.look_first("web", delivered_before=False)
    assert lookups.look_first("web", delivered_before=True)
    assert lookups.look_first("other", delivered_before=False)  # another bucket: unknown
    lookups.saw("web", found=True)
    assert lookups.look_first("web", delivered_before=False)


def test_a_server_that_ignores_conditions_is_always_looked_at_first():
    lookups = OutputLookups()
    lookups.learned("web", False)
    for _ in range(10 * LOOK_STREAK):
        lookups.saw("web", found=False)
    assert lookups.look_first("web", delivered_before=False)
