"""The operator's Prometheus metrics. The job label is `compressionjob`: Prometheus owns `job`."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.outstanding = Gauge(
            "kompressor_outstanding_tasks",
            "Tasks published and not yet accounted.",
            ["compressionjob"],
            registry=self.registry,
        )
        self.desired = Gauge(
            "kompressor_desired_replicas",
            "Worker replicas the policy asks for.",
            ["compressionjob"],
            registry=self.registry,
        )
        self.scale_events = Counter(
            "kompressor_scale_events",
            "Changes of a job's worker replicas.",
            ["compressionjob", "direction"],
            registry=self.registry,
        )
        self.refused_results = Counter(
            "kompressor_refused_results",
            "Results and dead letters dropped unrecorded: malformed, of another job, or of an id the "
            "job never published (anything with the broker credentials can publish them).",
            ["compressionjob", "reason"],
            registry=self.registry,
        )
