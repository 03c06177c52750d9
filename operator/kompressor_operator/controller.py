"""The operator's per-job loop: what each kopf handler asks for, with the I/O it needs.

One `Controller` per operator process holds every job's engine and scaling memory, and the claims
that share the cluster-wide worker budget. Its methods are blocking (S3, RabbitMQ, Kubernetes
calls) and run in worker threads; they return what to write (status, Events) instead of writing
it, so the handlers stay a thin shell. Decisions come from policy.py, status.py and builders.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from kompressor.addresses import AddressPolicy
from kompressor.crd import (
    FINISHED_PHASES,
    CompressionJobSpec,
    CompressionJobStatus,
    Phase,
    Scaler,
    SpecError,
    WorkerCounts,
    parse_spec,
)
from kompressor.messages import JobRef, task_queue
from kompressor_operator import broker, notify
from kompressor_operator.builders import job_ref, worker_deployment, worker_deployment_name
from kompressor_operator.endpoints import REASON as ENDPOINT_REFUSED
from kompressor_operator.endpoints import EndpointRefused, check_endpoint
from kompressor_operator.engine import JobEngine, StepFailed
from kompressor_operator.kube import DeploymentNotOwned, Kube, Refused, SecretMissing
from kompressor_operator.metrics import OperatorMetrics
from kompressor_operator.planning import ManifestError
from kompressor_operator.policy import (
    Claim,
    Sample,
    ScaleState,
    allocate_budget,
    decide_replicas,
    deployment_replicas,
)
from kompressor_operator.settings import OperatorSettings
from kompressor_operator.status import (
    Outage,
    check_spec,
    failed_status,
    immutable_changes,
    next_status,
    reachability,
    required_secrets,
    retry_delay,
    secrets_condition,
    set_condition,
    throughput,
    waited_for_secrets,
)

log = logging.getLogger("kompressor.operator")

ACCEPTED_SPEC_ANNOTATION = "kompressor.dev/accepted-spec"
DEPLOYMENT_NOT_OWNED = "DeploymentNotOwned"


class InvalidSpec(Exception):
    """A spec the operator refuses; each problem names a field. `reason` is the Failed condition's."""

    def __init__(self, problems: list[str], reason: str = "SpecInvalid"):
        super().__init__("; ".join(problems))
        self.problems = problems
        self.reason = reason


class SecretsMissing(Exception):
    """Secrets the spec names do not exist (yet): the job waits for them, it is not refused."""

    def __init__(self, missing: list[str]):
        super().__init__("; ".join(missing))
        self.missing = missing


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    """What a handler should write back: the status, annotations, and Events to post."""

    status: CompressionJobStatus | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


@dataclass
class _Job:
    job: JobRef
    spec: CompressionJobSpec
    engine: JobEngine
    created: float
    scale: ScaleState = field(default_factory=ScaleState)
    rate: float | None = None
    last_step: float = 0.0
    listed_announced: bool = False
    failures: int = 0  # steps failed in a row (broker or storage)
    retry_at: float = 0.0


@dataclass
class _Delivery:
    """A finish webhook being delivered: attempts made, when the next is due (time.monotonic()),
    and whether it ended (kept until the stored status says so, so a stale body sends nothing twice)."""

    attempts: int = 0
    due: float = 0.0
    settled: bool = False


def accepted_spec(body: dict[str, Any]) -> tuple[CompressionJobSpec, list[str]]:
    """The spec to run: the current one, except that fields immutable after start keep the values
    accepted at start (recorded in an annotation). Returns it and the refused changes."""
    current = parse_spec(body.get("spec"))
    recorded = (body.get("metadata", {}).get("annotations") or {}).get(ACCEPTED_SPEC_ANNOTATION)
    if not recorded:
        return current, []
    accepted = CompressionJobSpec.model_validate_json(recorded)
    refused = immutable_changes(accepted, current)
    if not refused:
        return current, []
    keep = {name: getattr(accepted, name) for name in ("source", "destination", "output", "storage")}
    return current.model_copy(update=keep), refused


class Controller:
    def __init__(self, settings: OperatorSettings, kube: Kube, metrics: OperatorMetrics):
        self.settings = settings
        self.kube = kube
        self.metrics = metrics
        self.jobs: dict[str, _Job] = {}
        self.claims: dict[str, Claim] = {}
        self.deliveries: dict[str, _Delivery] = {}

    # --- create / resume ------------------------------------------------------------------------

    def start(self, body: dict[str, Any]) -> Outcome:
        """Validate (the spec, the storage endpoint), make the worker Deployment (or find this job's),
        declare the queues, resume the ledger. A Deployment of that name that is not this job's stops
        the start (DeploymentNotOwned) before the job is run."""
        job = job_ref(body["metadata"])
        try:
            spec, refused = accepted_spec(body)
        except SpecError as exc:
            raise InvalidSpec(exc.problems) from None
        problems = check_spec(spec, self.settings.allowed_input_formats)
        if problems:
            raise InvalidSpec(problems)
        missing = self._missing_secrets(job, spec)
        if missing:
            raise SecretsMissing(missing)
        client = self._storage(job, spec).client()
        deployment = self._deployment(job, spec, body, 0)
        try:
            self.kube.apply_deployment(deployment)
        except Refused as exc:
            raise InvalidSpec([f"spec.workers: the worker Deployment was refused: {exc}"]) from None
        # No retries inside a step: step() backs off between steps and reports a lasting outage.
        broker_url = self.settings.broker.url.get_secret_value()
        engine = JobEngine(job, spec, broker_url, client, retry_delays=()).open()
        created = datetime.fromisoformat(body["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        self.jobs[job.uid] = _Job(job, spec, engine, created.timestamp())
        outcome = Outcome(annotations={ACCEPTED_SPEC_ANNOTATION: spec.model_dump_json(by_alias=True)})
        previous = CompressionJobStatus.model_validate(body.get("status") or {})
        if waited_for_secrets(previous):
            outcome.status = secrets_condition(previous, [], datetime.now(UTC))
        outcome.events.append(
            Event(
                "Normal",
                "Started",
                f"queues declared, worker Deployment {deployment['metadata']['name']} ready to scale",
            )
        )
        outcome.events.extend(refusals(refused))
        return outcome

    def _deployment(
        self, job: JobRef, spec: CompressionJobSpec, owner: dict[str, Any], current: int
    ) -> dict[str, Any]:
        """Workers reach the S3 the operator reaches: a job naming no endpoint or region gets the
        operator's defaults in its pods too, as it did for the listing (StorageSettings.for_job)."""
        storage = self.settings.storage.for_job(spec.storage)
        resolved = spec.storage.model_copy(
            update={"endpoint_url": storage.endpoint_url, "region": storage.region}
        )
        return worker_deployment(
            job,
            spec.model_copy(update={"storage": resolved}),
            self.settings.worker,
            owner=owner,
            replicas=deployment_replicas(spec.workers, current),
            allowed_input_formats=self.settings.allowed_input_formats,
        )

    def _missing_secrets(self, job: JobRef, spec: CompressionJobSpec) -> list[str]:
        missing = []
        for need in required_secrets(spec):
            try:
                for key in need.keys:
                    self.kube.secret_value(job.namespace, need.name, key)
            except SecretMissing as exc:
                missing.append(f"{need.field}: {exc}")
        return missing

    def _storage(self, job: JobRef, spec: CompressionJobSpec):
        """The job's storage settings, after the endpoint guard (endpoints.py) let them pass."""
        try:
            allow = self.settings.storage_endpoint_allow_networks
            check_endpoint(spec.storage, self.settings.storage.endpoint_url, allow)
        except EndpointRefused as exc:
            raise InvalidSpec([str(exc)], reason=ENDPOINT_REFUSED) from None
        storage = self.settings.storage.for_job(spec.storage)
        if spec.storage.credentials_secret:
            name = spec.storage.credentials_secret
            try:
                storage = storage.model_copy(
                    update={
                        "access_key_id": SecretStr(
                            self.kube.secret_value(job.namespace, name, "accessKeyId")
                        ),
                        "secret_access_key": SecretStr(
                            self.kube.secret_value(job.namespace, name, "secretAccessKey")
                        ),
                    }
                )
            except SecretMissing as exc:
                raise SecretsMissing([f"spec.storage.credentialsSecret: {exc}"]) from None
        return storage

    # --- the periodic step ----------------------------------------------------------------------

    def step(self, body: dict[str, Any], poll_interval: float) -> Outcome | None:
        """One scaling and accounting round for a job; None when it is not due yet."""
        uid = body["metadata"]["uid"]
        previous = CompressionJobStatus.model_validate(body.get("status") or {})
        if previous.phase in FINISHED_PHASES:
            return self._after_finish(body, previous)
        state = self.jobs.get(uid)
        if state is None:
            return None  # not started (an invalid spec, or the resume handler has not run yet)
        now = time.monotonic()
        if now - state.last_step < poll_interval or now < state.retry_at:
            return None
        spec, refused = accepted_spec(body)
        state.spec = spec
        state.engine.spec = spec
        try:
            progress = state.engine.step()
        except StepFailed as exc:
            return self._step_failed(state, previous, exc, poll_interval)
        except ManifestError as exc:
            outcome = Outcome(events=[Event("Warning", "ManifestInvalid", str(exc))])
            status = failed_status(previous, "ManifestInvalid", str(exc), datetime.now(UTC))
            outcome.status = self._finish(state, status, outcome)
            return outcome
        state.failures = 0
        for reason, count in progress.refused_now.items():
            self.metrics.refused(state.job, reason, count)
        state.rate = (
            throughput(state.rate, progress.accounted_now, now - state.last_step)
            if state.last_step
            else state.rate
        )
        state.last_step = now
        counts = progress.counts
        sample = progress.sample(suspended=spec.suspend)
        decision = self._decide(uid, state, sample, spec, now)
        outcome = Outcome()
        name = worker_deployment_name(state.job.name)
        if decision.changed:
            self.kube.scale(state.job.namespace, name, decision.replicas, state.job.uid)
            direction = "up" if decision.replicas > state.scale.current else "down"
            self.metrics.scaled(state.job, direction)
            outcome.events.append(
                Event(
                    "Normal",
                    "Scaled",
                    f"workers {state.scale.current} → {decision.replicas}: {decision.reason}",
                )
            )
        state.scale = decision.state
        desired = decision.replicas
        if desired is None:  # an external scaler's: report it, and start from it if builtin returns
            desired = self.kube.desired_replicas(state.job.namespace, name)
            state.scale = ScaleState(current=desired)
        self.metrics.observe(state.job, sample.outstanding, desired)
        workers = WorkerCounts(desired=desired, ready=self.kube.ready_replicas(state.job.namespace, name))
        status = next_status(
            previous,
            counts,
            spec,
            workers,
            datetime.now(UTC),
            body["metadata"].get("generation", 1),
            state.rate,
        )
        status = status.model_copy(
            update={
                "queue": task_queue(state.job),
                "backlog": sample.outstanding,
                "conditions": set_condition(
                    status.conditions,
                    "SpecAccepted",
                    "False" if refused else "True",
                    "ImmutableFieldChanged" if refused else "Accepted",
                    f"{', '.join(refused)} cannot change after start" if refused else "",
                    datetime.now(UTC),
                ),
            }
        )
        conditions, notices = reachability(status.conditions, None, datetime.now(UTC))
        status = status.model_copy(update={"conditions": conditions})
        outcome.events.extend(Event(n.type, n.reason, n.message) for n in notices)
        if counts.listing_done and not state.listed_announced:
            state.listed_announced = True
            outcome.events.append(Event("Normal", "Listed", f"{counts.total} inputs found"))
        if status.phase in FINISHED_PHASES:
            status = self._finish(state, status, outcome)
        outcome.status = status
        return outcome

    def _step_failed(
        self, state: _Job, previous: CompressionJobStatus, error: StepFailed, poll_interval: float
    ) -> Outcome:
        """The broker or the storage failed the step: the next one waits longer, and an outage that
        lasts shows in the status (the phase stays) and in an Event."""
        state.failures += 1
        delay = retry_delay(state.failures, poll_interval)
        state.retry_at = time.monotonic() + delay
        log.warning("job %s: step failed (%s); the next in %.0fs", state.job.name, error, delay)
        outage = Outage(error.dependency, state.failures, str(error))
        conditions, notices = reachability(previous.conditions, outage, datetime.now(UTC), delay)
        return Outcome(
            status=previous.model_copy(update={"conditions": conditions}),
            events=[Event(n.type, n.reason, n.message) for n in notices],
        )

    def _decide(self, uid: str, state: _Job, sample: Sample, spec: CompressionJobSpec, now: float):
        wanted = decide_replicas(sample, spec.workers, state.scale, now)
        self.claims[uid] = Claim(key=uid, priority=spec.priority, created=state.created, wanted=wanted.wanted)
        shares = allocate_budget(list(self.claims.values()), self.settings.max_total_workers)
        return decide_replicas(sample, spec.workers, state.scale, now, budget=shares[uid])

    def _finish(self, state: _Job, status: CompressionJobStatus, outcome: Outcome) -> CompressionJobStatus:
        manifest = state.engine.finish()
        if state.spec.workers.scaler is Scaler.builtin:
            try:
                self.kube.scale(state.job.namespace, worker_deployment_name(state.job.name), 0, state.job.uid)
            except DeploymentNotOwned as exc:  # not ours to scale down: the job still finishes
                outcome.events.append(Event("Warning", DEPLOYMENT_NOT_OWNED, str(exc)))
        self.claims.pop(state.job.uid, None)
        self.metrics.forget(state.job)
        state.engine.close()
        del self.jobs[state.job.uid]
        kind = "Normal" if status.phase is Phase.succeeded else "Warning"
        outcome.events.append(
            Event(
                kind,
                status.phase.value,
                f"{status.succeeded} compressed, "
                f"{status.skipped} skipped, {status.failed} failed; manifest {manifest}",
            )
        )
        conditions = status.conditions
        if state.spec.notify is not None:
            # The webhook goes out from a later step, once this finished status is stored: no
            # receiver can keep a job from finishing.
            conditions = notify.noted(conditions, notify.PENDING, datetime.now(UTC))
        return status.model_copy(
            update={
                "manifest": manifest,
                "workers": WorkerCounts(desired=0, ready=status.workers.ready),
                "conditions": conditions,
            }
        )

    def _deliver(self, body: dict[str, Any], status: CompressionJobStatus) -> Outcome | None:
        """One attempt at the finish webhook when one is due; its end goes in the Notified condition."""
        job = job_ref(body["metadata"])
        delivery = self.deliveries.setdefault(job.uid, _Delivery())
        if delivery.settled or time.monotonic() < delivery.due:
            return None
        try:
            hook = parse_spec(body["spec"]).notify
            if hook is None:
                raise ValueError("spec.notify was removed before the webhook was sent")
            key = self._webhook_key(job, hook.secret_ref)
        except ValueError as exc:  # SpecError is one too
            result = notify.Attempt(str(exc))
        else:
            result = notify.attempt(
                hook.webhook_url,
                notify.summary(job, status),
                notify.delivery_id(job),
                key,
                AddressPolicy.allowing(*self.settings.webhook_allow_networks),
                self.settings.webhook_timeout_seconds,
            )
        delivery.attempts += 1
        verdict = notify.verdict(result, delivery.attempts, self.settings.webhook_attempts)
        outcome = Outcome()
        if verdict.retry_in is None:
            delivery.settled = True
            kind = "Normal" if verdict.status == "True" else "Warning"
            outcome.events.append(Event(kind, verdict.reason, verdict.message))
        else:
            delivery.due = time.monotonic() + verdict.retry_in
        conditions = notify.noted(status.conditions, verdict, datetime.now(UTC))
        outcome.status = status.model_copy(update={"conditions": conditions})
        return outcome

    def _webhook_key(self, job: JobRef, secret: str | None) -> bytes | None:
        """The signing key, None when no signature is asked for; ValueError naming what is missing,
        for nothing is ever sent unsigned when a signature was asked for."""
        if secret is None:
            return None
        try:
            return notify.hmac_key(self.kube.secret_value(job.namespace, secret, "hmacKey"))
        except SecretMissing as exc:
            raise ValueError(f"spec.notify.secretRef: {exc}; nothing sent unsigned") from None
        except ValueError as exc:
            raise ValueError(
                f"spec.notify.secretRef: key hmacKey of Secret {job.namespace}/{secret} {exc}; "
                "nothing sent unsigned"
            ) from None

    def _after_finish(self, body: dict[str, Any], status: CompressionJobStatus) -> Outcome | None:
        """The finish webhook, then ttlSecondsAfterFinished: delete the job once its time is up."""
        if any(c.type == notify.CONDITION and c.status == "Unknown" for c in status.conditions):
            return self._deliver(body, status)
        self.deliveries.pop(body["metadata"]["uid"], None)
        ttl = (body.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is None or status.completion_time is None:
            return None
        if (datetime.now(UTC) - status.completion_time).total_seconds() >= ttl:
            self.kube.delete_job(body["metadata"]["namespace"], body["metadata"]["name"])
        return None

    def update_workers(self, body: dict[str, Any]) -> list[Event]:
        """spec.workers changed: the Deployment's pod template follows (its replicas stay the policy's).
        A template the API server refuses leaves the running one as it was, with a Warning."""
        state = self.jobs.get(body["metadata"]["uid"])
        if state is None:
            return []
        spec, _ = accepted_spec(body)
        state.spec = spec
        try:
            self.kube.apply_deployment(self._deployment(state.job, spec, body, state.scale.current))
        except Refused as exc:
            return [
                Event("Warning", "WorkersRefused", f"spec.workers: the worker Deployment was refused: {exc}")
            ]
        return []

    # --- delete ---------------------------------------------------------------------------------

    def delete(self, body: dict[str, Any]) -> None:
        """Finalizer: the job's queues go; the Deployment goes by owner reference."""
        uid = body["metadata"]["uid"]
        self.claims.pop(uid, None)
        self.deliveries.pop(uid, None)
        self.metrics.forget(job_ref(body["metadata"]))
        state = self.jobs.pop(uid, None)
        if state is not None:
            state.engine.delete_queues()
            state.engine.close()
            return
        connection = broker.connect(self.settings.broker.url.get_secret_value())
        try:
            broker.delete_job_queues(connection.channel(), job_ref(body["metadata"]))
        finally:
            connection.close()


def refusals(refused: list[str]) -> list[Event]:
    if not refused:
        return []
    return [
        Event(
            "Warning",
            "SpecImmutable",
            f"{', '.join(refused)} cannot change after the job started; the job keeps its original values",
        )
    ]
