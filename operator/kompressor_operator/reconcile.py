"""One job's reconcile: what was observed goes in, what to do comes out.

What it is for: the operator's Controller and local mode both run a job as observe → reconcile →
apply, and every decision of that loop is made here, once: the replicas (policy.py, with the
cluster budget shared in two passes), the next status (status.py), the Events, the finish, what a
failed step or an invalid manifest leaves, and what a finished job still needs (its workers seen
gone, its webhook, its TTL) before it costs nothing.

What it must never do: I/O, read a clock (`now` and `wall` are parameters), or import kopf,
kubernetes or pika. The callers observe (the engine's step, the Deployment's ready pods) and apply
(scale, write the manifest, patch the status, post the Events).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kompressor.crd import (
    FINISHED_PHASES,
    CompressionJobSpec,
    CompressionJobStatus,
    Phase,
    Scaler,
    WorkerCounts,
)
from kompressor.messages import JobRef, task_queue
from kompressor_operator.policy import Claim, Decision, Sample, ScaleState, decide_replicas, grant
from kompressor_operator.status import (
    NOTIFIED,
    WEBHOOK_PENDING,
    Counts,
    Dependency,
    Event,
    Outage,
    Verdict,
    failed_status,
    next_status,
    noted,
    reachability,
    retry_delay,
    spec_accepted,
    throughput,
    worker_deployment,
)


@dataclass(frozen=True)
class Observation:
    """What one step of a running job saw."""

    counts: Counts
    sample: Sample
    """The backlog, as the scaling policy reads it (the engine's Progress.sample)."""
    accounted_now: int
    """Inputs accounted in this step."""
    workers_ready: int
    """Worker pods (local mode: processes) running and ready."""
    workers_desired: int | None = None
    """The Deployment's replicas, read when an external scaler owns them (workers.scaler external)."""
    publishing: bool = False
    """The step's fan-out stopped at its time limit with inputs left and room for them (the
    engine's Progress.publishing)."""


@dataclass(frozen=True)
class Memory:
    """What the reconcile of a job remembers between its steps; the caller keeps it."""

    scale: ScaleState = field(default_factory=ScaleState)
    rate: float | None = None
    """Images per second, smoothed (status.throughput)."""
    last_step: float | None = None
    """When (the `now` clock) the last step that worked was reconciled."""
    listed_announced: bool = False
    failures: int = 0
    """Steps failed in a row (broker or storage)."""
    retry_at: float = 0.0
    """After failed steps: no step before this time (the `now` clock)."""
    publishing: bool = False
    """The last step left inputs to publish and room for them: the next one is due at once."""


def next_step_in(memory: Memory, now: float, poll_interval: float) -> float:
    """Seconds until a running job's next step is due (0: now). A fan-out under way goes on at once:
    waiting a poll interval between its steps made the fan-out's wall time ~1.5x its publishing time
    (bench/million.py). Such a step published for the engine's FAN_OUT_SECONDS (2 s), so steps (and
    status writes) stay ≤ 30 a minute; any other job steps a poll interval after its last step.
    Never before a failed step's backoff is over."""
    backoff = memory.retry_at - now
    if memory.publishing or memory.last_step is None:
        return max(0.0, backoff)
    return max(0.0, backoff, memory.last_step + poll_interval - now)


def due(memory: Memory, now: float, poll_interval: float) -> bool:
    """Whether a running job's next step is due (next_step_in)."""
    return next_step_in(memory, now, poll_interval) <= 0


@dataclass(frozen=True)
class Budget:
    """The cluster-wide worker budget, every job's claim on it (this job's own is replaced), and the
    workers each job's Deployment asks for or has reserved (policy.grant; the operator's BudgetBook)."""

    max_total: int
    claims: Mapping[str, Claim] = field(default_factory=dict)
    held: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What to do after a step: scale to `replicas` when `scaled`, keep `claim` in the budget, write
    `status`, post `events`, remember `memory`. `finished`: the job ends now, so write its manifest,
    scale it to 0 and write what `finish` makes of `status` instead."""

    replicas: int
    """The workers wanted: the policy's, or the external scaler's as observed."""
    scaled: bool
    """Set the Deployment's replicas to `replicas` (never with an external scaler)."""
    reason: str
    """Why `replicas` (the policy's words)."""
    claim: Claim
    status: CompressionJobStatus
    events: tuple[Event, ...]
    memory: Memory
    finished: bool


def budgeted(
    sample: Sample,
    spec: CompressionJobSpec,
    state: ScaleState,
    now: float,
    key: str,
    created: float,
    budget: Budget,
) -> tuple[Decision, Claim]:
    """The replicas within the cluster budget, in two passes: decide without a cap (its `wanted` is
    the job's claim), share the budget among every job's claim and grant what of this job's share is
    free now (policy.grant), decide again with that. Returns the decision and the job's claim to keep."""
    unbudgeted = decide_replicas(sample, spec.workers, state, now)
    claim = Claim(key=key, priority=spec.priority, created=created, wanted=unbudgeted.wanted)
    claims = {**budget.claims, claim.key: claim}
    granted = grant(list(claims.values()), budget.held, budget.max_total, claim.key)
    return decide_replicas(sample, spec.workers, state, now, budget=granted), claim


def reconcile(
    spec: CompressionJobSpec,
    previous: CompressionJobStatus,
    observed: Observation,
    memory: Memory,
    *,
    refused: Sequence[str],
    generation: int,
    job: JobRef,
    created: float,
    budget: Budget,
    now: float,
    wall: datetime,
) -> Plan:
    """One step of a running job that worked: the replicas, the status and the Events.

    `refused`: immutable fields whose edit was refused (SpecAccepted says so). `job` names the
    status's queue, and with `created` (seconds since the epoch) the job's claim on `budget`. `now`
    is a monotonic clock for the scaling window and the throughput; `wall` the time in the status.
    An external scaler's replicas (workers.scaler external) are reported from `observed`, never set.
    """
    rate = memory.rate
    if memory.last_step is not None:
        rate = throughput(rate, observed.accounted_now, now - memory.last_step)
    decision, claim = budgeted(observed.sample, spec, memory.scale, now, job.uid, created, budget)
    replicas, scale = decision.replicas, decision.state
    events: list[Event] = []
    if replicas is None:  # an external scaler's: report it, and start from it if builtin returns
        replicas = observed.workers_desired or 0
        scale = ScaleState(current=replicas)
    elif decision.changed:
        message = f"workers {memory.scale.current} → {replicas}: {decision.reason}"
        events.append(Event("Normal", "Scaled", message))
    workers = WorkerCounts(desired=replicas, ready=observed.workers_ready)
    status = next_status(previous, observed.counts, spec, workers, wall, generation, rate)
    status = status.model_copy(update={"queue": task_queue(job), "backlog": observed.sample.outstanding})
    conditions = spec_accepted(status.conditions, refused, wall)
    conditions, notices = reachability(conditions, None, wall)
    status = status.model_copy(update={"conditions": conditions})
    # A running job's Deployment is its own (start found it so): a WorkerDeployment=False that a
    # step read before the start's True was stored is set right here, not left for ever.
    status = worker_deployment(status, None, wall) or status
    events.extend(notices)
    announce = observed.counts.listing_done and not memory.listed_announced
    if announce:
        events.append(Event("Normal", "Listed", f"{observed.counts.total} inputs found"))
    return Plan(
        replicas=replicas,
        scaled=decision.replicas is not None and decision.changed,
        reason=decision.reason,
        claim=claim,
        status=status,
        events=tuple(events),
        memory=Memory(
            scale=scale,
            rate=rate,
            last_step=now,
            listed_announced=memory.listed_announced or announce,
            publishing=observed.publishing,
        ),
        finished=status.phase in FINISHED_PHASES,
    )


def finish(
    status: CompressionJobStatus, manifest: str, notifies: bool, wall: datetime
) -> tuple[CompressionJobStatus, Event]:
    """A finished status once its manifest is written and its workers scaled to 0: the manifest,
    0 workers desired (the ready ones stay until they are seen gone: `workers_seen`), the webhook
    pending when `notifies`; and the Event that tells the end."""
    kind = "Normal" if status.phase is Phase.succeeded else "Warning"
    event = Event(
        kind,
        status.phase.value,
        f"{status.succeeded} compressed, {status.skipped} skipped, {status.failed} failed; "
        f"manifest {manifest}",
    )
    conditions = status.conditions
    if notifies:
        # The webhook goes out from a later step, once this finished status is stored: no receiver
        # can keep a job from finishing.
        conditions = noted(conditions, WEBHOOK_PENDING, wall)
    status = status.model_copy(
        update={
            "manifest": manifest,
            "workers": WorkerCounts(desired=0, ready=status.workers.ready),
            "conditions": conditions,
        }
    )
    return status, event


def manifest_invalid(
    previous: CompressionJobStatus, error: str, wall: datetime
) -> tuple[CompressionJobStatus, Event]:
    """A URL manifest that cannot be read as one: the job ends Failed (ManifestInvalid), with a Warning."""
    reason = "ManifestInvalid"
    return failed_status(previous, reason, error, wall), Event("Warning", reason, error)


@dataclass(frozen=True)
class Retry:
    """What a failed step leaves: the status (the phase stays), the Events, when to try again."""

    status: CompressionJobStatus
    events: tuple[Event, ...]
    memory: Memory
    delay: float
    """Seconds before the next step."""


def step_failed(
    previous: CompressionJobStatus,
    memory: Memory,
    dependency: Dependency,
    error: str,
    poll_interval: float,
    now: float,
    wall: datetime,
) -> Retry:
    """The broker or the storage failed the step: the next one waits longer (retry_delay), and an
    outage that lasts shows in StorageReachable/BrokerReachable and in an Event (reachability)."""
    failures = memory.failures + 1
    delay = retry_delay(failures, poll_interval)
    conditions, events = reachability(previous.conditions, Outage(dependency, failures, error), wall, delay)
    return Retry(
        status=previous.model_copy(update={"conditions": conditions}),
        events=tuple(events),
        memory=replace(memory, failures=failures, retry_at=now + delay),
        delay=delay,
    )


# --- a finished job -------------------------------------------------------------------------------


def webhook_pending(status: CompressionJobStatus) -> bool:
    """The finish webhook is still to be sent, or sent again (Notified Unknown)."""
    return any(c.type == NOTIFIED and c.status == "Unknown" for c in status.conditions)


def workers_pending(status: CompressionJobStatus) -> bool:
    """A finished job's status still counts workers: they are to be followed until seen gone."""
    return status.workers.ready > 0 or status.workers.desired > 0


def needs_steps(status: CompressionJobStatus) -> bool:
    """Whether a job still needs its periodic step: while it runs, and once finished until its
    workers are seen gone and its webhook settled. After that it costs nothing (its TTL aside)."""
    if status.phase not in FINISHED_PHASES:
        return True
    return workers_pending(status) or webhook_pending(status)


def recorded_workers(body: Mapping[str, Any]) -> int:
    """The workers a job's status last recorded asking for, where they count against the cluster's
    budget (the builtin scaler, not finished); 0 otherwise. What an operator that has just started
    books for a job before the job itself has resumed (handlers.booked_workers)."""
    scaler = ((body.get("spec") or {}).get("workers") or {}).get("scaler", Scaler.builtin.value)
    try:
        status = CompressionJobStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return 0
    if scaler != Scaler.builtin.value or status.phase in FINISHED_PHASES:
        return 0
    return status.workers.desired


def notified(
    status: CompressionJobStatus, verdict: Verdict, wall: datetime
) -> tuple[CompressionJobStatus, tuple[Event, ...]]:
    """A finished status after a webhook attempt: the Notified condition says `verdict`; an Event
    when the delivery ended (Normal delivered, Warning failed), none while it is retried."""
    conditions = noted(status.conditions, verdict, wall)
    events: tuple[Event, ...] = ()
    if verdict.retry_in is None:
        events = (
            Event("Normal" if verdict.status == "True" else "Warning", verdict.reason, verdict.message),
        )
    return status.model_copy(update={"conditions": conditions}), events


def workers_seen(status: CompressionJobStatus, ready: int) -> CompressionJobStatus:
    """A finished status with the worker pods seen ready now: it keeps telling the truth as they go."""
    return status.model_copy(update={"workers": WorkerCounts(desired=0, ready=ready)})


def expires_in(status: CompressionJobStatus, ttl_seconds: int | None, wall: datetime) -> float | None:
    """Seconds until a finished job is deleted (spec.ttlSecondsAfterFinished; ≤ 0: now), None when
    it never is (no TTL, or not finished)."""
    if ttl_seconds is None or status.phase not in FINISHED_PHASES or status.completion_time is None:
        return None
    return ttl_seconds - (wall - status.completion_time).total_seconds()
