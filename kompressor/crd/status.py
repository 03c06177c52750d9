"""The CompressionJob status: the progress the operator (or local mode) writes, and only it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from kompressor.crd.base import CamelModel


# No docstring: pydantic would publish it in the CRD as the enum's description; the field has one.
class Phase(StrEnum):
    pending = "Pending"
    listing = "Listing"
    running = "Running"
    suspended = "Suspended"
    succeeded = "Succeeded"
    failed = "Failed"


FINISHED_PHASES = frozenset({Phase.succeeded, Phase.failed})


class Condition(CamelModel):
    """A Kubernetes API convention condition."""

    type: str = Field(description="Condition type, e.g. Ready, Failed, SpecInvalid.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="One CamelCase word for machines.")
    message: str = Field(default="", description="A sentence for people.")
    last_transition_time: datetime | None = Field(default=None, description="When status last changed.")


class WorkerCounts(CamelModel):
    """Worker pods wanted and ready."""

    desired: int = Field(
        default=0,
        ge=0,
        description="Replicas the scaling policy asks for; with an external scaler, the Deployment's "
        "while the job runs.",
    )
    ready: int = Field(default=0, ge=0, description="Worker pods ready.")


class RenditionCounts(CamelModel):
    """With renditions: how each (input, rendition) ended."""

    succeeded: int = Field(default=0, ge=0, description="Renditions stored (or found stored by this job).")
    skipped: int = Field(
        default=0, ge=0, description="Renditions skipped with a reason (exists, would_upscale, ...)."
    )
    failed: int = Field(default=0, ge=0, description="Renditions that failed with a reason.")
    progress: str = Field(
        default="0/0",
        description="(succeeded+skipped)/(inputs found × outputs per input), for kubectl get -o wide.",
    )


class CompressionJobStatus(CamelModel):
    """Progress of the job, written by the operator (or local mode) only."""

    phase: Phase = Field(
        default=Phase.pending, description="Pending, Listing, Running, Suspended, Succeeded or Failed."
    )
    total: int = Field(default=0, ge=0, description="Inputs found so far.")
    published: int = Field(default=0, ge=0, description="Tasks published to the queue so far.")
    succeeded: int = Field(default=0, ge=0, description="Inputs compressed and stored.")
    skipped: int = Field(default=0, ge=0, description="Inputs skipped with a reason: exists, not_smaller.")
    failed: int = Field(default=0, ge=0, description="Inputs that failed with a reason.")
    outstanding: int = Field(default=0, ge=0, description="Tasks published and not yet accounted.")
    progress: str = Field(default="0/0", description="(succeeded+skipped)/total, for kubectl get.")
    bytes_in: int = Field(
        default=0,
        ge=0,
        description="Bytes of the inputs that have an output (made now or kept from an earlier run); "
        "failed inputs and inputs skipped without an output (not_smaller) are not counted.",
    )
    bytes_out: int = Field(default=0, ge=0, description="Bytes of those outputs.")
    saved: str = Field(
        default="",
        description="Share of bytesIn the outputs save (1 - bytesOut/bytesIn), for kubectl get. Empty "
        "for a job with renditions: its outputs are a set made from each source, not a smaller copy of "
        "it (bytesOut counts every rendition).",
    )
    images_per_second: float = Field(default=0.0, ge=0, description="Recent throughput.")
    estimated_seconds_remaining: int | None = Field(
        default=None, ge=0, description="At recent throughput; empty when unknown."
    )
    failures_by_reason: dict[str, int] = Field(
        default_factory=dict, description="Failed inputs counted by machine-readable reason."
    )
    workers: WorkerCounts = Field(default_factory=WorkerCounts, description="Worker pods.")
    queue: str | None = Field(
        default=None,
        description="The RabbitMQ queue the workers consume: the queueName of a KEDA RabbitMQ "
        "trigger. It holds the job's uid, so a recreated job never reads an old job's queue.",
    )
    backlog: int = Field(
        default=0, ge=0, description="Tasks queued and in flight: the number an external scaler follows."
    )
    start_time: datetime | None = Field(default=None, description="When the job started.")
    completion_time: datetime | None = Field(default=None, description="When the job finished.")
    observed_generation: int | None = Field(
        default=None, description="The spec generation this status reflects."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Latest observations.")
    manifest: str | None = Field(
        default=None, description="s3:// URL of manifest.jsonl, one line per input and its outcome."
    )
    renditions: RenditionCounts | None = Field(
        default=None, description="With spec.renditions: outputs counted one by one."
    )
