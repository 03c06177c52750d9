"""The worker's Prometheus metrics (one registry per process; served on /metrics).

Every series carries the job it works for, `namespace` and `compressionjob` (Prometheus owns `job`),
read from KOMPRESSOR_JOB_NAMESPACE and KOMPRESSOR_JOB_NAME: a worker pod serves one job, so the
labels are fixed for the process and bound once here. The series go when the pod goes. Names
follow Prometheus' conventions: the unit last, `_total` on counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kompressor.reasons import Reason

JOB_LABELS = ("namespace", "compressionjob")


@dataclass
class Metrics:
    """The worker's Prometheus metrics, labelled with its job: tasks by outcome and reason,
    durations, bytes, busy processes, retries and chosen qualities."""

    namespace: str = ""
    job: str = ""
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        job = {"namespace": self.namespace, "compressionjob": self.job}
        self._tasks = Counter(
            "kompressor_tasks",
            "Tasks ended, by outcome and reason.",
            [*JOB_LABELS, "outcome", "reason"],
            registry=self.registry,
        )
        self.task_seconds = Histogram(
            "kompressor_task_duration_seconds",
            "Seconds per task (fetch, compress, store).",
            JOB_LABELS,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        ).labels(**job)
        self.bytes_in = Counter(
            "kompressor_input_bytes", "Input bytes read.", JOB_LABELS, registry=self.registry
        ).labels(**job)
        self.bytes_out = Counter(
            "kompressor_output_bytes", "Output bytes written.", JOB_LABELS, registry=self.registry
        ).labels(**job)
        self.busy = Gauge(
            "kompressor_busy_processes", "Pool processes running a task.", JOB_LABELS, registry=self.registry
        ).labels(**job)
        self._retries = Counter(
            "kompressor_task_retries",
            "Tasks requeued after a transient failure.",
            [*JOB_LABELS, "reason"],
            registry=self.registry,
        )
        self.chosen_quality = Histogram(
            "kompressor_chosen_quality",
            "Encoder quality chosen by automatic quality (targetSSIM), per stored output.",
            JOB_LABELS,
            buckets=(30, 40, 50, 60, 65, 70, 75, 80, 85, 90, 95, 100),
            registry=self.registry,
        ).labels(**job)

    def task_ended(self, outcome: str, reason: Reason | str) -> None:
        self._tasks.labels(self.namespace, self.job, outcome, reason).inc()

    def task_retried(self, reason: Reason | str) -> None:
        self._retries.labels(self.namespace, self.job, reason).inc()

    def observe_quality(self, quality: int | None, ssim: float | None) -> None:
        """Count a result's quality when automatic quality chose it (the result carries an SSIM)."""
        if quality is not None and ssim is not None:
            self.chosen_quality.observe(quality)
