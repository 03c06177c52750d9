"""Local mode: run one CompressionJob on this machine, without Kubernetes.

The same engine (fan-out, ledger) and the same reconcile (reconcile.py: the scaling policy with the
worker budget of one job, the status, the finish) as the operator; worker processes instead of a
Deployment; a real RabbitMQ and S3 server. Errors a user can fix (a bad file, the broker down,
wrong credentials, a missing bucket) end as one line naming the fix: `ConfigError`.

Storage: local mode runs on the user's machine with the user's credentials (KOMPRESSOR_STORAGE__*),
and the job file is the user's own; the job's `endpointURL`, when set, wins and gets those
credentials, and `credentialsSecret` (a cluster Secret) is not read. The operator's endpoint guard
(endpoints.py) is for a cluster, where job authors and the operator's credentials are different
people's; here they are one person's, so run only job files you trust.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pika.exceptions
import yaml
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from pydantic import ValidationError

from kompressor.crd import (
    API_VERSION,
    KIND,
    WEB_INPUT_FORMATS,
    CompressionJobSpec,
    CompressionJobStatus,
    InputFormat,
    Scaler,
    SpecError,
    parse_spec,
)
from kompressor.messages import JobRef, Task
from kompressor.settings import StorageSettings
from kompressor_operator import broker
from kompressor_operator.builders import GRACE_MARGIN_SECONDS, worker_settings_env
from kompressor_operator.engine import STEP_RETRY_DELAYS, JobEngine, StepFailed
from kompressor_operator.listing import list_s3_sources, url_sources
from kompressor_operator.planning import Estimate, ManifestError, estimate, plan_tasks
from kompressor_operator.reconcile import (
    Budget,
    Memory,
    Observation,
    finish,
    needs_steps,
    next_step_in,
    reconcile,
    workers_seen,
)
from kompressor_operator.settings import OperatorSettings
from kompressor_operator.status import check_spec
from kompressor_operator.workerprocs import WorkerProcesses
from kompressor_s3 import s3_client

POLL_SECONDS = 1.0


class ConfigError(Exception):
    """Something the user must fix before the job can run; the message says what."""


@dataclass(frozen=True)
class JobFile:
    """A CompressionJob read from a YAML file for local mode: its name and checked spec."""

    name: str
    spec: CompressionJobSpec


def load_job_file(path: Path, allowed_input_formats: Collection[InputFormat] = WEB_INPUT_FORMATS) -> JobFile:
    """The job in a YAML file, checked as the operator checks it (`allowed_input_formats`: this
    installation's KOMPRESSOR_ALLOWED_INPUT_FORMATS)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path} must hold one CompressionJob object, apiVersion {API_VERSION}")
    if document.get("kind") != KIND or document.get("apiVersion") != API_VERSION:
        raise ConfigError(
            f"{path}: expected kind {KIND} and apiVersion {API_VERSION}, got "
            f"{document.get('kind')!r} {document.get('apiVersion')!r}"
        )
    name = (document.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: metadata.name is required")
    try:
        spec = parse_spec(document.get("spec"))
    except SpecError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    problems = check_spec(spec, allowed_input_formats)
    if problems:
        raise ConfigError(f"{path}: {'; '.join(problems)}")
    return JobFile(name=name, spec=spec)


def preflight(spec: CompressionJobSpec, settings: OperatorSettings, storage: StorageSettings):
    """Check the broker and the buckets before starting anything; returns an S3 client."""
    url = settings.broker.url.get_secret_value()
    shown = url.split("@")[-1]
    try:
        broker.connect(url).close()
    except pika.exceptions.ProbableAuthenticationError:
        raise ConfigError(f"RabbitMQ at {shown} refused the credentials in KOMPRESSOR_BROKER__URL") from None
    except (pika.exceptions.AMQPError, OSError):
        raise ConfigError(
            f"cannot reach RabbitMQ at {shown}: start one (python -m testbed up --only rabbitmq,s3) "
            "or set KOMPRESSOR_BROKER__URL"
        ) from None
    client = s3_client(storage)
    buckets = {spec.destination.s3.bucket}
    buckets.add(spec.source.s3.bucket if spec.source.s3 else "")
    if spec.source.urls and spec.source.urls.manifest:
        buckets.add(spec.source.urls.manifest.bucket)
    for bucket in sorted(b for b in buckets if b):
        try:
            client.head_bucket(Bucket=bucket)
        except EndpointConnectionError:
            raise ConfigError(
                f"cannot reach S3 at {storage.endpoint_url}: start it or set KOMPRESSOR_STORAGE__ENDPOINT_URL"
            ) from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ConfigError(
                    f"bucket {bucket!r} does not exist at {storage.endpoint_url}: create it "
                    "or fix the job's bucket name"
                ) from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ConfigError(
                    f"S3 refused the credentials for bucket {bucket!r}: check "
                    "KOMPRESSOR_STORAGE__ACCESS_KEY_ID and KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY"
                ) from None
            raise ConfigError(f"S3 error on bucket {bucket!r}: {code}") from None
        except BotoCoreError as exc:
            raise ConfigError(f"S3 at {storage.endpoint_url}: {exc}") from None
    return client


def worker_environment(
    job: JobRef, spec: CompressionJobSpec, settings: OperatorSettings, storage: StorageSettings
) -> dict[str, str]:
    """The environment of local mode's workers: the Deployment's (builders.worker_settings_env) with
    the credentials' values, no health port, and text logs for a terminal."""

    def reveal(value) -> str | None:
        return value.get_secret_value() if value is not None else None

    env = worker_settings_env(
        job,
        spec,
        broker_url=settings.broker.url.get_secret_value(),
        access_key_id=reveal(storage.access_key_id),
        secret_access_key=reveal(storage.secret_access_key),
        region=storage.region,
        endpoint_url=storage.endpoint_url,
        health_port=0,
        log_level=spec.workers.log_level,
        log_format="text",
        allowed_input_formats=settings.allowed_input_formats,
    )
    return {name: value for name, value in env.items() if isinstance(value, str)}


@dataclass
class Run:
    """A finished local run: its final status, and where the worker logs are."""

    status: CompressionJobStatus
    log_dir: Path
    decisions: list[tuple[float, int, str]]


def run_job(
    job_file: JobFile,
    settings: OperatorSettings,
    on_update=None,
    log_dir: Path | None = None,
    keep_queues: bool = False,
) -> Run:
    """Run a job on this machine as the operator would (docs/architecture.md, local mode): the same
    JobEngine and reconcile, worker processes in place of a Deployment; returns when it finishes.
    `on_update` is called with each new status; `keep_queues` leaves the job's queues behind."""
    storage = settings.storage.for_job(job_file.spec.storage)
    client = preflight(job_file.spec, settings, storage)
    spec = job_file.spec
    job = JobRef(namespace="local", name=job_file.name, uid=str(uuid.uuid4()))
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"kompressor-{job.name}-"))
    engine = JobEngine(job, spec, settings.broker.url.get_secret_value(), client).open()
    workers = WorkerProcesses(
        env=worker_environment(job, spec, settings, storage),
        log_dir=log_dir,
        grace_seconds=spec.limits.task_timeout_seconds + GRACE_MARGIN_SECONDS,
    )
    # Local mode's workers are its own processes: no Deployment to hand to an external scaler.
    own = spec.model_copy(update={"workers": spec.workers.model_copy(update={"scaler": Scaler.builtin})})
    status, memory, decisions = CompressionJobStatus(), Memory(), []
    budget = Budget(settings.max_total_workers)  # the operator's budget step, with one job
    failed_exits = 0
    created, started = time.time(), time.monotonic()
    try:
        while True:
            try:
                progress = engine.step()
            except ManifestError as exc:
                raise ConfigError(str(exc)) from None
            except StepFailed as exc:
                raise ConfigError(
                    f"{exc.dependency.value} kept failing for {sum(STEP_RETRY_DELAYS):.0f}s: {exc}"
                ) from None
            now = time.monotonic()
            failed_exits += sum(1 for w in workers.running if not w.alive() and w.process.returncode > 0)
            observed = Observation(
                counts=progress.counts,
                sample=progress.sample(suspended=spec.suspend),
                accounted_now=progress.accounted_now,
                workers_ready=len(workers.running),
                publishing=progress.publishing,
            )
            plan = reconcile(
                own,
                status,
                observed,
                memory,
                refused=(),
                generation=1,
                job=job,
                created=created,
                budget=budget,
                now=now,
                wall=datetime.now(UTC),
            )
            memory = plan.memory
            if plan.scaled or not decisions:
                decisions.append((round(now - started, 2), plan.replicas, plan.reason))
            workers.scale_to(plan.replicas)
            _check_workers_start(workers, spec, failed_exits)
            status = plan.status
            if plan.finished:
                # As the operator's finish: the manifest, the workers to 0 (here: drained and
                # gone before the run returns), no webhook (local mode sends none).
                status, _event = finish(status, engine.finish(), False, datetime.now(UTC))
                workers.stop_all()
                status = workers_seen(status, len(workers.running))
            if on_update is not None:
                on_update(status)
            if not needs_steps(status):
                break
            time.sleep(next_step_in(memory, time.monotonic(), POLL_SECONDS))
        if not keep_queues:
            engine.delete_queues()
    finally:
        workers.stop_all()
        engine.close()
    return Run(status=status, log_dir=log_dir, decisions=decisions)


@dataclass(frozen=True)
class DryRun:
    """What `run_job` would do, found without publishing, declaring or writing anything."""

    estimate: Estimate
    first: list[Task]
    """The first tasks, in the order they would be published."""
    processes: int
    """Processes that would compress at once on this machine."""


def dry_run(job_file: JobFile, settings: OperatorSettings, show: int = 10) -> DryRun:
    """List the job's inputs and plan their tasks as `run_job` would, and estimate the work. It
    reads only: preflight opens and closes a broker connection and heads the buckets; the listing
    is read; no queue is declared, no message published, no object written."""
    spec = job_file.spec
    storage = settings.storage.for_job(spec.storage)
    client = preflight(spec, settings, storage)
    job = JobRef(namespace="local", name=job_file.name, uid="dry-run")
    if spec.source.s3 is not None:
        sources = list_s3_sources(client, spec.source.s3)
    else:
        assert spec.source.urls is not None
        sources = iter(url_sources(client, spec.source.urls))
    first: list[Task] = []

    def kept(tasks):
        for task in tasks:
            if len(first) < show:
                first.append(task)
            yield task

    summary = estimate(spec, kept(plan_tasks(job, spec, sources)))
    cores = len(os.sched_getaffinity(0))
    # Each worker process runs processesPerPod compressing processes (0: one per core); all share
    # this machine's cores.
    per_worker = spec.workers.processes_per_pod or cores
    return DryRun(summary, first, processes=min(cores, spec.workers.max_replicas * per_worker))


def _check_workers_start(workers: WorkerProcesses, spec: CompressionJobSpec, failed_exits: int) -> None:
    """Workers that keep exiting (a bad setting, a missing binary) would loop for ever: stop and say why.
    Only exits with an error code count: a worker killed by a signal (an OOM kill) or scaled down
    and started again later is no sign of a bad setting."""
    if failed_exits > 5 + 3 * spec.workers.max_replicas:
        newest = max(workers.log_dir.glob("worker-*.log"), key=lambda p: p.stat().st_mtime, default=None)
        last = newest.read_text(errors="replace").strip().splitlines()[-1:] if newest else []
        raise ConfigError(
            f"worker processes keep exiting ({failed_exits} of {workers.started_total} exited with an "
            f"error); last log line: {last[0] if last else '(none)'}"
        )


def status_json(status: CompressionJobStatus) -> str:
    """The status as `kubectl get -o json` shows it (camelCase, empty fields left out)."""
    return json.dumps(status.model_dump(by_alias=True, mode="json", exclude_none=True), indent=2)


def settings_from_environment() -> OperatorSettings:
    """The operator's settings from KOMPRESSOR_* variables; a bad one raises ConfigError naming it."""
    try:
        return OperatorSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "KOMPRESSOR_" + "__".join(str(part) for part in first["loc"]).upper()
        raise ConfigError(f"{name}: {first['msg']}") from None
