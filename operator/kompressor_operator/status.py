"""A job's status as pure functions: phase, conditions, progress, and the spec checks behind them.

What it is for: given the previous status, the job's counts and spec, the workers and the time,
compute the next `CompressionJobStatus` (`next_status`); keep conditions by the Kubernetes API
conventions (`set_condition`); smooth throughput (`throughput`); name spec edits that are not allowed
once a job has started (`immutable_changes`) and spec mistakes the CRD schema cannot express
(`check_spec`). The handlers and local mode write what these return; nothing here writes anything.

What it must never do: I/O, read a clock (`now` is a parameter), or import kopf, kubernetes or pika.

Choices, documented once here:

- Phases: Pending until listing starts; Listing while the listing runs and nothing is published;
  Running; Suspended while `spec.suspend` and not finished; at the end Succeeded or Failed. A phase
  never goes back (Pending < Listing < Running < finished; Suspended is outside that order), and a
  finished phase is final: later calls update the numbers, never the phase, the conditions or the
  completion time. So a Failed set by a handler (an invalid spec) is not undone by counts.
- The end: the listing is done and every input is accounted (succeeded + skipped + failed = total).
  An empty job (total 0 after listing) Succeeds.
- When failures make a job Failed: when more than `FAILED_FRACTION_THRESHOLD` (1%) of its inputs
  failed. At catalog scale a few corrupt, truncated or oversized uploads are normal; each is recorded
  with its reason (status.failuresByReason, the manifest), and a job that Failed for any of them would
  make Failed mean nothing, because every large job would end that way. A systematic fault (the
  destination refuses writes, a wrong format setting, a broken codec) fails far more than 1% and
  shows as Failed. A Succeeded job with failures says so: its Complete condition has the reason
  `CompletedWithFailures`.
- Conditions (always present, so `kubectl wait --for=condition=...` works in either direction):
  `Listed` (the listing is done), `Progressing` (listing or running), `Suspended`, `Complete`
  (Succeeded) and `Failed`. Conditions of other types (a handler's `SpecInvalid`, say) are kept.
- `StorageReachable` and `BrokerReachable` (`reachability`): True after a step that worked; False
  with the error once steps have failed OUTAGE_AFTER_FAILURES times in a row, with a Warning Event
  naming it, while the next steps back off (`retry_delay`); True again, with a Normal Event, after
  the next step that works. The phase is left alone: an outage is not the job's end.
- A Secret the spec names that does not exist yet is not a spec error: the job waits, Pending, with
  `SecretsReady=False` (reason `SecretMissing`, naming the field and the Secret) until it appears,
  as a Pod waits for its Secrets (`required_secrets`, `secrets_condition`).
- Numbers: `total` shown is never below what was published or accounted, so progress never exceeds
  100% while the listing count lags; `outstanding` = published - accounted; `progress` is
  "(succeeded+skipped)/total"; `saved` is the share of input bytes not written ("61%"; "" before
  any output, and for a job with renditions, whose outputs are a set per source, not a copy);
  `estimatedSecondsRemaining` is known only once the listing is done and throughput is positive
  (the total is unknown before), and 0 when finished.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from kompressor import inputs
from kompressor.crd import (
    FINISHED_PHASES,
    WEB_INPUT_FORMATS,
    CompressionJobSpec,
    CompressionJobStatus,
    Condition,
    InputFormat,
    Phase,
    RenditionCounts,
    WorkerCounts,
)
from kompressor.quantity import parse_quantity
from kompressor.renditions import outputs_per_input

FAILED_FRACTION_THRESHOLD = 0.01
"""A finished job Fails when more than this share of its inputs failed (see the module docstring)."""

LISTED = "Listed"
PROGRESSING = "Progressing"
SUSPENDED = "Suspended"
COMPLETE = "Complete"
FAILED = "Failed"
CONDITION_TYPES = (LISTED, PROGRESSING, SUSPENDED, COMPLETE, FAILED)

_RANK = {Phase.pending: 0, Phase.listing: 1, Phase.running: 2, Phase.succeeded: 3, Phase.failed: 3}


@dataclass(frozen=True)
class Counts:
    """What the operator knows of a job's inputs: found, published and how each one ended."""

    total: int = 0
    published: int = 0
    succeeded: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    failures_by_reason: tuple[tuple[str, int], ...] = ()
    """(reason, count) pairs; kept sorted, so equal counts compare equal."""
    renditions: tuple[int, int, int] = (0, 0, 0)
    """With spec.renditions: (succeeded, skipped, failed) outputs."""
    listing_done: bool = False
    listing_started: bool = False
    """The lister has begun (also implied by anything found, published or listing_done)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is int and value < 0:
                raise ValueError(f"Counts.{f.name} is {value}; counts are never negative")
        object.__setattr__(self, "failures_by_reason", tuple(sorted(self.failures_by_reason)))

    @property
    def accounted(self) -> int:
        """Inputs whose end is known: succeeded, skipped or failed."""
        return self.succeeded + self.skipped + self.failed

    @property
    def started(self) -> bool:
        return self.listing_started or self.listing_done or self.total > 0 or self.published > 0


def set_condition(
    conditions: Sequence[Condition],
    type: str,
    status: bool | str,
    reason: str,
    message: str,
    now: datetime,
) -> list[Condition]:
    """`conditions` with the one of `type` set; lastTransitionTime moves only when status changes.

    One entry per type: a condition of `type` is replaced in place (later duplicates dropped), or
    appended when there is none. `status` is True/False or "True"/"False"/"Unknown".
    """
    text = ("True" if status else "False") if isinstance(status, bool) else status
    out: list[Condition] = []
    placed = False
    for condition in conditions:
        if condition.type != type:
            out.append(condition)
        elif not placed:
            placed = True
            kept = condition.status == text and condition.last_transition_time is not None
            when = condition.last_transition_time if kept else now
            out.append(_condition(type, text, reason, message, when))
    if not placed:
        out.append(_condition(type, text, reason, message, now))
    return out


def _condition(type: str, status: str, reason: str, message: str, when: datetime | None) -> Condition:
    return Condition(type=type, status=status, reason=reason, message=message, last_transition_time=when)


def throughput(previous: float | None, accounted_delta: int, seconds: float, smoothing: float = 0.3) -> float:
    """Images per second, smoothed: an exponentially weighted moving average of each interval's rate.

    `smoothing` is the weight of the newest interval (0 < smoothing ≤ 1). An interval of no length
    leaves the previous value (or 0.0) as it was; a negative delta (a recount) counts as 0.
    """
    if not 0 < smoothing <= 1:
        raise ValueError(f"smoothing {smoothing} must be in (0, 1]")
    if seconds <= 0:
        return previous if previous is not None else 0.0
    rate = max(accounted_delta, 0) / seconds
    if previous is None:
        return rate
    return smoothing * rate + (1 - smoothing) * previous


# An estimate beyond this says nothing (and a near-zero rate would overflow the status's int64).
ETA_LIMIT_SECONDS = 366 * 86400


def _eta(remaining: int, rate: float) -> int | None:
    seconds = remaining / rate
    return math.ceil(seconds) if seconds <= ETA_LIMIT_SECONDS else None


def next_status(
    previous: CompressionJobStatus,
    counts: Counts,
    spec: CompressionJobSpec,
    workers: WorkerCounts,
    now: datetime,
    generation: int,
    throughput: float | None,
) -> CompressionJobStatus:
    """The status to write now (see the module docstring for phases, conditions and numbers)."""
    total = max(counts.total, counts.published, counts.accounted)
    done = counts.succeeded + counts.skipped
    finished_before = previous.phase in FINISHED_PHASES
    phase = previous.phase if finished_before else _phase(previous.phase, counts, spec, total)
    finished = phase in FINISHED_PHASES
    rate = max(throughput or 0.0, 0.0)
    remaining = total - counts.accounted
    eta: int | None = None
    if finished:
        eta = 0
    elif counts.listing_done and rate > 0 and phase is not Phase.suspended:
        eta = _eta(remaining, rate)
    start = previous.start_time
    if start is None and (counts.started or phase not in (Phase.pending, Phase.suspended)):
        start = now
    numbers: dict[str, Any] = {
        "total": total,
        "published": counts.published,
        "succeeded": counts.succeeded,
        "skipped": counts.skipped,
        "failed": counts.failed,
        "outstanding": max(counts.published - counts.accounted, 0),
        "progress": f"{done}/{total}",
        "bytes_in": counts.bytes_in,
        "bytes_out": counts.bytes_out,
        # Renditions are a set made from each source, not a smaller copy of it: nothing "saved".
        "saved": "" if spec.renditions else _saved(counts.bytes_in, counts.bytes_out),
        "images_per_second": 0.0 if finished else round(rate, 3),
        "estimated_seconds_remaining": eta,
        "failures_by_reason": dict(counts.failures_by_reason),
        "workers": workers,
        "observed_generation": generation,
        "start_time": start,
    }
    if spec.renditions:
        outputs = outputs_per_input(spec)
        succeeded, skipped, failed = counts.renditions
        numbers["renditions"] = RenditionCounts(
            succeeded=succeeded,
            skipped=skipped,
            failed=failed,
            progress=f"{succeeded + skipped}/{total * outputs}",
        )
    if finished_before:
        return previous.model_copy(update=numbers)
    conditions = previous.conditions
    for type, status, reason, message in _conditions(phase, counts, total):
        conditions = set_condition(conditions, type, status, reason, message, now)
    return previous.model_copy(
        update={
            **numbers,
            "phase": phase,
            "conditions": conditions,
            "completion_time": now if finished else None,
        }
    )


def _phase(previous: Phase, counts: Counts, spec: CompressionJobSpec, total: int) -> Phase:
    if counts.listing_done and counts.accounted >= total:
        return Phase.failed if _too_many_failures(counts.failed, total) else Phase.succeeded
    if spec.suspend:
        return Phase.suspended
    if not counts.started:
        phase = Phase.pending
    elif not counts.listing_done and counts.published == 0:
        phase = Phase.listing
    else:
        phase = Phase.running
    if previous in _RANK and _RANK[previous] > _RANK[phase]:
        return previous
    return phase


def _too_many_failures(failed: int, total: int) -> bool:
    return failed > 0 and failed / total > FAILED_FRACTION_THRESHOLD


def _saved(bytes_in: int, bytes_out: int) -> str:
    if bytes_in <= 0:
        return ""
    return f"{(bytes_in - bytes_out) * 100 // bytes_in}%"


def _conditions(phase: Phase, counts: Counts, total: int) -> list[tuple[str, bool, str, str]]:
    """(type, status, reason, message) of each condition this module owns, for `phase`."""
    tally = f"{counts.succeeded} compressed, {counts.skipped} skipped, {counts.failed} failed of {total}"
    if counts.listing_done:
        listed = (LISTED, True, "ListingComplete", f"found {total} inputs")
    elif counts.started:
        listed = (LISTED, False, "Listing", f"{counts.total} inputs found so far")
    else:
        listed = (LISTED, False, "NotStarted", "the listing has not started")
    progressing = {
        Phase.pending: (False, "Pending", "waiting for the listing to start"),
        Phase.listing: (True, "Listing", "listing the source"),
        Phase.running: (True, "Running", tally),
        Phase.suspended: (False, "Suspended", "spec.suspend is true"),
    }.get(phase, (False, "Finished", tally))
    suspended = (
        (
            SUSPENDED,
            True,
            "SuspendedBySpec",
            # An external scaler's workers are not the operator's to stop (docs/scaling.md).
            "spec.suspend is true: queue kept; workers scaled to 0 unless workers.scaler is external",
        )
        if phase is Phase.suspended
        else (SUSPENDED, False, "NotSuspended", "")
    )
    if phase is Phase.succeeded:
        reason = "CompletedWithFailures" if counts.failed else "AllInputsAccounted"
        complete = (COMPLETE, True, reason, tally)
    else:
        complete = (COMPLETE, False, "Failed" if phase is Phase.failed else "InProgress", "")
    if phase is Phase.failed:
        failed = (
            FAILED,
            True,
            "TooManyFailures",
            f"{counts.failed} of {total} inputs failed, more than {FAILED_FRACTION_THRESHOLD:.0%}; "
            "see status.failuresByReason and the manifest",
        )
    else:
        failed = (FAILED, False, "NotFailed", "")
    return [listed, (PROGRESSING, *progressing), suspended, complete, failed]


def failed_status(
    previous: CompressionJobStatus, reason: str, message: str, now: datetime
) -> CompressionJobStatus:
    """`previous` ended Failed for a reason its counts do not show (a URL manifest that is not one):
    phase Failed, completed now, and the Failed, Progressing and Complete conditions saying why."""
    conditions = set_condition(previous.conditions, FAILED, True, reason, message, now)
    conditions = set_condition(conditions, PROGRESSING, False, "Finished", message, now)
    conditions = set_condition(conditions, COMPLETE, False, "Failed", "", now)
    return previous.model_copy(
        update={"phase": Phase.failed, "completion_time": now, "conditions": conditions}
    )


def refused_status(
    previous: CompressionJobStatus, reason: str, message: str, now: datetime
) -> CompressionJobStatus:
    """`previous` ended Failed before it ran, for a spec (or a storage endpoint, or a Deployment
    the API server refuses) the operator will not run: phase Failed, completed now, the Failed
    condition saying why."""
    return previous.model_copy(
        update={
            "phase": Phase.failed,
            "completion_time": now,
            "conditions": set_condition(previous.conditions, FAILED, True, reason, message, now),
        }
    )


SPEC_ACCEPTED = "SpecAccepted"


def spec_accepted(conditions: Sequence[Condition], refused: Sequence[str], now: datetime) -> list[Condition]:
    """`conditions` with SpecAccepted: False naming the immutable fields whose edit was refused
    (the job keeps their values from its start), True when there is none."""
    if refused:
        message = f"{', '.join(refused)} cannot change after start"
        return set_condition(conditions, SPEC_ACCEPTED, False, "ImmutableFieldChanged", message, now)
    return set_condition(conditions, SPEC_ACCEPTED, True, "Accepted", "", now)


WORKER_DEPLOYMENT = "WorkerDeployment"
DEPLOYMENT_NOT_OWNED = "DeploymentNotOwned"


def worker_deployment(
    previous: CompressionJobStatus, not_owned: str | None, now: datetime
) -> CompressionJobStatus | None:
    """The status after the job's worker Deployment was found: `not_owned` the error when one of its
    name is not the job's (WorkerDeployment False, the job waits), None when it is the job's. The
    condition is written when refused and cleared (True) only once it was: None, nothing to write,
    for a job that never met a Deployment not its own."""
    if not_owned is not None:
        conditions = set_condition(
            previous.conditions, WORKER_DEPLOYMENT, False, DEPLOYMENT_NOT_OWNED, not_owned, now
        )
    elif any(c.type == WORKER_DEPLOYMENT for c in previous.conditions):
        conditions = set_condition(previous.conditions, WORKER_DEPLOYMENT, True, "DeploymentOwned", "", now)
    else:
        return None
    return previous.model_copy(update={"conditions": conditions})


# --- outages of the broker and the storage ------------------------------------------------------


class Dependency(StrEnum):
    """A service every step of a job needs; each has a condition `<Service>Reachable`."""

    storage = "storage"
    broker = "broker"

    @property
    def condition(self) -> str:
        return f"{self.value.capitalize()}Reachable"


OUTAGE_AFTER_FAILURES = 2
"""Failed steps in a row that make an outage a condition: one may be a blip the next step gets past
(a broker restart, a dropped connection), and the storage client has already retried inside it."""
RETRY_MAX_SECONDS = 120.0
ERROR_CHARS = 600
"""Of an error in a condition or an Event: a botocore error names the call and the code well within it."""


@dataclass(frozen=True)
class Outage:
    """The failed steps of a job since its last step that worked: how many, which dependency and
    which error the last one met."""

    dependency: Dependency
    failures: int
    error: str


@dataclass(frozen=True)
class Event:
    """An Event to post: type (Normal or Warning), reason, message."""

    type: str
    reason: str
    message: str


def retry_delay(failures: int, poll_interval: float) -> float:
    """Seconds before the next step after `failures` failed in a row: the poll interval, doubled with
    each further failure, at most RETRY_MAX_SECONDS."""
    if failures <= 0:
        return poll_interval
    return min(poll_interval * 2.0 ** min(failures - 1, 32), RETRY_MAX_SECONDS)


def reachability(
    conditions: Sequence[Condition], outage: Outage | None, now: datetime, retry_in: float = 0.0
) -> tuple[list[Condition], list[Event]]:
    """The conditions with StorageReachable and BrokerReachable after a step, and the Events to post.

    `outage` None (the step worked): both True; a Normal `<Service>Recovered` Event for each that was
    False. A failed step sets its dependency's condition False (reason `<Service>Error`, the error,
    how many steps failed and when the next one runs) from the OUTAGE_AFTER_FAILURES-th failure in a
    row on, with a Warning Event the first time; the other condition is left as it was, since the
    step said nothing about it. Fewer failures change nothing.
    """
    before = {c.type: c.status for c in conditions}
    out, notices = list(conditions), []
    if outage is None:
        for dependency in Dependency:
            if before.get(dependency.condition) == "False":
                name = dependency.value.capitalize()
                notices.append(Event("Normal", f"{name}Recovered", f"{dependency.value} is reachable again"))
            out = set_condition(out, dependency.condition, True, "Reachable", "", now)
        return out, notices
    if outage.failures < OUTAGE_AFTER_FAILURES:
        return out, notices
    dependency, error = outage.dependency, outage.error[:ERROR_CHARS]
    reason = f"{dependency.value.capitalize()}Error"
    message = f"{error} ({outage.failures} steps in a row failed; the next in {retry_in:.0f}s)"
    if before.get(dependency.condition) != "False":
        notices.append(Event("Warning", reason, f"{dependency.value} keeps failing: {error}"))
    return set_condition(out, dependency.condition, False, reason, message, now), notices


# --- spec checks ----------------------------------------------------------------------------------

IMMUTABLE_FIELDS = ("source", "destination", "output", "storage")
"""Top-level spec fields that must not change once a job has started: tasks already published, and
outputs already written, were made from them."""


def immutable_changes(old: CompressionJobSpec, new: CompressionJobSpec) -> list[str]:
    """Paths (camelCase, e.g. "spec.output.quality") of immutable fields that differ."""
    before = old.model_dump(mode="json", by_alias=True)
    after = new.model_dump(mode="json", by_alias=True)
    changed: list[str] = []
    for name in IMMUTABLE_FIELDS:
        key = CompressionJobSpec.model_fields[name].alias or name
        _diff(before.get(key), after.get(key), f"spec.{key}", changed)
    return changed


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            _diff(a.get(key), b.get(key), f"{path}.{key}", out)
    elif a != b:
        out.append(path)


def check_spec(
    spec: CompressionJobSpec, allowed_input_formats: Collection[InputFormat] = WEB_INPUT_FORMATS
) -> list[str]:
    """Problems with a (schema-valid) spec that the CRD schema cannot express; [] when it is fine.

    Each names the field, the rule and the fix: overlapping source and destination prefixes,
    resource requests above limits or not quantities, a maxReplicas the backlog can never reach,
    and input formats beyond the installation's `allowed_input_formats`.
    """
    problems: list[str] = inputs.problems(spec.limits.input_formats, allowed_input_formats)
    source, dest = spec.source.s3, spec.destination.s3
    # S3 prefixes are string prefixes, not folders: "raw" lists "raw-web/..." too.
    if (
        source is not None
        and source.bucket == dest.bucket
        and (dest.prefix.startswith(source.prefix) or source.prefix.startswith(dest.prefix))
    ):
        problems.append(
            f"spec.destination: must not be the source prefix or inside it, nor contain it "
            f"(bucket {dest.bucket!r}, prefixes {dest.prefix!r} and {source.prefix!r} overlap, so "
            "outputs would be listed as inputs); use another bucket or a prefix outside the source's"
        )
    problems += _destination_prefix_problems(dest.prefix)
    problems += _resource_problems(spec.workers.resources.requests, spec.workers.resources.limits)
    workers, limit = spec.workers, spec.limits.max_outstanding
    reachable = math.ceil(limit / workers.tasks_per_replica)
    if workers.max_replicas > max(reachable, workers.min_replicas):
        problems.append(
            f"spec.workers.maxReplicas: {workers.max_replicas} can never be reached: at most "
            f"limits.maxOutstanding={limit} tasks are queued, {workers.tasks_per_replica} per replica "
            f"(tasksPerReplica) is {reachable} replicas; raise limits.maxOutstanding to "
            f"{workers.max_replicas * workers.tasks_per_replica}, or lower tasksPerReplica or maxReplicas"
        )
    return problems


def _destination_prefix_problems(prefix: str) -> list[str]:
    """Output keys are `<prefix>/<name>` and workers refuse a key with an empty, `.` or `..`
    segment (`invalid_key`): a prefix that makes every key so (`./in/`, `out//`) is refused here,
    once, instead of failing every output later. A trailing `/` is the folder's end, not a segment."""
    segments = prefix.removesuffix("/").split("/") if prefix else []
    if not any(segment in ("", ".", "..") for segment in segments):
        return []
    return [
        f"spec.destination.s3.prefix: {prefix!r} has an empty, '.' or '..' segment, so no output key "
        "under it is valid; write it without them (e.g. 'in/' for './in/', 'out/' for 'out//')"
    ]


def _resource_problems(requests: dict[str, Any], limits: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    parsed: dict[str, dict[str, Decimal]] = {"requests": {}, "limits": {}}
    for kind, values in (("requests", requests), ("limits", limits)):
        for name, value in values.items():
            amount = parse_quantity(value)
            if amount is None:
                problems.append(
                    f"spec.workers.resources.{kind}.{name}: {value!r} is not a Kubernetes quantity "
                    "such as 500m, 2 or 1Gi"
                )
            else:
                parsed[kind][name] = amount
    for name, request in parsed["requests"].items():
        limit = parsed["limits"].get(name)
        if limit is not None and request > limit:
            problems.append(
                f"spec.workers.resources.requests.{name}: {requests[name]} is above "
                f"limits.{name} {limits[name]}, which Kubernetes refuses; lower the request or raise "
                "the limit"
            )
    return problems


# --- Secrets a job needs before it starts ---------------------------------------------------------

SECRETS_READY = "SecretsReady"
SECRET_MISSING = "SecretMissing"


@dataclass(frozen=True)
class SecretNeed:
    """A Secret in the job's namespace that the operator reads: the field naming it, and its keys."""

    field: str
    name: str
    keys: tuple[str, ...]


def required_secrets(
    spec: CompressionJobSpec, broker_secret: str = "", storage_secret: str = ""
) -> list[SecretNeed]:
    """The Secrets that must exist (with their keys) in the job's namespace before the job starts:
    those the spec names, and the installation's worker Secrets (`broker_secret`, and
    `storage_secret` when the job names no credentials) that the worker pods read. Without this
    check a missing worker Secret left the pods stuck in CreateContainerConfigError and the job
    Running with nothing to show for it."""
    needs = []
    if broker_secret:
        needs.append(SecretNeed("the chart's worker.brokerSecret", broker_secret, ("url",)))
    storage_keys = ("accessKeyId", "secretAccessKey")
    if spec.storage.credentials_secret:
        needs.append(
            SecretNeed("spec.storage.credentialsSecret", spec.storage.credentials_secret, storage_keys)
        )
    elif storage_secret:
        needs.append(SecretNeed("the chart's worker.storageSecret", storage_secret, storage_keys))
    if spec.notify is not None and spec.notify.secret_ref:
        needs.append(SecretNeed("spec.notify.secretRef", spec.notify.secret_ref, ("hmacKey",)))
    return needs


def waited_for_secrets(status: CompressionJobStatus) -> bool:
    """The job has been waiting for a Secret: its SecretsReady condition is there and not True."""
    return any(c.type == SECRETS_READY and c.status != "True" for c in status.conditions)


def secrets_condition(
    previous: CompressionJobStatus, missing: Sequence[str], now: datetime
) -> CompressionJobStatus:
    """`previous` with SecretsReady set: False (reason SecretMissing, naming each) while any is
    `missing`, else True. The phase is left alone: a job waiting for a Secret stays Pending (a Pod
    waits for a missing Secret the same way), and a phase never goes back. Set only on jobs that
    named a Secret that was missing, so a job that never waited writes nothing at start."""
    condition = (False, SECRET_MISSING, "; ".join(missing)) if missing else (True, "Found", "")
    return previous.model_copy(
        update={"conditions": set_condition(previous.conditions, SECRETS_READY, *condition, now)}
    )


def secrets_found(status: CompressionJobStatus, now: datetime) -> CompressionJobStatus:
    """The status of a job that has started, so found every Secret it names: SecretsReady True if it
    had waited. A step's status is read from the body its timer was given, which can predate the
    start's own write of True; without this, the step wrote the stale False back for good."""
    return secrets_condition(status, [], now) if waited_for_secrets(status) else status


# --- the finish webhook's condition (notify.py sends it; reconcile.py writes it) -------------------

NOTIFIED = "Notified"
"""The job condition of the finish webhook: Unknown while pending or retrying, then True or False."""


@dataclass(frozen=True)
class Verdict:
    """The Notified condition after an attempt, and the seconds until the next (None: it ended)."""

    status: str  # True | False | Unknown
    reason: str
    message: str
    retry_in: float | None = None


WEBHOOK_PENDING = Verdict("Unknown", "WebhookPending", "sent once the finished status is stored")


def noted(conditions: Sequence[Condition], verdict: Verdict, now: datetime) -> list[Condition]:
    """`conditions` with the Notified condition saying `verdict`."""
    return set_condition(conditions, NOTIFIED, verdict.status, verdict.reason, verdict.message, now)
