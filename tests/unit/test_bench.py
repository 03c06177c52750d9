"""Every benchmark still starts: its imports resolve and it answers --help (two of them had lost
their imports when bench/ gained services.py and proc.py, and no run would have said so until a
user tried)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SHARED = {"common.py", "services.py", "proc.py"}
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in SHARED)


def test_the_benchmarks_are_found():
    assert {"worker.py", "million.py", "jobs.py", "renditions.py", "node.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_benchmark_answers_help(script: str):
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=BENCH, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def test_reaped_counts_the_cpu_of_descendants_orphaned_before_they_end(tmp_path: Path):
    """renditions_jobs.py's CPU figure is a run's whole tree: a worker's forkserver outlives the
    worker, and its pool children's CPU reaches only the forkserver's parent. Here a child forks a
    grandchild that burns 0.5 s of CPU after the child has exited."""
    burn = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    started = time.process_time()\n"
        "    while time.process_time() - started < 0.5:\n"
        "        pass\n"
        "    os._exit(0)\n"
        "os._exit(3)\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import proc; "
        "proc.reaped(sys.argv[3:], sys.argv[2]).wait()"
    )
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-c", code, str(BENCH), str(report), sys.executable, "-c", burn],
        check=True,
        timeout=60,
    )
    measured = json.loads(report.read_text())
    assert measured["exit"] == 3
    assert measured["orphans_left"] == 0
    assert measured["cpu_seconds"] >= 0.45  # the orphan's 0.5 s, which RUSAGE_CHILDREN alone would miss
