"""kopf handlers: a thin shell. Each one hands the body to the Controller in a worker thread and
writes back what it returns (status, annotations, Events). Start with:

    kopf run --standalone -m kompressor_operator.handlers --all-namespaces

Decisions live in policy.py, status.py and builders.py; I/O in engine.py, kube.py and broker.py.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, NoReturn

import kopf
from prometheus_client import start_http_server

from kompressor.crd import FINISHED_PHASES, GROUP, PLURAL, VERSION, CompressionJobStatus, Phase
from kompressor.logs import quiet_third_party
from kompressor_operator.controller import (
    DEPLOYMENT_NOT_OWNED,
    Controller,
    InvalidSpec,
    Outcome,
    SecretsMissing,
    accepted_spec,
    refusals,
)
from kompressor_operator.kube import DeploymentNotOwned, Kube, load_config
from kompressor_operator.metrics import OperatorMetrics
from kompressor_operator.settings import OperatorSettings
from kompressor_operator.status import SECRET_MISSING, secrets_condition, set_condition

PREFIX = "kompressor.dev"
TIMER_SECONDS = 1.0  # the per-job poll interval (a setting) is enforced inside Controller.step
# A Deployment of the worker name that is not the job's may be an earlier job's of the same name,
# about to be collected: the job waits (WorkerDeployment=False) and tries again this often.
NOT_OWNED_RETRY_SECONDS = 15.0
WORKER_DEPLOYMENT = "WorkerDeployment"
SECRET_RETRY_SECONDS = 5.0
"""How often a job waiting for a missing Secret looks again (a read of each Secret it names): polling
needs only `get` on Secrets, where a watch would need `list` and `watch` on every Secret."""


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's own state goes in our annotations; status stays ours alone (its schema is strict).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = 20
    config = OperatorSettings()
    # After kopf set the root level from --verbose/--debug: at DEBUG the libraries speak too.
    quiet_third_party(logging.getLogger().level)
    load_config()
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


def _write(outcome: Outcome | None, body: kopf.Body, patch: kopf.Patch) -> None:
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


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
async def start(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    if _finished(body):
        return
    try:
        outcome = await asyncio.to_thread(memo.controller.start, dict(body))
    except InvalidSpec as exc:
        now = datetime.now(UTC)
        previous = CompressionJobStatus.model_validate(body.get("status") or {})
        status = previous.model_copy(
            update={
                "phase": Phase.failed,
                "completion_time": now,
                "conditions": set_condition(previous.conditions, "Failed", "True", exc.reason, str(exc), now),
            }
        )
        patch.status.update(_status_patch(status))
        kopf.warn(body, reason=exc.reason, message=str(exc))
        raise kopf.PermanentError(str(exc)) from None
    except DeploymentNotOwned as exc:
        _not_owned(body, patch, exc)
    except SecretsMissing as exc:
        previous = CompressionJobStatus.model_validate(body.get("status") or {})
        waiting = secrets_condition(previous, exc.missing, datetime.now(UTC))
        if waiting.conditions != previous.conditions:  # one Warning per change, not one per retry
            patch.status.update(_status_patch(waiting))
            kopf.warn(body, reason=SECRET_MISSING, message=f"waiting: {exc}")
        raise kopf.TemporaryError(str(exc), delay=SECRET_RETRY_SECONDS) from None
    _deployment_condition(body, patch, "True", "DeploymentOwned", "")
    _write(outcome, body, patch)


def _not_owned(body: kopf.Body, patch: kopf.Patch, exc: DeploymentNotOwned) -> NoReturn:
    """Refuse to touch a Deployment that is not the job's: a condition, a Warning Event, a retry later."""
    _deployment_condition(body, patch, "False", DEPLOYMENT_NOT_OWNED, str(exc))
    kopf.warn(body, reason=DEPLOYMENT_NOT_OWNED, message=str(exc))
    raise kopf.TemporaryError(str(exc), delay=NOT_OWNED_RETRY_SECONDS) from None


def _deployment_condition(body: kopf.Body, patch: kopf.Patch, status: str, reason: str, message: str) -> None:
    """Set the WorkerDeployment condition: written when refused, cleared (True) only once it was."""
    previous = CompressionJobStatus.model_validate(body.get("status") or {})
    if status == "True" and not any(c.type == WORKER_DEPLOYMENT for c in previous.conditions):
        return
    conditions = set_condition(
        previous.conditions, WORKER_DEPLOYMENT, status, reason, message, datetime.now(UTC)
    )
    patch.status.update(_status_patch(previous.model_copy(update={"conditions": conditions})))


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_SECONDS)
async def step(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    try:
        outcome = await asyncio.to_thread(memo.controller.step, dict(body), memo.poll_interval)
    except DeploymentNotOwned as exc:
        _not_owned(body, patch, exc)
    _write(outcome, body, patch)


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
    await asyncio.to_thread(memo.controller.delete, dict(body))
