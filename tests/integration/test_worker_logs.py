"""The worker's logs when the broker is down: kompressor's one line with the reason, not pika's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from testbed.process import free_port, wait_until


def _worker_against_a_closed_port(tmp_path: Path, **extra: str) -> list[dict]:
    """Run a worker whose broker URL is a loopback port nobody listens on, until it has retried
    twice; return its log records (one JSON object per stderr line)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KOMPRESSOR_")},
        "KOMPRESSOR_QUEUE": "kompressor.test.down.00000000.tasks",
        "KOMPRESSOR_BROKER__URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
        "KOMPRESSOR_PROCESSES": "1",
        "KOMPRESSOR_HEALTH_PORT": "0",
        "KOMPRESSOR_LOG_FORMAT": "json",
        **extra,
    }
    log = tmp_path / "worker.log"
    with log.open("w") as stderr:
        worker = subprocess.Popen([sys.executable, "-m", "kompressor_worker"], env=env, stderr=stderr)
    try:
        wait_until(lambda: log.read_text().count("broker unreachable") >= 2, 30, "two connection attempts")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_refused_connection_is_one_warning_with_the_reason(tmp_path: Path):
    records = _worker_against_a_closed_port(tmp_path)
    assert not [r for r in records if r["logger"].startswith("pika")], records
    assert not [r for r in records if r["level"] in ("error", "critical")], records
    unreachable = [r for r in records if "broker unreachable" in r["message"]]
    assert len(unreachable) >= 2
    for record in unreachable:
        assert record["level"] == "warning"
        assert "ConnectionRefusedError: [Errno 111] Connection refused" in record["message"]


def test_at_debug_the_libraries_speak_too(tmp_path: Path):
    """KOMPRESSOR_LOG_LEVEL (the chart's worker.logLevel) reaches the worker, and DEBUG opens pika."""
    records = _worker_against_a_closed_port(tmp_path, KOMPRESSOR_LOG_LEVEL="DEBUG")
    assert [r for r in records if r["logger"].startswith("pika") and r["level"] == "error"]
