"""The demo's own test bed (`scripts/demo.py` starts `python -m testbed up` when the environment
provides no RabbitMQ or S3): its data and logs land where the demo says, whatever the caller's
directory."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _demo() -> Any:
    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_relative_services_directory_is_the_callers_not_the_repositorys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    testbed = _demo().TestBed(["s3"], Path("demo-output") / "services")
    try:
        env = testbed.start(timeout=120)
        assert env["KOMPRESSOR_STORAGE__ENDPOINT_URL"].startswith("http://127.0.0.1:")
    finally:
        testbed.stop()
    services = tmp_path / "demo-output" / "services"
    assert (services / "testbed.log").read_text()
    assert {p.name for p in services.iterdir()} > {"testbed.log"}  # the S3 server's data dir too
