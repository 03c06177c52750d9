"""Every benchmark still starts: its imports resolve and it answers --help (two of them had lost
their imports when bench/ gained services.py and proc.py, and no run would have said so until a
user tried)."""

from __future__ import annotations

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
