"""The operator's Prometheus metrics, one label set per job: `namespace` and `compressionjob`
(Prometheus owns `job`), so two jobs of one name in two namespaces stay apart.

A job's series are removed when it finishes or is deleted (`forget`): a gauge left behind would
report a backlog that no longer exists, and label sets of ended jobs would pile up for the
operator's life. Its step count alone stays until the job is deleted: that a finished job's count
stands still is what shows it costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from kompressor.messages import JobRef
from kompressor.reasons import Reason

JOB_LABELS = ("namespace", "compressionjob")
DIRECTIONS = ("up", "down")


@dataclass
class OperatorMetrics:
    """The operator's Prometheus metrics, per job: outstanding tasks, workers, results refused by
    reason, scalings; `forget` removes a job's series."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.outstanding = Gauge(
            "kompressor_outstanding_tasks",
            "Tasks published and not yet accounted.",
            JOB_LABELS,
            registry=self.registry,
        )
        self.desired = Gauge(
            "kompressor_desired_replicas",
            "Worker replicas the policy asks for.",
            JOB_LABELS,
            registry=self.registry,
        )
        self.scale_events = Counter(
            "kompressor_scale_events",
            "Changes of a job's worker replicas.",
            [*JOB_LABELS, "direction"],
            registry=self.registry,
        )
        self.refused_results = Counter(
            "kompressor_refused_results",
            "Results and dead letters dropped unrecorded: malformed, of another job, or of an id the "
            "job never published (anything with the broker credentials can publish them).",
            [*JOB_LABELS, "reason"],
            registry=self.registry,
        )
        self.steps = Counter(
            "kompressor_steps",
            "Runs of a job's step timer (about one a second while it runs; none once it ended). kopf's "
            "own log line for each run is held back (handlers.QuietSteps).",
            JOB_LABELS,
            registry=self.registry,
        )
        self._refused_reasons: dict[tuple[str, str], set[str]] = {}

    def observe(self, job: JobRef, outstanding: int, desired: int) -> None:
        self.outstanding.labels(job.namespace, job.name).set(outstanding)
        self.desired.labels(job.namespace, job.name).set(desired)

    def scaled(self, job: JobRef, direction: str) -> None:
        self.scale_events.labels(job.namespace, job.name, direction).inc()

    def refused(self, job: JobRef, reason: Reason, count: int) -> None:
        self.refused_results.labels(job.namespace, job.name, reason).inc(count)
        self._refused_reasons.setdefault((job.namespace, job.name), set()).add(reason)

    def stepped(self, job: JobRef) -> None:
        self.steps.labels(job.namespace, job.name).inc()

    def forget(self, job: JobRef, deleted: bool = False) -> None:
        """Remove the series of `job` (those it never had are skipped); its step count only once
        it is `deleted`."""
        label_sets = [(self.outstanding, ()), (self.desired, ())]
        if deleted:
            label_sets.append((self.steps, ()))
        label_sets += [(self.scale_events, (direction,)) for direction in DIRECTIONS]
        reasons = self._refused_reasons.pop((job.namespace, job.name), set())
        label_sets += [(self.refused_results, (reason,)) for reason in sorted(reasons)]
        for metric, extra in label_sets:
            try:
                metric.remove(job.namespace, job.name, *extra)
            except KeyError:
                pass
