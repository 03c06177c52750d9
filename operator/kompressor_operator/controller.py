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
from kompressor_operator.engine import JobEngine
from kompressor_operator.kube import Kube, SecretMissing
from kompressor_operator.metrics import OperatorMetrics
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
    check_spec,
    immutable_changes,
    next_status,
    set_condition,
    throughput,
)

log = logging.getLogger("kompressor.operator")

ACCEPTED_SPEC_ANNOTATION = "kompressor.dev/accepted-spec"


class InvalidSpec(Exception):
    """A spec the operator refuses; each problem names a field."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


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

    # --- create / resume ------------------------------------------------------------------------

    def start(self, body: dict[str, Any]) -> Outcome:
        """Validate, declare the queues, resume the ledger, make the worker Deployment."""
        job = job_ref(body["metadata"])
        try:
            spec, refused = accepted_spec(body)
        except SpecError as exc:
            raise InvalidSpec(exc.problems) from None
        problems = check_spec(spec)
        if problems:
            raise InvalidSpec(problems)
        client = self._storage(job, spec).client()
        engine = JobEngine(job, spec, self.settings.broker.url.get_secret_value(), client).open()
        created = datetime.fromisoformat(body["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        self.jobs[job.uid] = _Job(job, spec, engine, created.timestamp())
        deployment = self._worker_deployment(job, spec, body, 0)
        self.kube.apply_deployment(deployment)
        outcome = Outcome(annotations={ACCEPTED_SPEC_ANNOTATION: spec.model_dump_json(by_alias=True)})
        outcome.events.append(
            Event(
                "Normal",
                "Started",
                f"queues declared, worker Deployment {deployment['metadata']['name']} ready to scale",
            )
        )
        outcome.events.extend(refusals(refused))
        return outcome

    def _storage(self, job: JobRef, spec: CompressionJobSpec):
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
                raise InvalidSpec([f"spec.storage.credentialsSecret: {exc}"]) from None
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
        if now - state.last_step < poll_interval:
            return None
        spec, refused = accepted_spec(body)
        state.spec = spec
        state.engine.spec = spec
        progress = state.engine.step()
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
            self.kube.scale(state.job.namespace, name, decision.replicas)
            direction = "up" if decision.replicas > state.scale.current else "down"
            self.metrics.scale_events.labels(state.job.name, direction).inc()
            outcome.events.append(
                Event(
                    "Normal",
                    "Scaled",
                    f"workers {state.scale.current} → {decision.replicas}: {decision.reason}",
                )
            )
        state.scale = decision.state
        self.metrics.outstanding.labels(state.job.name).set(sample.outstanding)
        desired = decision.replicas
        if desired is None:  # an external scaler's: report it, and start from it if builtin returns
            desired = self.kube.desired_replicas(state.job.namespace, name)
            state.scale = ScaleState(current=desired)
        self.metrics.desired.labels(state.job.name).set(desired)
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
        if counts.listing_done and not state.listed_announced:
            state.listed_announced = True
            outcome.events.append(Event("Normal", "Listed", f"{counts.total} inputs found"))
        if status.phase in FINISHED_PHASES:
            status = self._finish(state, status, outcome)
        outcome.status = status
        return outcome

    def _decide(self, uid: str, state: _Job, sample: Sample, spec: CompressionJobSpec, now: float):
        wanted = decide_replicas(sample, spec.workers, state.scale, now)
        self.claims[uid] = Claim(key=uid, priority=spec.priority, created=state.created, wanted=wanted.wanted)
        shares = allocate_budget(list(self.claims.values()), self.settings.max_total_workers)
        return decide_replicas(sample, spec.workers, state.scale, now, budget=shares[uid])

    def _finish(self, state: _Job, status: CompressionJobStatus, outcome: Outcome) -> CompressionJobStatus:
        manifest = state.engine.finish()
        if state.spec.workers.scaler is Scaler.builtin:
            self.kube.scale(state.job.namespace, worker_deployment_name(state.job.name), 0)
        self.claims.pop(state.job.uid, None)
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
        status = status.model_copy(
            update={"manifest": manifest, "workers": WorkerCounts(desired=0, ready=status.workers.ready)}
        )
        if state.spec.notify is not None:
            status = self._notify(state, status, outcome)
        return status

    def _notify(self, state: _Job, status: CompressionJobStatus, outcome: Outcome) -> CompressionJobStatus:
        assert state.spec.notify is not None
        key = None
        if state.spec.notify.secret_ref:
            try:
                key = self.kube.secret_value(state.job.namespace, state.spec.notify.secret_ref, "hmacKey")
            except SecretMissing as exc:
                outcome.events.append(Event("Warning", "WebhookFailed", str(exc)))
        body = notify.summary(state.job, status)
        policy = AddressPolicy.allowing(*self.settings.webhook_allow_networks)
        error = notify.post(state.spec.notify.webhook_url, body, key, policy)
        now = datetime.now(UTC)
        if error is None:
            conditions = set_condition(status.conditions, "Notified", "True", "WebhookDelivered", "", now)
        else:
            outcome.events.append(Event("Warning", "WebhookFailed", error))
            conditions = set_condition(status.conditions, "Notified", "False", "WebhookFailed", error, now)
        return status.model_copy(update={"conditions": conditions})

    def _after_finish(self, body: dict[str, Any], status: CompressionJobStatus) -> Outcome | None:
        """ttlSecondsAfterFinished: delete the job once its time is up."""
        ttl = (body.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is None or status.completion_time is None:
            return None
        if (datetime.now(UTC) - status.completion_time).total_seconds() >= ttl:
            self.kube.delete_job(body["metadata"]["namespace"], body["metadata"]["name"])
        return None

    def update_workers(self, body: dict[str, Any]) -> None:
        """spec.workers changed: the Deployment's pod template follows (its replicas stay the policy's)."""
        state = self.jobs.get(body["metadata"]["uid"])
        if state is None:
            return
        spec, _ = accepted_spec(body)
        state.spec = spec
        self.kube.apply_deployment(self._worker_deployment(state.job, spec, body, state.scale.current))

    def _worker_deployment(
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
        )

    # --- delete ---------------------------------------------------------------------------------

    def delete(self, body: dict[str, Any]) -> None:
        """Finalizer: the job's queues go; the Deployment goes by owner reference."""
        uid = body["metadata"]["uid"]
        self.claims.pop(uid, None)
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
