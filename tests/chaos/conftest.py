"""The chaos report: each chaos test adds a row; the table is printed at the end of the run and
written to `chaos-report.txt` under pytest's base temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testbed import RabbitMQ, S3Server
from tests.chaos.tools import Firehose, S3Recorder

COLUMNS = (
    ("scenario", "scenario"),
    ("inputs", "inputs"),
    ("kills", "kills"),
    ("restarts", "restarts"),
    ("lost", "lost"),
    ("duplicates", "duplicates"),
    ("bad_inputs", "bad inputs tried"),
    ("crashes", "crashes"),
    ("seconds", "seconds"),
)


@dataclass
class ChaosReport:
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: Path | None = None

    def add(self, scenario: str, **values) -> None:
        self.rows.append({"scenario": scenario, **values})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def table(self) -> str:
        cells = [[title for _, title in COLUMNS]]
        for row in self.rows:
            cells.append([str(row.get(key, "-")) for key, _ in COLUMNS])
        totals = ["total"]
        for key, _ in COLUMNS[1:]:
            numbers = [row[key] for row in self.rows if isinstance(row.get(key), int | float)]
            totals.append(str(round(sum(numbers), 1)) if numbers else "-")
        cells.append(totals)
        widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]

        def line(values: list[str]) -> str:
            return (
                "| "
                + " | ".join(
                    v.ljust(w) if i == 0 else v.rjust(w)
                    for i, (v, w) in enumerate(zip(values, widths, strict=True))
                )
                + " |"
            )

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        out = [line(cells[0]), rule, *(line(c) for c in cells[1:-1]), rule, line(cells[-1])]
        return "\n".join(out + (["", *self.notes] if self.notes else []))


_REPORT = pytest.StashKey[ChaosReport]()


@pytest.fixture
def firehose(rabbitmq: RabbitMQ) -> Iterator[Firehose]:
    """Every message published and every delivery on the broker, recorded (see tools.Firehose)."""
    tap = Firehose(rabbitmq).start()
    yield tap
    tap.stop()


@pytest.fixture
def recorder(s3: S3Server) -> Iterator[S3Recorder]:
    """A proxy in front of the S3 server that records each request and its status."""
    proxy = S3Recorder(s3.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def chaos_report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ChaosReport:
    report = request.config.stash.setdefault(_REPORT, ChaosReport())
    report.path = tmp_path_factory.getbasetemp() / "chaos-report.txt"
    return report


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    report = config.stash.get(_REPORT, None)
    if report is None or not report.rows:
        return
    text = report.table()
    terminalreporter.write_sep("=", "chaos report")
    for line in text.splitlines():
        terminalreporter.write_line(line)
    if report.path is not None:
        report.path.write_text(text + "\n")
        terminalreporter.write_line(f"(written to {report.path})")
