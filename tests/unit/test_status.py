"""Status as pure functions: phases, conditions, progress numbers, throughput and the spec checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kompressor.crd import (
    FINISHED_PHASES,
    CompressionJobSpec,
    CompressionJobStatus,
    InputFormat,
    Phase,
    WorkerCounts,
)
from kompressor.messages import SourceObject, output_key
from kompressor_operator.status import (
    CONDITION_TYPES,
    OUTAGE_AFTER_FAILURES,
    RETRY_MAX_SECONDS,
    SECRET_MISSING,
    SECRETS_READY,
    Counts,
    Dependency,
    Outage,
    check_spec,
    failed_status,
    immutable_changes,
    next_status,
    reachability,
    refused_status,
    required_secrets,
    retry_delay,
    secrets_condition,
    secrets_found,
    set_condition,
    spec_accepted,
    throughput,
    waited_for_secrets,
    worker_deployment,
)
from kompressor_worker.task import check_key

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SPEC = CompressionJobSpec.model_validate(
    {
        "source": {"s3": {"bucket": "raw", "prefix": "products/"}},
        "destination": {"s3": {"bucket": "web", "prefix": "products/"}},
    }
)
SUSPENDED = SPEC.model_copy(update={"suspend": True})
WORKERS = WorkerCounts(desired=2, ready=1)


def step(previous=None, spec=SPEC, at=0, rate=None, **counts) -> CompressionJobStatus:
    return next_status(
        previous or CompressionJobStatus(),
        Counts(**counts),
        spec,
        WORKERS,
        T0 + timedelta(seconds=at),
        generation=3,
        throughput=rate,
    )


def condition(status: CompressionJobStatus, type: str):
    [found] = [c for c in status.conditions if c.type == type]
    return found


# --- phases ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "spec", "phase"),
    [
        ({}, SPEC, Phase.pending),
        ({"listing_started": True}, SPEC, Phase.listing),
        ({"total": 10}, SPEC, Phase.listing),
        ({"total": 10, "published": 4}, SPEC, Phase.running),
        ({"total": 10, "listing_done": True}, SPEC, Phase.running),
        ({"total": 10, "published": 4}, SUSPENDED, Phase.suspended),
        ({}, SUSPENDED, Phase.suspended),
        ({"listing_done": True}, SPEC, Phase.succeeded),  # an empty job succeeds
        (
            {"total": 3, "published": 3, "succeeded": 2, "skipped": 1, "listing_done": True},
            SPEC,
            Phase.succeeded,
        ),
        ({"total": 3, "published": 3, "succeeded": 3, "listing_done": True}, SUSPENDED, Phase.succeeded),
        (
            {"total": 200, "published": 200, "succeeded": 198, "failed": 2, "listing_done": True},
            SPEC,
            Phase.succeeded,
        ),
        (
            {"total": 200, "published": 200, "succeeded": 197, "failed": 3, "listing_done": True},
            SPEC,
            Phase.failed,
        ),
        ({"total": 1, "published": 1, "failed": 1, "listing_done": True}, SPEC, Phase.failed),
        ({"total": 5, "published": 5, "succeeded": 5}, SPEC, Phase.running),  # the listing may find more
    ],
)
def test_phase(counts, spec, phase):
    assert step(spec=spec, **counts).phase is phase


def test_a_run_from_pending_to_succeeded():
    s = step()
    assert (s.phase, s.start_time, s.progress, s.saved) == (Phase.pending, None, "0/0", "")
    s = step(s, at=1, listing_started=True)
    assert (s.phase, s.start_time) == (Phase.listing, T0 + timedelta(seconds=1))
    s = step(
        s, at=2, total=100, published=100, succeeded=30, skipped=10, bytes_in=1000, bytes_out=390, rate=4.0
    )
    assert (s.phase, s.progress, s.outstanding, s.saved) == (Phase.running, "40/100", 60, "61%")
    assert (s.images_per_second, s.estimated_seconds_remaining) == (4.0, None)  # listing not done
    s = step(s, at=3, total=100, published=100, succeeded=50, skipped=10, listing_done=True, rate=3.0)
    assert s.estimated_seconds_remaining == 14  # 40 left at 3/s
    assert s.start_time == T0 + timedelta(seconds=1)
    s = step(s, at=4, total=100, published=100, succeeded=90, skipped=10, listing_done=True, rate=3.0)
    assert (s.phase, s.completion_time, s.estimated_seconds_remaining) == (
        Phase.succeeded,
        T0 + timedelta(seconds=4),
        0,
    )
    assert (s.observed_generation, s.workers) == (3, WORKERS)
    assert condition(s, "Complete").status == "True"
    assert condition(s, "Complete").reason == "AllInputsAccounted"
    assert condition(s, "Progressing").status == "False"


def test_finished_is_final_and_keeps_its_conditions_and_completion_time():
    done = step(total=1, published=1, failed=1, listing_done=True)
    assert done.phase is Phase.failed
    assert condition(done, "Failed").reason == "TooManyFailures"
    later = step(done, at=60, total=1, published=1, failed=1, listing_done=True)
    assert (later.phase, later.completion_time, later.conditions) == (
        Phase.failed,
        done.completion_time,
        done.conditions,
    )


def test_a_handler_failure_is_not_undone_by_counts():
    refused = CompressionJobStatus(phase=Phase.failed)
    assert step(refused, total=5, published=1).phase is Phase.failed


def test_succeeded_with_a_few_failures_says_so():
    s = step(
        total=200,
        published=200,
        succeeded=199,
        failed=1,
        listing_done=True,
        failures_by_reason=(("decode_error", 1),),
    )
    assert (s.phase, condition(s, "Complete").reason) == (Phase.succeeded, "CompletedWithFailures")
    assert s.failures_by_reason == {"decode_error": 1}


def test_suspended_condition_and_no_estimate():
    s = step(spec=SUSPENDED, total=10, published=10, listing_done=True, rate=5.0)
    assert condition(s, "Suspended").status == "True"
    assert condition(s, "Progressing").reason == "Suspended"
    assert s.estimated_seconds_remaining is None


def test_foreign_conditions_are_kept():
    previous = CompressionJobStatus(conditions=set_condition([], "SpecInvalid", False, "Valid", "", T0))
    s = step(previous, listing_started=True)
    assert [c.type for c in s.conditions] == ["SpecInvalid", *CONDITION_TYPES]


def test_saved_share_formats():
    assert step(total=1, published=1, bytes_in=100, bytes_out=39).saved == "61%"
    assert step(total=1, published=1, bytes_in=100, bytes_out=120).saved == "-20%"
    assert step(total=1, published=1, bytes_in=0, bytes_out=0).saved == ""


def test_counts_refuse_negative_numbers_and_sort_reasons():
    with pytest.raises(ValueError, match=r"Counts\.failed"):
        Counts(failed=-1)
    assert Counts(failures_by_reason=(("b", 1), ("a", 2))) == Counts(failures_by_reason=(("a", 2), ("b", 1)))


# --- set_condition ----------------------------------------------------------------------------------


def test_set_condition_moves_the_transition_time_only_when_status_changes():
    first = set_condition([], "Listed", False, "Listing", "3 found", T0)
    later = T0 + timedelta(minutes=1)
    same = set_condition(first, "Listed", False, "Listing", "9 found", later)
    assert (same[0].message, same[0].last_transition_time) == ("9 found", T0)
    flipped = set_condition(same, "Listed", True, "ListingComplete", "", later)
    assert (flipped[0].status, flipped[0].last_transition_time) == ("True", later)


def test_set_condition_keeps_one_entry_per_type():
    twice = [*set_condition([], "A", True, "R", "", T0), *set_condition([], "A", False, "R", "", T0)]
    out = set_condition(twice, "A", "Unknown", "R", "", T0)
    assert [(c.type, c.status) for c in out] == [("A", "Unknown")]


# --- throughput -----------------------------------------------------------------------------------


def test_throughput_is_an_ewma():
    assert throughput(None, 30, 10) == 3.0
    assert throughput(3.0, 60, 10) == pytest.approx(0.3 * 6 + 0.7 * 3)
    assert throughput(3.0, 0, 0) == 3.0
    assert throughput(None, 5, 0) == 0.0
    assert throughput(2.0, -4, 1) == pytest.approx(1.4)
    with pytest.raises(ValueError, match="smoothing"):
        throughput(1.0, 1, 1, smoothing=0)


# --- spec checks ----------------------------------------------------------------------------------


def spec(**changes) -> CompressionJobSpec:
    raw = SPEC.model_dump(mode="json", by_alias=True, exclude_none=True)
    for path, value in changes.items():
        node = raw
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return CompressionJobSpec.model_validate(raw)


def test_immutable_changes_name_the_fields_in_camel_case():
    assert immutable_changes(SPEC, SPEC) == []
    assert immutable_changes(SPEC, spec(workers__maxReplicas=3, suspend=True, priority=9)) == []
    assert immutable_changes(SPEC, spec(output__quality=60)) == ["spec.output.quality"]
    changed = spec(storage__endpointURL="http://s3:8333", output__resize__maxWidth=10)
    assert immutable_changes(SPEC, changed) == ["spec.output.resize.maxWidth", "spec.storage.endpointURL"]
    urls = spec(source={"urls": {"items": ["https://example.com/a.jpg"]}})
    assert immutable_changes(SPEC, urls) == ["spec.source.s3", "spec.source.urls"]


def test_check_spec_accepts_the_defaults():
    assert check_spec(SPEC) == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"destination__s3__bucket": "raw"}, "spec.destination"),  # same bucket, same prefix
        ({"destination__s3": {"bucket": "raw", "prefix": "products/web/"}}, "spec.destination"),
        ({"destination__s3": {"bucket": "raw", "prefix": ""}}, "spec.destination"),
        # S3 prefixes are strings, not folders: "products" lists "products-web/..." too
        (
            {
                "source__s3__prefix": "products",
                "destination__s3": {"bucket": "raw", "prefix": "products-web/"},
            },
            "spec.destination",
        ),
        (
            {"workers__resources": {"requests": {"memory": "4Gi"}, "limits": {"memory": "2Gi"}}},
            "spec.workers.resources.requests.memory",
        ),
        (
            {"workers__resources": {"requests": {"cpu": "2500m"}, "limits": {"cpu": 2}}},
            "spec.workers.resources.requests.cpu",
        ),
        ({"workers__resources": {"requests": {"cpu": "lots"}}}, "spec.workers.resources.requests.cpu"),
        ({"limits__maxOutstanding": 100}, "spec.workers.maxReplicas"),
        # every output key under these would fail invalid_key in the workers
        ({"destination__s3__prefix": "./in/"}, "spec.destination.s3.prefix"),
        ({"destination__s3__prefix": "out//"}, "spec.destination.s3.prefix"),
        ({"destination__s3__prefix": "a//b/"}, "spec.destination.s3.prefix"),
        ({"destination__s3__prefix": "out/."}, "spec.destination.s3.prefix"),
    ],
)
def test_check_spec_refuses_what_the_schema_cannot(changes, field):
    problems = check_spec(spec(**changes))
    assert len(problems) == 1
    assert problems[0].startswith(field + ":")


def test_check_spec_allows_separate_prefixes_and_reachable_replicas():
    assert check_spec(spec(destination__s3={"bucket": "raw", "prefix": "web/"})) == []
    assert check_spec(spec(destination__s3={"bucket": "raw", "prefix": "products-web/"})) == []
    for prefix in ("", "out", "out/", "a/b/c/", "a.b/.hidden/", "x..y/"):
        assert check_spec(spec(destination__s3__prefix=prefix)) == [], prefix
    assert check_spec(spec(limits__maxOutstanding=800)) == []  # 800 / 40 = 20 = maxReplicas
    ok = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "0.5", "memory": "1G"}}
    assert check_spec(spec(workers__resources=ok)) == []


# --- properties -----------------------------------------------------------------------------------


SCHEMA_PREFIXES = st.text(alphabet="a./", max_size=8).filter(
    lambda p: not p.startswith("/") and ".." not in p.split("/")
)


@settings(max_examples=300, deadline=None)
@given(SCHEMA_PREFIXES)
def test_check_spec_accepts_exactly_the_destination_prefixes_whose_keys_workers_accept(prefix):
    """The worker's key check is the judge: a prefix check_spec accepts gives valid output keys, and
    one it refuses would make every output fail invalid_key."""
    job = spec(destination__s3__prefix=prefix)
    source = SourceObject(bucket="raw", key="products/a/photo.jpg")
    key = output_key(source, "products/", job.destination, job.output)
    refused = any(p.startswith("spec.destination.s3.prefix:") for p in check_spec(job))
    assert refused == (check_key(key) is not None), (prefix, key)


RANK = {Phase.pending: 0, Phase.listing: 1, Phase.running: 2, Phase.succeeded: 3, Phase.failed: 3}


@st.composite
def count_histories(draw) -> list[Counts]:
    """A job's counts over time: every number only grows, and what is accounted was published."""
    total = published = succeeded = skipped = failed = 0
    done = False
    history = []
    for _ in range(draw(st.integers(1, 15))):
        if not done:
            total += draw(st.integers(0, 50))
            done = draw(st.booleans())
        published = min(total, published + draw(st.integers(0, 60)))
        for _ in range(draw(st.integers(0, 60))):
            if succeeded + skipped + failed >= published:
                break
            outcome = draw(st.sampled_from(["s", "s", "s", "k", "f"]))
            succeeded += outcome == "s"
            skipped += outcome == "k"
            failed += outcome == "f"
        history.append(
            Counts(
                total=total,
                published=published,
                succeeded=succeeded,
                skipped=skipped,
                failed=failed,
                listing_done=done,
                listing_started=True,
            )
        )
    return history


@settings(max_examples=200, deadline=None)
@given(count_histories(), st.lists(st.booleans(), min_size=15, max_size=15))
def test_phases_move_forward_and_finished_is_final(history, suspends):
    status = CompressionJobStatus()
    finished_at = None
    for i, (counts, suspend) in enumerate(zip(history, suspends, strict=False)):
        previous = status
        job = SUSPENDED if suspend else SPEC
        status = next_status(previous, counts, job, WORKERS, T0 + timedelta(seconds=i), 1, 1.0)
        if previous.phase in FINISHED_PHASES:
            assert status.phase is previous.phase
            assert status.completion_time == finished_at
        elif status.phase in RANK and previous.phase in RANK:
            assert RANK[status.phase] >= RANK[previous.phase]
        if status.phase in FINISHED_PHASES and finished_at is None:
            finished_at = status.completion_time
            assert finished_at == T0 + timedelta(seconds=i)
        if counts.listing_done and counts.accounted == counts.total:
            assert status.phase in FINISHED_PHASES
        assert [c.type for c in status.conditions].count("Complete") == 1


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        Counts,
        total=st.integers(0, 100),
        published=st.integers(0, 100),
        succeeded=st.integers(0, 100),
        skipped=st.integers(0, 100),
        failed=st.integers(0, 100),
        bytes_in=st.integers(0, 10**6),
        bytes_out=st.integers(0, 10**6),
        listing_done=st.booleans(),
    ),
    st.none() | st.floats(0, 1000, allow_nan=False),
)
def test_counts_never_exceed_total_whatever_the_input(counts, rate):
    s = next_status(CompressionJobStatus(), counts, SPEC, WORKERS, T0, 1, rate)
    assert s.succeeded + s.skipped + s.failed <= s.total
    assert s.published <= s.total
    done, total = (int(part) for part in s.progress.split("/"))
    assert done <= total == s.total
    assert s.outstanding <= s.published
    assert s.images_per_second >= 0
    assert s.estimated_seconds_remaining is None or s.estimated_seconds_remaining >= 0
    CompressionJobStatus.model_validate(s.model_dump())  # still within the contract's bounds


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("ABC"), st.sampled_from(["True", "False", "Unknown"])), max_size=10),
    st.sampled_from("ABCD"),
    st.sampled_from(["True", "False", "Unknown"]),
)
def test_set_condition_is_idempotent_and_keeps_one_per_type(existing, type, status):
    conditions = []
    for i, (t, s) in enumerate(existing):
        conditions = set_condition(conditions, t, s, "R", "", T0 + timedelta(seconds=i))
    later = T0 + timedelta(hours=1)
    once = set_condition(conditions, type, status, "Why", "msg", later)
    twice = set_condition(once, type, status, "Why", "msg", later + timedelta(hours=1))
    assert once == twice
    types = [c.type for c in once]
    assert len(types) == len(set(types))
    assert set(types) == {t for t, _ in existing} | {type}


def test_no_estimate_from_a_vanishing_rate():
    """A rate near zero (a stalled job's moving average) would make an ETA of centuries, or
    overflow: there is none instead."""
    counts = Counts(total=10, published=10, listing_done=True)
    slow = next_status(CompressionJobStatus(), counts, SPEC, WORKERS, T0, 1, 2.2e-309)
    assert slow.estimated_seconds_remaining is None
    fast = next_status(CompressionJobStatus(), counts, SPEC, WORKERS, T0, 1, 2.0)
    assert fast.estimated_seconds_remaining == 5


def test_check_spec_refuses_input_formats_beyond_the_installations():
    """A job asking for HEIF where the installation allows the web set only is refused, naming the
    setting that would allow it; within the maximum it is accepted."""
    heif = spec(limits__inputFormats=["jpeg", "heif"])
    (problem,) = check_spec(heif)
    assert problem.startswith("spec.limits.inputFormats: heif not allowed by this installation")
    assert "allowedInputFormats (KOMPRESSOR_ALLOWED_INPUT_FORMATS)" in problem
    assert check_spec(heif, [InputFormat.jpeg, InputFormat.heif]) == []
    assert check_spec(SPEC, [InputFormat.jpeg]) == []  # no choice: the web set within the maximum


# --- outages ---------------------------------------------------------------------------------------

ERROR = "ClientError: An error occurred (InternalError) when calling the PutObject operation"


def _types(conditions) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in conditions}


def test_a_step_that_works_makes_both_dependencies_reachable_without_events():
    conditions, notices = reachability([], None, T0)
    assert _types(conditions) == {
        "StorageReachable": ("True", "Reachable"),
        "BrokerReachable": ("True", "Reachable"),
    }
    assert notices == []


def test_an_outage_becomes_a_condition_and_one_warning_then_clears_with_a_normal_event():
    conditions, _ = reachability([], None, T0)
    for failures in range(1, OUTAGE_AFTER_FAILURES):  # a blip changes nothing
        same, notices = reachability(conditions, Outage(Dependency.storage, failures, ERROR), T0, 3)
        assert (same, notices) == (conditions, [])
    events = []
    for failures in range(OUTAGE_AFTER_FAILURES, OUTAGE_AFTER_FAILURES + 3):
        at = T0 + timedelta(seconds=failures)
        conditions, notices = reachability(conditions, Outage(Dependency.storage, failures, ERROR), at, 12)
        events += notices
    storage = next(c for c in conditions if c.type == "StorageReachable")
    assert (storage.status, storage.reason) == ("False", "StorageError")
    assert ERROR in storage.message and f"{OUTAGE_AFTER_FAILURES + 2} steps in a row" in storage.message
    assert storage.last_transition_time == T0 + timedelta(seconds=OUTAGE_AFTER_FAILURES)
    assert _types(conditions)["BrokerReachable"] == ("True", "Reachable")  # the step said nothing of it
    assert [(e.type, e.reason) for e in events] == [("Warning", "StorageError")]
    assert ERROR in events[0].message
    conditions, notices = reachability(conditions, None, T0 + timedelta(minutes=5))
    assert _types(conditions)["StorageReachable"] == ("True", "Reachable")
    assert [(n.type, n.reason) for n in notices] == [("Normal", "StorageRecovered")]


def test_a_broker_outage_names_the_broker_and_a_long_error_is_cut():
    error = "AMQPConnectionError: " + "x" * 5000
    conditions, notices = reachability([], Outage(Dependency.broker, OUTAGE_AFTER_FAILURES, error), T0)
    assert _types(conditions) == {"BrokerReachable": ("False", "BrokerError")}
    assert [n.reason for n in notices] == ["BrokerError"]
    assert len(notices[0].message) < 1000 and len(conditions[0].message) < 1000


@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0.1, max_value=30))
def test_retries_back_off_doubling_up_to_a_cap(failures: int, poll: float):
    delay = retry_delay(failures, poll)
    assert poll <= delay <= max(poll, RETRY_MAX_SECONDS)
    assert retry_delay(failures + 1, poll) >= delay
    if failures >= 1 and delay < RETRY_MAX_SECONDS / 2:
        assert retry_delay(failures + 1, poll) == pytest.approx(2 * delay)


def test_a_failed_status_is_final_and_says_why():
    running = step(total=10, published=4, listing_started=True)
    failed = failed_status(running, "ManifestInvalid", "URL manifest s3://raw/urls.csv: 2 line(s)", T0)
    assert failed.phase is Phase.failed and failed.completion_time == T0
    assert (condition(failed, "Failed").status, condition(failed, "Failed").reason) == (
        "True",
        "ManifestInvalid",
    )
    assert condition(failed, "Progressing").status == "False"
    after = step(failed, at=60, total=10, published=4)
    assert after.phase is Phase.failed and condition(after, "Failed").reason == "ManifestInvalid"


def test_a_refused_spec_fails_the_job_before_it_runs():
    refused = refused_status(CompressionJobStatus(), "SpecInvalid", "spec.workers: refused", T0)
    assert (refused.phase, refused.completion_time) == (Phase.failed, T0)
    failed = condition(refused, "Failed")
    assert (failed.status, failed.reason, failed.message) == ("True", "SpecInvalid", "spec.workers: refused")
    assert [c.type for c in refused.conditions] == ["Failed"]


def test_spec_accepted_names_the_refused_fields_and_clears():
    refused = spec_accepted([], ["spec.source", "spec.output.format"], T0)
    [accepted] = refused
    assert (accepted.status, accepted.reason) == ("False", "ImmutableFieldChanged")
    assert accepted.message == "spec.source, spec.output.format cannot change after start"
    [cleared] = spec_accepted(refused, [], T0 + timedelta(seconds=5))
    assert (cleared.status, cleared.reason, cleared.last_transition_time) == (
        "True",
        "Accepted",
        T0 + timedelta(seconds=5),
    )


def test_worker_deployment_is_written_when_not_owned_and_cleared_only_once_it_was():
    running = CompressionJobStatus(phase=Phase.running)
    assert worker_deployment(running, None, T0) is None  # nothing to write, ever
    waiting = worker_deployment(running, "Deployment shop/a-workers is not this job's", T0)
    assert waiting is not None
    refused = condition(waiting, "WorkerDeployment")
    assert (refused.status, refused.reason) == ("False", "DeploymentNotOwned")
    assert refused.message == "Deployment shop/a-workers is not this job's"
    owned = worker_deployment(waiting, None, T0)
    assert owned is not None
    assert (condition(owned, "WorkerDeployment").status, condition(owned, "WorkerDeployment").reason) == (
        "True",
        "DeploymentOwned",
    )


def test_the_secrets_a_job_needs_are_named_with_their_field_and_keys():
    assert required_secrets(SPEC) == []
    spec = CompressionJobSpec.model_validate(
        {
            **SPEC.model_dump(by_alias=True, mode="json", exclude_none=True),
            "storage": {"credentialsSecret": "s3-keys"},
            "notify": {"webhookURL": "http://hooks.invalid/x", "secretRef": "hook"},
        }
    )
    assert [(n.field, n.name, n.keys) for n in required_secrets(spec)] == [
        ("spec.storage.credentialsSecret", "s3-keys", ("accessKeyId", "secretAccessKey")),
        ("spec.notify.secretRef", "hook", ("hmacKey",)),
    ]


def test_the_worker_secrets_of_the_installation_are_needed_too():
    needs = [(n.name, n.keys) for n in required_secrets(SPEC, "kompressor-broker", "kompressor-storage")]
    assert needs == [
        ("kompressor-broker", ("url",)),
        ("kompressor-storage", ("accessKeyId", "secretAccessKey")),
    ]
    # A job naming its own credentials does not need the default ones; IRSA (no storage Secret) needs none.
    spec = SPEC.model_copy(update={"storage": SPEC.storage.model_copy(update={"credentials_secret": "mine"})})
    assert [n.name for n in required_secrets(spec, "kompressor-broker", "kompressor-storage")] == [
        "kompressor-broker",
        "mine",
    ]
    assert [n.name for n in required_secrets(SPEC, "kompressor-broker", "")] == ["kompressor-broker"]


@pytest.mark.parametrize("phase", [Phase.pending, Phase.running])
def test_a_missing_secret_is_a_false_condition_naming_it_and_never_moves_the_phase(phase):
    previous = CompressionJobStatus(phase=phase)
    waiting = secrets_condition(previous, ["spec.notify.secretRef: Secret shop/hook does not exist"], T0)
    (condition,) = [c for c in waiting.conditions if c.type == SECRETS_READY]
    assert (condition.status, condition.reason) == ("False", SECRET_MISSING)
    assert "shop/hook" in condition.message
    assert waiting.phase is phase
    assert waited_for_secrets(waiting) and not waited_for_secrets(previous)
    # Retried with the same Secret still missing: nothing changes, so nothing is written again.
    assert secrets_condition(waiting, [condition.message], T0 + timedelta(seconds=5)) == waiting
    found = secrets_condition(waiting, [], T0 + timedelta(seconds=9))
    assert not waited_for_secrets(found)
    (condition,) = [c for c in found.conditions if c.type == SECRETS_READY]
    assert (condition.status, condition.last_transition_time) == ("True", T0 + timedelta(seconds=9))


def test_a_started_job_turns_a_stale_secrets_missing_condition_true():
    # kopf's step timer can hold a body read before the start's write of SecretsReady=True: the
    # step's status must not write the stale False back (an e2e job Succeeded still "SecretMissing").
    waiting = secrets_condition(CompressionJobStatus(phase=Phase.pending), ["spec.storage: missing"], T0)
    found = secrets_found(waiting, T0 + timedelta(seconds=3))
    (condition,) = [c for c in found.conditions if c.type == SECRETS_READY]
    assert (condition.status, condition.reason) == ("True", "Found")
    assert secrets_found(found, T0 + timedelta(seconds=9)) == found
    never_waited = CompressionJobStatus(phase=Phase.running)
    assert secrets_found(never_waited, T0) == never_waited  # nothing written for a job that never waited
