"""kopf handlers: a thin shell. Each one hands the body to the Controller in a worker thread and
writes back what it returns (status, annotations, Events). Start with:

    kopf run --standalone -m kompressor_operator.handlers --all-namespaces

or, with a standby (two or more replicas: one leads, the others wait to take over),
`--peering=<name>` instead of `--standalone` (see `configure` and docs/scaling.md).

Decisions live in reconcile.py (with policy.py and status.py) and builders.py; I/O in engine.py,
kube.py and broker.py. A finished job costs nothing once its workers are gone and its webhook
settled: the step timer runs only while `needs_steps`, and a TTL is a daemon asleep until it expires.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any, NoReturn

import kopf
from prometheus_client import start_http_server

from kompressor.crd import FINISHED_PHASES, GROUP, PLURAL, VERSION, CompressionJobStatus
from kompressor.logs import quiet_third_party
from kompressor_operator.controller import (
    Controller,
    InvalidSpec,
    SecretsMissing,
    Writeback,
    accepted_spec,
    refusals,
)
from kompressor_operator.kube import DeploymentNotOwned, Kube, load_config
from kompressor_operator.metrics import OperatorMetrics
from kompressor_operator.reconcile import needs_steps, recorded_workers
from kompressor_operator.settings import OperatorSettings
from kompressor_operator.status import (
    DEPLOYMENT_NOT_OWNED,
    SECRET_MISSING,
    refused_status,
    secrets_condition,
    worker_deployment,
)

PREFIX = "kompressor.dev"
TIMER_SECONDS = 1.0  # the per-job poll interval (a setting) is enforced inside Controller.step
# The timer ticks on a grid of TIMER_SECONDS (kopf's `sharp`), not TIMER_SECONDS after a step ends:
# a fan-out's steps (2 s and a bit of publishing each, due again at once: reconcile.next_step_in)
# follow each other at the next tick instead of a whole second later.
# A Deployment of the worker name that is not the job's may be an earlier job's of the same name,
# about to be collected: the job waits (WorkerDeployment=False) and tries again this often.
NOT_OWNED_RETRY_SECONDS = 15.0
SECRET_RETRY_SECONDS = 5.0
"""How often a job waiting for a missing Secret looks again (a read of each Secret it names): polling
needs only `get` on Secrets, where a watch would need `list` and `watch` on every Secret."""
# A finished job's TTL daemon wakes at least this often, so an edited ttlSecondsAfterFinished (the
# daemon's body is live) is honoured within it.
TTL_RECHECK_SECONDS = 60.0
PEERING_LIFETIME_SECONDS = 15
"""How long an operator's peering record counts without a keep-alive (kopf touches it 5-10 s before
then): a standby takes over this long at most after the leader stopped, plus its resume."""


class QuietSteps(logging.Filter):
    """Holds back kopf's "Timer 'step' succeeded." (INFO, on kopf.objects): the step timer runs
    every second, so that was a line a second per running job, all alike. The runs are counted in
    `kompressor_steps_total` instead; a failing step is still logged, and at DEBUG every line is."""

    MESSAGE = "Timer 'step' succeeded."

    def filter(self, record: logging.LogRecord) -> bool:
        routine = record.levelno == logging.INFO and record.getMessage() == self.MESSAGE
        return not routine or logging.getLogger().isEnabledFor(logging.DEBUG)


QUIET_STEPS = QuietSteps()  # one instance: addFilter adds it once, however often kopf starts up


def leadership_priority(started: float) -> int:
    """kopf's peering pauses every operator that sees one of higher priority, and all of them when
    two share one. The older operator outranks the newer (a replica restarting never preempts the
    leader), with a random tie-break below the millisecond."""
    return -(int(started * 1000) * 1000 + random.randrange(1000))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """kopf startup: where kopf keeps its state, peering, and the controller in `memo`."""
    # kopf's own state goes in our annotations; status stays ours alone (its schema is strict).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = 20
    leading = settings.peering.mandatory  # --peering=<name>: replicas elect a leader
    if leading:
        # One leader for the release, whatever namespaces each replica watches.
        settings.peering.clusterwide = True
        settings.peering.priority = leadership_priority(time.time())
        settings.peering.lifetime = PEERING_LIFETIME_SECONDS
        settings.peering.stealth = True  # no log line per keep-alive
    config = OperatorSettings()
    # After kopf set the root level from --verbose/--debug: at DEBUG the libraries speak too.
    quiet_third_party(logging.getLogger().level)
    logging.getLogger("kopf.objects").addFilter(QUIET_STEPS)
    load_config()
    if leading:
        await asyncio.to_thread(Kube().ensure_peering, settings.peering.name)
    metrics = OperatorMetrics()
    if config.metrics_port:
        start_http_server(config.metrics_port, registry=metrics.registry)
    memo.controller = Controller(config, Kube(), metrics)
    memo.poll_interval = config.poll_interval_seconds


def _wire(value: Any) -> Any:
    """Empty strings left out: Kubernetes 1.20's API server (the test bed's) reads "" in a custom
    resource as null and refuses the whole status patch; an absent field means the same to readers."""
    if isinstance(value, dict):
        return {key: _wire(item) for key, item in value.items() if item != ""}
    if isinstance(value, list):
        return [_wire(item) for item in value]
    return value


def _status_patch(status: CompressionJobStatus) -> dict[str, Any]:
    return _wire(status.model_dump(by_alias=True, mode="json"))


def _write(outcome: Writeback | None, body: kopf.Body, patch: kopf.Patch) -> None:
    if outcome is None:
        return
    if outcome.status is not None:
        patch.status.update(_status_patch(outcome.status))
    if outcome.annotations:
        patch.metadata.annotations.update(outcome.annotations)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _finished(body: kopf.Body) -> bool:
    return (body.get("status") or {}).get("phase") in {phase.value for phase in FINISHED_PHASES}


@kopf.index(GROUP, VERSION, PLURAL)
def booked_workers(body: kopf.Body, **_: Any) -> dict[str, int]:
    """Each job's workers as its status recorded them (reconcile.recorded_workers). kopf runs no
    handler before every job of its first listing is indexed, so the first job to start after a
    restart books them all (Controller.seed) before any job decides its replicas."""
    return {body["metadata"]["uid"]: recorded_workers(body)}


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
async def start(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, booked_workers: kopf.Index, **_: Any
) -> None:
    """A job created (or found on resume): the controller starts it, or its refusal goes in the status."""
    memo.controller.seed({uid: max(store) for uid, store in booked_workers.items()})
    if _finished(body):
        return
    try:
        outcome = await asyncio.to_thread(memo.controller.start, dict(body))
    except InvalidSpec as exc:
        status = refused_status(_status(body), exc.reason, str(exc), datetime.now(UTC))
        patch.status.update(_status_patch(status))
        kopf.warn(body, reason=exc.reason, message=str(exc))
        raise kopf.PermanentError(str(exc)) from None
    except DeploymentNotOwned as exc:
        _not_owned(body, patch, exc)
    except SecretsMissing as exc:
        previous = _status(body)
        waiting = secrets_condition(previous, exc.missing, datetime.now(UTC))
        if waiting.conditions != previous.conditions:  # one Warning per change, not one per retry
            patch.status.update(_status_patch(waiting))
            kopf.warn(body, reason=SECRET_MISSING, message=f"waiting: {exc}")
        raise kopf.TemporaryError(str(exc), delay=SECRET_RETRY_SECONDS) from None
    _deployment_condition(body, patch, None)
    _write(outcome, body, patch)


def _not_owned(body: kopf.Body, patch: kopf.Patch, exc: DeploymentNotOwned) -> NoReturn:
    """Refuse to touch a Deployment that is not the job's: a condition, a Warning Event, a retry later."""
    _deployment_condition(body, patch, str(exc))
    kopf.warn(body, reason=DEPLOYMENT_NOT_OWNED, message=str(exc))
    raise kopf.TemporaryError(str(exc), delay=NOT_OWNED_RETRY_SECONDS) from None


def _deployment_condition(body: kopf.Body, patch: kopf.Patch, not_owned: str | None) -> None:
    """The WorkerDeployment condition (status.worker_deployment), when there is one to write."""
    status = worker_deployment(_status(body), not_owned, datetime.now(UTC))
    if status is not None:
        patch.status.update(_status_patch(status))


def _status(body: kopf.Body) -> CompressionJobStatus:
    return CompressionJobStatus.model_validate(body.get("status") or {})


def _stepping(body: kopf.Body, **_: Any) -> bool:
    return needs_steps(_status(body))


def _expiring(body: kopf.Body, **_: Any) -> bool:
    return not _stepping(body) and (body.get("spec") or {}).get("ttlSecondsAfterFinished") is not None


# kopf re-evaluates `when` on every change of the job, starting and stopping the timer as it flips.
@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_SECONDS, sharp=True, when=_stepping)
async def step(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """The timer: one controller step of a running job, its outcome written to the status."""
    try:
        outcome = await asyncio.to_thread(memo.controller.step, dict(body), memo.poll_interval)
    except DeploymentNotOwned as exc:
        _not_owned(body, patch, exc)
    _write(outcome, body, patch)


@kopf.daemon(GROUP, VERSION, PLURAL, when=_expiring)
async def expire(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any) -> None:
    """ttlSecondsAfterFinished: asleep until the finished job's time is up, then it is deleted."""
    while not stopped:
        left = await asyncio.to_thread(memo.controller.expire, dict(body))
        if left is not None and left <= 0:
            return
        await stopped.wait(TTL_RECHECK_SECONDS if left is None else min(left, TTL_RECHECK_SECONDS))


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def spec_changed(body: kopf.Body, old: Any, new: Any, memo: kopf.Memo, **_: Any) -> None:
    """Worker settings apply at once; source, destination, output and storage are refused."""
    if _finished(body) or not old or not new:
        return
    _spec, refused = accepted_spec(dict(body))
    for event in refusals(refused):
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if old.get("workers") != new.get("workers"):
        for event in await asyncio.to_thread(memo.controller.update_workers, dict(body)):
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A job deleted: the controller deletes its queues (the Deployment goes by its owner reference)."""
    await asyncio.to_thread(memo.controller.delete, dict(body))
