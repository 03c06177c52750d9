"""The reconcile of one job as pure functions: replicas within the budget, the status, the Events,
the finish, failed steps, and what a finished job still needs before it costs nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kompressor.crd import (
    FINISHED_PHASES,
    CompressionJobSpec,
    CompressionJobStatus,
    Phase,
    Scaler,
    WorkerCounts,
)
from kompressor.messages import JobRef, task_queue
from kompressor_operator.policy import Claim, Sample, ScaleState, allocate_budget
from kompressor_operator.reconcile import (
    Budget,
    Memory,
    Observation,
    budgeted,
    due,
    expires_in,
    finish,
    manifest_invalid,
    needs_steps,
    next_step_in,
    notified,
    reconcile,
    recorded_workers,
    step_failed,
    webhook_pending,
    workers_seen,
)
from kompressor_operator.status import NOTIFIED, Counts, Dependency, Event, Verdict, set_condition
from tests.unit.test_status import count_histories

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SPEC = CompressionJobSpec.model_validate(
    {
        "source": {"s3": {"bucket": "raw", "prefix": "products/"}},
        "destination": {"s3": {"bucket": "web", "prefix": "out/"}},
        "workers": {"minReplicas": 0, "maxReplicas": 5, "tasksPerReplica": 10, "scaleDownDelaySeconds": 30},
    }
)
KEY = "uid-a"
JOB = JobRef(namespace="shop", name="catalog", uid=KEY)


def observe(counts: Counts, queued: int = 0, accounted_now: int = 0, workers_ready: int = 0) -> Observation:
    finished = counts.listing_done and counts.accounted >= counts.total
    sample = Sample(ready=queued, published=counts.published, accounted=counts.accounted, finished=finished)
    return Observation(counts, sample, accounted_now, workers_ready)


def run(
    observed: Observation,
    previous: CompressionJobStatus | None = None,
    memory: Memory | None = None,
    *,
    spec: CompressionJobSpec = SPEC,
    refused: tuple[str, ...] = (),
    budget: Budget | None = None,
    now: float = 100.0,
):
    return reconcile(
        spec,
        previous or CompressionJobStatus(),
        observed,
        memory or Memory(),
        refused=refused,
        generation=2,
        job=JOB,
        created=1.0,
        budget=budget or Budget(max_total=100),
        now=now,
        wall=T0,
    )


def reasons(events) -> list[str]:
    return [e.reason for e in events]


def condition(status: CompressionJobStatus, type: str):
    [found] = [c for c in status.conditions if c.type == type]
    return found


# --- a running job ----------------------------------------------------------------------------------


def test_a_backlog_scales_up_with_an_event_and_the_status_says_so():
    plan = run(observe(Counts(total=100, published=40, listing_started=True), queued=40, workers_ready=1))
    assert (plan.replicas, plan.scaled, plan.finished) == (4, True, False)
    assert plan.events == (Event("Normal", "Scaled", f"workers 0 → 4: {plan.reason}"),)
    assert plan.status.phase is Phase.running
    assert plan.status.workers == WorkerCounts(desired=4, ready=1)
    assert plan.status.observed_generation == 2
    assert plan.claim == Claim(key=KEY, priority=SPEC.priority, created=1.0, wanted=4)
    assert plan.memory.scale.current == 4 and plan.memory.last_step == 100.0
    assert (
        condition(plan.status, "SpecAccepted").status,
        condition(plan.status, "StorageReachable").status,
    ) == (
        "True",
        "True",
    )


def test_the_status_names_the_queue_and_its_backlog_for_an_external_scaler():
    plan = run(observe(Counts(total=100, published=40, listing_started=True), queued=30))
    assert (plan.status.queue, plan.status.backlog) == (task_queue(JOB), 40)


def test_an_external_scaler_is_reported_and_never_set():
    external = SPEC.model_copy(
        update={"workers": SPEC.workers.model_copy(update={"scaler": Scaler.external})}
    )
    counts = Counts(total=100, published=40, listing_started=True)
    observed = Observation(counts, observe(counts, queued=40).sample, 0, workers_ready=2, workers_desired=3)
    plan = run(observed, spec=external, memory=Memory(ScaleState(1)))
    assert (plan.replicas, plan.scaled, plan.events) == (3, False, ())
    assert plan.status.workers == WorkerCounts(desired=3, ready=2)
    assert plan.memory.scale == ScaleState(current=3)  # builtin, if it returns, starts from there
    assert plan.claim.wanted == 0  # no claim on the budget


def test_a_refused_immutable_edit_shows_in_spec_accepted():
    plan = run(observe(Counts(total=1, listing_started=True)), refused=("spec.output.quality",))
    accepted = condition(plan.status, "SpecAccepted")
    assert (accepted.status, accepted.reason) == ("False", "ImmutableFieldChanged")
    assert accepted.message == "spec.output.quality cannot change after start"


def test_a_running_job_clears_a_stale_deployment_not_owned():
    """The step may read the status the start's WorkerDeployment=True has not reached yet: a running
    job owns its Deployment, so the step writes True itself; without that condition it adds none."""
    stale = CompressionJobStatus(
        conditions=set_condition([], "WorkerDeployment", False, "DeploymentNotOwned", "taken", T0)
    )
    cleared = condition(run(observe(Counts(total=1, listing_started=True)), stale).status, "WorkerDeployment")
    assert (cleared.status, cleared.reason) == ("True", "DeploymentOwned")
    fresh = run(observe(Counts(total=1, listing_started=True))).status
    assert "WorkerDeployment" not in {c.type for c in fresh.conditions}


def test_listed_is_announced_once():
    counts = Counts(total=3, published=3, listing_done=True)
    first = run(observe(counts, queued=3))
    again = run(observe(counts, queued=3), first.status, first.memory, now=101.0)
    assert reasons(first.events).count("Listed") == 1 and "Listed" not in reasons(again.events)
    assert first.memory.listed_announced and again.memory.listed_announced


def test_throughput_is_measured_from_the_second_step_on():
    counts = Counts(total=100, published=50, succeeded=10, listing_done=True)
    first = run(observe(counts, accounted_now=10))
    assert first.memory.rate is None
    second = run(observe(counts, accounted_now=20), first.status, first.memory, now=110.0)
    assert second.memory.rate == pytest.approx(2.0)  # 20 in 10 s


def test_a_finished_job_scales_to_zero_and_is_finished():
    plan = run(
        observe(Counts(total=2, published=2, succeeded=2, listing_done=True)), memory=Memory(ScaleState(3))
    )
    assert (plan.replicas, plan.scaled, plan.finished, plan.status.phase) == (0, True, True, Phase.succeeded)
    assert plan.claim.wanted == 0


def test_the_budget_is_shared_in_two_passes():
    """The job claims what it would run without a budget, and runs what is left of the budget after
    the jobs ahead of it (higher priority, or older) took theirs."""
    sample = Sample(ready=50, published=50, accounted=0)
    ahead = Claim(key="uid-b", priority=1, created=5.0, wanted=4)
    behind = Claim(key="uid-c", priority=0, created=9.0, wanted=3)
    budget = Budget(max_total=6, claims={"uid-b": ahead, "uid-c": behind, KEY: Claim(KEY, 0, 1.0, 0)})
    decision, claim = budgeted(sample, SPEC, ScaleState(), 0.0, KEY, 1.0, budget)
    assert claim == Claim(key=KEY, priority=0, created=1.0, wanted=5)  # its stale claim replaced
    assert decision.replicas == 2  # 6 - 4 for the job ahead; the younger one gets nothing
    assert "capped by the cluster worker budget at 2" in decision.reason
    assert decision.wanted == 5


# --- the finish -------------------------------------------------------------------------------------


def finished_status(phase: Phase = Phase.succeeded, ready: int = 2) -> CompressionJobStatus:
    return CompressionJobStatus(
        phase=phase,
        total=3,
        succeeded=2,
        failed=1,
        completion_time=T0,
        workers=WorkerCounts(desired=3, ready=ready),
    )


@pytest.mark.parametrize(("phase", "kind"), [(Phase.succeeded, "Normal"), (Phase.failed, "Warning")])
def test_the_finish_writes_the_manifest_and_asks_for_no_workers(phase, kind):
    status, event = finish(finished_status(phase), "s3://web/m.jsonl", notifies=False, wall=T0)
    assert status.manifest == "s3://web/m.jsonl"
    assert status.workers == WorkerCounts(desired=0, ready=2)  # ready until they are seen gone
    assert event == Event(kind, phase.value, "2 compressed, 0 skipped, 1 failed; manifest s3://web/m.jsonl")
    assert not webhook_pending(status)


def test_the_finish_leaves_the_webhook_pending_when_the_job_notifies():
    status, _ = finish(finished_status(), "s3://web/m.jsonl", notifies=True, wall=T0)
    pending = condition(status, NOTIFIED)
    assert (pending.status, pending.reason) == ("Unknown", "WebhookPending")
    assert webhook_pending(status)


def test_an_invalid_manifest_fails_the_job_with_a_warning():
    status, event = manifest_invalid(CompressionJobStatus(phase=Phase.running), "row 3: not a URL", T0)
    assert (status.phase, status.completion_time) == (Phase.failed, T0)
    assert condition(status, "Failed").reason == "ManifestInvalid"
    assert event == Event("Warning", "ManifestInvalid", "row 3: not a URL")


def test_a_finished_job_needs_steps_until_its_workers_are_gone_and_its_webhook_settled():
    """The regression of `WORKERS 1` for ever: the finish writes the workers it saw, and the job is
    stepped (its Deployment read) until it sees none; then it costs nothing."""
    status, _ = finish(finished_status(ready=1), "s3://m", notifies=True, wall=T0)
    assert needs_steps(status)
    status = workers_seen(status, 0)
    assert status.workers == WorkerCounts(desired=0, ready=0)
    assert needs_steps(status)  # the webhook is still pending
    status, events = notified(status, Verdict("True", "WebhookDelivered", "delivered on attempt 1"), T0)
    assert events == (Event("Normal", "WebhookDelivered", "delivered on attempt 1"),)
    assert not needs_steps(status)
    assert status.phase is Phase.succeeded and status.completion_time == T0
    assert needs_steps(CompressionJobStatus(phase=Phase.running))


def test_a_retried_webhook_stays_pending_without_an_event():
    retry = Verdict("Unknown", "WebhookRetrying", "attempt 1 of 5: 503; next attempt in 1 s", 1.0)
    status, events = notified(finished_status(ready=0), retry, T0)
    assert events == () and webhook_pending(status)
    failed = Verdict("False", "WebhookFailed", "attempt 5 of 5: 503")
    status, events = notified(status, failed, T0)
    assert events == (Event("Warning", "WebhookFailed", "attempt 5 of 5: 503"),) and not webhook_pending(
        status
    )


@pytest.mark.parametrize(
    ("ttl", "after", "left"),
    [(None, 10, None), (60, 10, 50.0), (60, 60, 0.0), (0, 5, -5.0)],
)
def test_a_ttl_counts_from_the_completion(ttl, after, left):
    assert expires_in(finished_status(), ttl, T0 + timedelta(seconds=after)) == left


def test_a_job_not_finished_never_expires():
    assert expires_in(CompressionJobStatus(phase=Phase.running, completion_time=T0), 0, T0) is None


# --- failed steps -----------------------------------------------------------------------------------


def test_failed_steps_back_off_and_show_as_an_outage_then_the_next_step_clears_it():
    previous = CompressionJobStatus(phase=Phase.running)
    first = step_failed(previous, Memory(), Dependency.storage, "ClientError: 500", 2.0, now=10.0, wall=T0)
    assert (first.memory.failures, first.delay, first.events) == (1, 2.0, ())
    assert not due(first.memory, 11.9, 2.0) and due(first.memory, 12.0, 2.0)
    second = step_failed(first.status, first.memory, Dependency.storage, "ClientError: 500", 2.0, 12.0, T0)
    assert (second.memory.failures, second.delay) == (2, 4.0)
    assert reasons(second.events) == ["StorageError"]
    assert condition(second.status, "StorageReachable").status == "False"
    assert second.status.phase is Phase.running
    worked = run(
        observe(Counts(total=5, published=5, listing_started=True)), second.status, second.memory, now=16.0
    )
    assert worked.memory.failures == 0 and reasons(worked.events)[-1] == "StorageRecovered"
    assert condition(worked.status, "StorageReachable").status == "True"


def test_a_step_is_due_a_poll_interval_after_the_last():
    assert due(Memory(), 0.0, 3.0)
    assert not due(Memory(last_step=10.0), 12.9, 3.0) and due(Memory(last_step=10.0), 13.0, 3.0)


def test_a_fan_out_under_way_steps_again_at_once_but_not_before_a_backoff():
    observed = replace(observe(Counts(total=5000, published=2000)), publishing=True)
    plan = run(observed, now=10.0)
    assert plan.memory.publishing and due(plan.memory, 10.0, 3.0)
    assert next_step_in(plan.memory, 10.0, 3.0) == 0
    backing_off = replace(plan.memory, retry_at=14.0)
    assert not due(backing_off, 13.9, 3.0) and next_step_in(backing_off, 13.0, 3.0) == 1.0
    assert due(backing_off, 14.0, 3.0)
    # the fan-out ended (or maxOutstanding reached): back to the poll interval
    after = run(observe(Counts(total=5000, published=5000, listing_done=True)), memory=plan.memory, now=12.0)
    assert not after.memory.publishing and next_step_in(after.memory, 12.0, 3.0) == 3.0


# --- properties -------------------------------------------------------------------------------------

memories = st.builds(
    Memory,
    last_step=st.none() | st.floats(0, 1e6),
    retry_at=st.floats(0, 1e6),
    publishing=st.booleans(),
)


@given(memories, st.floats(0, 1e6), st.floats(0.1, 600))
def test_only_a_fan_out_under_way_steps_before_its_poll_interval(memory, now, poll_interval):
    """A job with nothing left to publish (finished, idle, or held back by maxOutstanding) keeps
    the poll interval and the backoff; one publishing is never later than that, and never before
    its backoff."""
    wait = next_step_in(memory, now, poll_interval)
    assert wait >= 0 and due(memory, now, poll_interval) == (wait == 0)
    paced = now >= memory.retry_at and (memory.last_step is None or now - memory.last_step >= poll_interval)
    if not memory.publishing:
        assert due(memory, now, poll_interval) == paced
        if memory.last_step is not None:
            assert wait == max(0.0, memory.retry_at - now, memory.last_step + poll_interval - now)
    else:
        assert wait <= next_step_in(replace(memory, publishing=False), now, poll_interval)
        assert due(memory, now, poll_interval) == (now >= memory.retry_at)


@given(count_histories(), st.floats(0.1, 600))
def test_a_step_that_publishes_nothing_more_leaves_a_poll_interval_to_the_next(history, poll_interval):
    memory, now = Memory(), 0.0
    for counts in history:
        now += 1.0
        plan = run(observe(counts), memory=memory, now=now)
        assert not plan.memory.publishing
        assert next_step_in(plan.memory, now, poll_interval) == pytest.approx(poll_interval)
        memory = plan.memory


claims_st = st.dictionaries(
    st.sampled_from(["uid-b", "uid-c", "uid-d"]),
    st.tuples(st.integers(-1, 1), st.floats(0, 3), st.integers(0, 8)),
    max_size=3,
).map(lambda d: {k: Claim(k, p, c, w) for k, (p, c, w) in d.items()})


@settings(max_examples=200, deadline=None)
@given(
    count_histories(),
    st.lists(
        st.tuples(st.integers(0, 100), st.integers(0, 6), claims_st, st.integers(0, 12), st.floats(0.5, 20)),
        min_size=15,
        max_size=15,
    ),
)
def test_properties_over_any_run(history, steps):
    """Over any run: replicas within maxReplicas and the budget's share, 0 once finished; the
    numbers shown never go back; a finished status is never left, and its completion time kept."""
    status, memory, now = CompressionJobStatus(), Memory(), 0.0
    finished_at = None
    for counts, (queued, ready, claims, max_total, dt) in zip(history, steps, strict=False):
        now += dt
        previous = status
        budget = Budget(max_total, claims)
        plan = run(observe(counts, queued, workers_ready=ready), previous, memory, budget=budget, now=now)
        shares = allocate_budget([*(c for k, c in claims.items() if k != KEY), plan.claim], max_total)
        assert plan.replicas <= min(SPEC.workers.max_replicas, shares[KEY], max_total)
        assert plan.replicas == plan.status.workers.desired and plan.status.workers.ready == ready
        assert plan.finished == (plan.status.phase in FINISHED_PHASES)
        if plan.finished:
            assert plan.replicas == 0
        for name in ("total", "published", "succeeded", "skipped", "failed"):
            assert getattr(plan.status, name) >= getattr(previous, name), name
        if previous.phase in FINISHED_PHASES:
            assert (plan.status.phase, plan.status.completion_time) == (previous.phase, finished_at)
        status, memory = plan.status, plan.memory
        if plan.finished and finished_at is None:
            finished_at = status.completion_time
            status, _ = finish(status, "s3://m", notifies=True, wall=T0)
            assert status.phase in FINISHED_PHASES and status.workers.desired == 0
            status = workers_seen(status, 0)
            assert status.phase in FINISHED_PHASES and status.completion_time == finished_at


def test_the_workers_a_status_recorded_count_while_the_builtin_scaler_runs_the_job():
    running = {"spec": {}, "status": {"phase": "Running", "workers": {"desired": 3, "ready": 1}}}
    assert recorded_workers(running) == 3
    assert recorded_workers({**running, "spec": {"workers": {"scaler": "external"}}}) == 0
    assert recorded_workers({**running, "status": {"phase": "Succeeded", "workers": {"desired": 3}}}) == 0
    assert recorded_workers({"spec": {}}) == 0  # new: no status yet
    assert recorded_workers({"spec": {}, "status": {"phase": "Nonsense"}}) == 0
