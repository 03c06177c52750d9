"""The worker's Prometheus metrics (one registry per process; served on /metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.tasks = Counter(
            "kompressor_tasks",
            "Tasks ended, by outcome and reason.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.task_seconds = Histogram(
            "kompressor_task_seconds",
            "Seconds per task (fetch, compress, store).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.bytes_in = Counter("kompressor_bytes_in", "Input bytes read.", registry=self.registry)
        self.bytes_out = Counter("kompressor_bytes_out", "Output bytes written.", registry=self.registry)
        self.busy = Gauge(
            "kompressor_busy_processes", "Pool processes running a task.", registry=self.registry
        )
        self.retries = Counter(
            "kompressor_task_retries",
            "Tasks requeued after a transient failure.",
            ["reason"],
            registry=self.registry,
        )
        self.chosen_quality = Histogram(
            "kompressor_chosen_quality",
            "Encoder quality chosen by automatic quality (targetSSIM), per stored output.",
            buckets=(30, 40, 50, 60, 65, 70, 75, 80, 85, 90, 95, 100),
            registry=self.registry,
        )

    def observe_quality(self, quality: int | None, ssim: float | None) -> None:
        """Count a result's quality when automatic quality chose it (the result carries an SSIM)."""
        if quality is not None and ssim is not None:
            self.chosen_quality.observe(quality)
