"""The operator's per-job loop: what each kopf handler asks for, with the I/O it needs.

One `Controller` per operator process holds every job's engine and scaling memory, and the budget
book (book.py) where every job's step reserves its share of the cluster-wide worker budget. Its
methods are blocking (S3, RabbitMQ, Kubernetes calls) and run in worker threads; they return what
to write (status, Events) instead of writing it, so the handlers stay a thin shell. Each step
observes (the engine's step, the Deployment's ready pods), asks reconcile.py what to do, and
applies it; builders.py says what a Deployment is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from kompressor.addresses import AddressPolicy
from kompressor.crd import (
    FINISHED_PHASES,
    CompressionJobSpec,
    CompressionJobStatus,
    Scaler,
    SpecError,
    parse_spec,
)
from kompressor.messages import JobRef
from kompressor_operator import broker, notify
from kompressor_operator.book import BudgetBook
from kompressor_operator.builders import job_ref, worker_deployment, worker_deployment_name
from kompressor_operator.endpoints import REASON as ENDPOINT_REFUSED
from kompressor_operator.endpoints import EndpointRefused, check_endpoint, endpoint_guard, guarded_networks
from kompressor_operator.engine import JobEngine, StepFailed
from kompressor_operator.kube import DeploymentNotOwned, Kube, Refused, SecretMissing
from kompressor_operator.metrics import OperatorMetrics
from kompressor_operator.planning import ManifestError
from kompressor_operator.policy import ScaleState, deployment_replicas
from kompressor_operator.reconcile import (
    Memory,
    Observation,
    due,
    expires_in,
    finish,
    manifest_invalid,
    notified,
    reconcile,
    step_failed,
    webhook_pending,
    workers_pending,
    workers_seen,
)
from kompressor_operator.settings import OperatorSettings
from kompressor_operator.status import (
    DEPLOYMENT_NOT_OWNED,
    Event,
    check_spec,
    immutable_changes,
    required_secrets,
    secrets_condition,
    secrets_found,
    waited_for_secrets,
)
from kompressor_s3 import s3_client

log = logging.getLogger("kompressor.operator")

ACCEPTED_SPEC_ANNOTATION = "kompressor.dev/accepted-spec"


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


@dataclass
class Writeback:
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
    memory: Memory = field(default_factory=Memory)
    # kopf runs a job's step timer and its delete handler in different threads, and pika's
    # connection (the engine's) is not thread-safe: one at a time.
    busy: threading.Lock = field(default_factory=threading.Lock)


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
    """The operator's loop over its CompressionJobs (docs/architecture.md): for each job, observe
    (Kubernetes, the broker, the ledger), `reconcile`, apply, and hand the handlers a `Writeback`.
    One per operator process; the kopf handlers call `start`, `step` and the finish hooks."""

    def __init__(self, settings: OperatorSettings, kube: Kube, metrics: OperatorMetrics):
        self.settings = settings
        self.kube = kube
        self.metrics = metrics
        self.jobs: dict[str, _Job] = {}
        self.book = BudgetBook(settings.max_total_workers)
        self.seeded = False
        self.deliveries: dict[str, _Delivery] = {}

    def seed(self, recorded: Mapping[str, int]) -> None:
        """Book, once, the workers every job's status recorded when this operator started (a restart, a
        standby taking over): each job adopts its Deployment's replicas only when it resumes, and a
        job deciding before the others had resumed would take their pods again."""
        if self.seeded:
            return
        self.seeded = True
        for uid, workers in recorded.items():
            self.book.adopt(uid, workers)

    # --- create / resume ------------------------------------------------------------------------

    def start(self, body: dict[str, Any]) -> Writeback:
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
        storage = self._storage(job, spec)
        own, allow = self.settings.storage.endpoint_url, self.settings.storage_endpoint_allow_networks
        client = s3_client(storage, vet=endpoint_guard(spec.storage, own, allow))
        deployment = self._deployment(job, spec, body, 0)
        try:
            self.kube.apply_deployment(deployment)
        except Refused as exc:
            raise InvalidSpec([f"spec.workers: the worker Deployment was refused: {exc}"]) from None
        # No retries inside a step: step() backs off between steps and reports a lasting outage.
        broker_url = self.settings.broker.url.get_secret_value()
        engine = JobEngine(job, spec, broker_url, client, retry_delays=()).open()
        created = datetime.fromisoformat(body["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        # The Deployment keeps the replicas it had (an operator restarted, a standby taking over):
        # they are booked, and the policy starts from them, so they are counted until scaled down.
        current = 0
        if spec.workers.scaler is Scaler.builtin:
            name = deployment["metadata"]["name"]
            current = self.kube.desired_replicas(job.namespace, name)
            self.book.adopt(job.uid, current)
        memory = Memory(scale=ScaleState(current=current))
        self.jobs[job.uid] = _Job(job, spec, engine, created.timestamp(), memory)
        outcome = Writeback(annotations={ACCEPTED_SPEC_ANNOTATION: spec.model_dump_json(by_alias=True)})
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
        operator's defaults in its pods too, as it did for the listing (StorageSettings.for_job);
        a job's own endpoint is judged at each of their connections, as at the operator's."""
        storage = self.settings.storage.for_job(spec.storage)
        own, allow = self.settings.storage.endpoint_url, self.settings.storage_endpoint_allow_networks
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
            endpoint_allow_networks=guarded_networks(spec.storage, own, allow),
        )

    def _missing_secrets(self, job: JobRef, spec: CompressionJobSpec) -> list[str]:
        missing = []
        workers = self.settings.worker
        for need in required_secrets(spec, workers.broker_secret, workers.storage_secret):
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

    def step(self, body: dict[str, Any], poll_interval: float) -> Writeback | None:
        """One scaling and accounting round for a job; None when it is not due yet."""
        self.metrics.stepped(job_ref(body["metadata"]))
        uid = body["metadata"]["uid"]
        previous = CompressionJobStatus.model_validate(body.get("status") or {})
        if previous.phase in FINISHED_PHASES:
            return self._after_finish(body, previous)
        state = self.jobs.get(uid)
        if state is None:
            return None  # not started (an invalid spec, or the resume handler has not run yet)
        with state.busy:
            return self._step(state, body, previous, poll_interval)

    def _step(
        self, state: _Job, body: dict[str, Any], previous: CompressionJobStatus, poll_interval: float
    ) -> Writeback | None:
        now = time.monotonic()
        if not due(state.memory, now, poll_interval):
            return None
        previous = secrets_found(previous, datetime.now(UTC))
        spec, refused = accepted_spec(body)
        state.spec = spec
        state.engine.spec = spec
        try:
            progress = state.engine.step()
        except StepFailed as exc:
            return self._step_failed(state, previous, exc, poll_interval)
        except ManifestError as exc:
            status, event = manifest_invalid(previous, str(exc), datetime.now(UTC))
            outcome = Writeback(events=[event])
            outcome.status = self._finish(state, status, outcome)
            return outcome
        for reason, count in progress.refused_now.items():
            self.metrics.refused(state.job, reason, count)
        name = worker_deployment_name(state.job.name)
        external = spec.workers.scaler is Scaler.external
        observed = Observation(
            counts=progress.counts,
            sample=progress.sample(suspended=spec.suspend),
            accounted_now=progress.accounted_now,
            workers_ready=self.kube.ready_replicas(state.job.namespace, name),
            # an external scaler's replicas, to report (and start from if builtin returns)
            workers_desired=self.kube.desired_replicas(state.job.namespace, name) if external else None,
            publishing=progress.publishing,
        )
        # Decided and booked under the book's lock, before the patch: no other job's step can
        # take the same free pods (book.py). Pods given back are booked only once patched away.
        with self.book.deciding() as budget:
            plan = reconcile(
                spec,
                previous,
                observed,
                state.memory,
                refused=refused,
                generation=body["metadata"].get("generation", 1),
                job=state.job,
                created=state.created,
                budget=budget,
                now=now,
                wall=datetime.now(UTC),
            )
            asked = 0 if external else plan.replicas
            self.book.reserve(plan.claim, asked)
        if plan.scaled:
            self.kube.scale(state.job.namespace, name, plan.replicas, state.job.uid)
            direction = "up" if plan.replicas > state.memory.scale.current else "down"
            self.metrics.scaled(state.job, direction)
        self.book.settle(state.job.uid, asked)
        state.memory = plan.memory
        self.metrics.observe(state.job, observed.sample.outstanding, plan.replicas)
        outcome = Writeback(events=list(plan.events))
        outcome.status = self._finish(state, plan.status, outcome) if plan.finished else plan.status
        return outcome

    def _step_failed(
        self, state: _Job, previous: CompressionJobStatus, error: StepFailed, poll_interval: float
    ) -> Writeback:
        """The broker or the storage failed the step: the next one waits longer, and an outage that
        lasts shows in the status (the phase stays) and in an Event."""
        retry = step_failed(
            previous,
            state.memory,
            error.dependency,
            str(error),
            poll_interval,
            time.monotonic(),
            datetime.now(UTC),
        )
        state.memory = retry.memory
        log.warning("job %s: step failed (%s); the next in %.0fs", state.job, error, retry.delay)
        return Writeback(status=retry.status, events=list(retry.events))

    def _finish(self, state: _Job, status: CompressionJobStatus, outcome: Writeback) -> CompressionJobStatus:
        manifest = state.engine.finish()
        if state.spec.workers.scaler is Scaler.builtin:
            try:
                self.kube.scale(state.job.namespace, worker_deployment_name(state.job.name), 0, state.job.uid)
            except DeploymentNotOwned as exc:  # not ours to scale down: the job still finishes
                outcome.events.append(Event("Warning", DEPLOYMENT_NOT_OWNED, str(exc)))
        self.book.release(state.job.uid)
        self.metrics.forget(state.job)
        state.engine.close()
        del self.jobs[state.job.uid]
        status, event = finish(status, manifest, state.spec.notify is not None, datetime.now(UTC))
        outcome.events.append(event)
        return status

    def _deliver(self, body: dict[str, Any], status: CompressionJobStatus) -> Writeback | None:
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
        if verdict.retry_in is None:
            delivery.settled = True
        else:
            delivery.due = time.monotonic() + verdict.retry_in
        status, events = notified(status, verdict, datetime.now(UTC))
        return Writeback(status=status, events=list(events))

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

    def _after_finish(self, body: dict[str, Any], status: CompressionJobStatus) -> Writeback | None:
        """A finished job's steps until it needs none (reconcile.needs_steps): its workers followed
        until they are gone, then the finish webhook."""
        job = job_ref(body["metadata"])
        outcome = None
        if workers_pending(status):
            ready = self.kube.ready_replicas(job.namespace, worker_deployment_name(job.name))
            seen = workers_seen(status, ready)
            if seen != status:
                status = seen
                outcome = Writeback(status=status)
        if webhook_pending(status):
            return self._deliver(body, status) or outcome
        self.deliveries.pop(job.uid, None)
        return outcome

    def expire(self, body: dict[str, Any]) -> float | None:
        """ttlSecondsAfterFinished: delete the finished job once its time is up. Returns the seconds
        left (≤ 0: deleted now), None when it has no TTL."""
        status = CompressionJobStatus.model_validate(body.get("status") or {})
        left = expires_in(status, (body.get("spec") or {}).get("ttlSecondsAfterFinished"), datetime.now(UTC))
        if left is not None and left <= 0:
            self.kube.delete_job(body["metadata"]["namespace"], body["metadata"]["name"])
        return left

    def update_workers(self, body: dict[str, Any]) -> list[Event]:
        """spec.workers changed: the Deployment's pod template follows (its replicas stay the policy's).
        A template the API server refuses leaves the running one as it was, with a Warning."""
        state = self.jobs.get(body["metadata"]["uid"])
        if state is None:
            return []
        spec, _ = accepted_spec(body)
        state.spec = spec
        try:
            self.kube.apply_deployment(self._deployment(state.job, spec, body, state.memory.scale.current))
        except Refused as exc:
            return [
                Event("Warning", "WorkersRefused", f"spec.workers: the worker Deployment was refused: {exc}")
            ]
        return []

    # --- delete ---------------------------------------------------------------------------------

    def delete(self, body: dict[str, Any]) -> None:
        """Finalizer: the job's queues go; the Deployment goes by owner reference."""
        uid = body["metadata"]["uid"]
        self.book.release(uid)
        self.deliveries.pop(uid, None)
        self.metrics.forget(job_ref(body["metadata"]), deleted=True)
        state = self.jobs.pop(uid, None)
        if state is not None:
            with state.busy:  # a step still running on the engine ends first
                state.engine.delete_queues()
                state.engine.close()
            return
        connection = broker.connect(self.settings.broker.url.get_secret_value())
        try:
            broker.delete_job_queues(connection.channel(), job_ref(body["metadata"]))
        finally:
            connection.close()


def refusals(refused: list[str]) -> list[Event]:
    """A Warning Event naming the spec fields that changed after the job started, or none."""
    if not refused:
        return []
    return [
        Event(
            "Warning",
            "SpecImmutable",
            f"{', '.join(refused)} cannot change after the job started; the job keeps its original values",
        )
    ]
