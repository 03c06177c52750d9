"""What `kompressor run` shows a person: live progress while it runs, a summary table at the end."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table

from kompressor.crd import CompressionJobStatus


def console(stderr: bool = False) -> Console:
    """A rich console for local mode's output, without syntax highlighting."""
    return Console(stderr=stderr, highlight=False)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def line(status: CompressionJobStatus) -> str:
    """One line of local mode's progress: phase, counts, speed, workers, bytes saved, time left."""
    eta = f", ~{status.estimated_seconds_remaining}s left" if status.estimated_seconds_remaining else ""
    return (
        f"{status.phase.value:<9} done {status.succeeded + status.skipped}/{status.total}  "
        f"failed {status.failed}  {status.images_per_second:.1f} img/s  workers {status.workers.ready}  "
        f"{_bytes(status)}{eta}"
    )


def _bytes(status: CompressionJobStatus) -> str:
    if status.renditions is not None:
        return f"wrote {_size(status.bytes_out)}"
    return f"saved {_size(status.bytes_in - status.bytes_out)} {status.saved}"


class LiveProgress:
    """A one-line live display; a no-op when disabled (--json) or when stderr is not a terminal."""

    def __init__(self, out: Console, name: str, enabled: bool = True):
        self.name = name
        self._live = (
            Live(console=out, refresh_per_second=4, transient=True) if enabled and out.is_terminal else None
        )

    def __enter__(self) -> LiveProgress:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, status: CompressionJobStatus) -> None:
        if self._live is not None:
            self._live.update(f"[bold]{self.name}[/bold] {line(status)}")


def print_summary(out: Console, name: str, run) -> None:
    """The table local mode prints when a job ends."""
    status = run.status
    table = Table(title=f"CompressionJob {name}: {status.phase.value}", show_header=False)
    table.add_column(justify="right", style="bold")
    table.add_column(overflow="fold")  # the manifest URL must stay whole, to be copied
    seconds = (
        (status.completion_time - status.start_time).total_seconds()
        if status.completion_time and status.start_time
        else 0
    )
    rows = [
        ("inputs", str(status.total)),
        ("compressed", str(status.succeeded)),
        ("skipped", str(status.skipped)),
        (
            "failed",
            str(status.failed) + (f"  {status.failures_by_reason}" if status.failures_by_reason else ""),
        ),
        (
            "bytes in → out",
            f"{_size(status.bytes_in)} → {_size(status.bytes_out)}"
            + ("" if status.renditions is not None else f"  (saved {status.saved or '0%'})"),
        ),
        ("time", f"{seconds:.1f} s ({status.total / seconds:.1f} images/s)" if seconds else "-"),
        ("manifest", status.manifest or "-"),
        ("worker logs", str(run.log_dir)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


def print_dry_run(out: Console, name: str, plan) -> None:
    """What `kompressor run --dry-run` found (a local.DryRun): the first tasks, the totals, the time."""
    figures = plan.estimate
    out.print(f"CompressionJob {name}: dry run, nothing published or written")
    for task in plan.first:
        size = f" ({_size(task.source.size)})" if task.source.size is not None else ""
        first, *more = task.dest_keys()
        others = f" (+{len(more)} more)" if more else ""
        out.print(f"  {task.source.describe()}{size} → s3://{task.dest_bucket}/{first}{others}")
    if figures.inputs > len(plan.first):
        out.print(f"  ... and {figures.inputs - len(plan.first)} more")
    unknown = f", {figures.unknown_sizes} of unknown size (URLs)" if figures.unknown_sizes else ""
    out.print(f"inputs: {figures.inputs}, {_size(figures.bytes)}{unknown}")
    out.print(
        f"estimate: ~{_duration(figures.seconds(plan.processes))} with {plan.processes} compressing "
        f"process(es) on this machine ({_duration(figures.cpu_seconds)} of CPU at the rates measured "
        "in kompressor_operator/planning.py; inputs whose output exists are skipped faster)"
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
