"""Worker processes on this machine: what a Deployment's pods are, without Kubernetes.

Local mode scales these with the same policy the operator applies to a Deployment, and the
operator's end-to-end node agent runs each Pod's container as one of them. Scaling down sends
SIGTERM, as the kubelet does: the worker drains its in-flight tasks and exits; one that outlives its
grace period is killed, and the broker redelivers what it held.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


def worker_command() -> list[str]:
    """`kompressor-worker` beside this interpreter (a virtualenv need not be activated)."""
    beside = Path(sys.executable).parent / "kompressor-worker"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("kompressor-worker")
    return [found] if found else [sys.executable, "-m", "kompressor_worker"]


@dataclass
class WorkerProcess:
    """One local worker process, its log file, and since when it has been asked to stop."""

    process: subprocess.Popen
    log: Path
    terminating_since: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class WorkerProcesses:
    """A set of `kompressor-worker` processes sharing one environment."""

    env: Mapping[str, str]
    log_dir: Path
    grace_seconds: float = 60.0
    running: list[WorkerProcess] = field(default_factory=list)
    terminating: list[WorkerProcess] = field(default_factory=list)
    started_total: int = 0

    def base_environment(self) -> dict[str, str]:
        """What every worker inherits before `env` and `extra_env` (this process's environment)."""
        return dict(os.environ)

    def start_one(
        self, extra_env: Mapping[str, str] | None = None, log_name: str = "worker"
    ) -> WorkerProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started_total += 1
        log = self.log_dir / f"{log_name}-{self.started_total}.log"
        env = {**self.base_environment(), **self.env, **(extra_env or {})}
        with log.open("ab") as out:
            process = subprocess.Popen(
                worker_command(),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        worker = WorkerProcess(process, log)
        self.running.append(worker)
        return worker

    def terminate(self, worker: WorkerProcess) -> None:
        """SIGTERM one worker: it stops consuming and drains; `reap` finishes the job."""
        if worker in self.running:
            self.running.remove(worker)
        if worker.alive():
            worker.process.send_signal(signal.SIGTERM)
            worker.terminating_since = time.monotonic()
            self.terminating.append(worker)

    def scale_to(self, replicas: int) -> None:
        self.reap()
        while len(self.running) < replicas:
            self.start_one()
        while len(self.running) > replicas:
            self.terminate(self.running[-1])  # the newest first, like a ReplicaSet

    def reap(self) -> None:
        """Forget exited workers; restart none (a crashed worker is replaced by the next scale_to);
        kill those past their grace period."""
        self.running = [w for w in self.running if w.alive()]
        now = time.monotonic()
        for worker in list(self.terminating):
            if not worker.alive():
                self.terminating.remove(worker)
            elif worker.terminating_since is not None and now - worker.terminating_since > self.grace_seconds:
                _kill_group(worker.process)

    def stop_all(self, timeout: float | None = None) -> None:
        for worker in list(self.running):
            self.terminate(worker)
        deadline = time.monotonic() + (self.grace_seconds if timeout is None else timeout)
        for worker in list(self.terminating):
            remaining = max(0.0, deadline - time.monotonic())
            try:
                worker.process.wait(remaining)
            except subprocess.TimeoutExpired:
                _kill_group(worker.process)
                worker.process.wait(5)
        # The pool's forkserver and children share the worker's session: none may outlive it.
        for worker in self.terminating:
            _kill_group(worker.process)
        self.terminating.clear()

    def kill(self, worker: WorkerProcess) -> None:
        """kill -9 a worker and its pool, as an OOM kill or node failure would."""
        _kill_group(worker.process)
        worker.process.wait(10)
        self.reap()


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
