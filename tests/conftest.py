"""Session fixtures for the real services of the test bed (testbed/): RabbitMQ, S3 and Kubernetes.

Each service starts once per session on free loopback ports, the first time a test asks for it, and
stops at the end. Its data and logs live under one run directory, removed when every test passed and
kept (its path printed) when one failed.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import KubeAPI, RabbitMQ, S3Server, start_kube, start_rabbitmq, start_s3


@pytest.fixture(scope="session")
def testbed_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("testbed")
    yield path
    if request.session.testsfailed:
        request.config.stash[_KEPT] = path
    else:
        shutil.rmtree(path, ignore_errors=True)


_KEPT = pytest.StashKey[Path]()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    kept = config.stash.get(_KEPT, None)
    if kept is not None:
        terminalreporter.write_line(f"test bed logs kept in {kept}")


@pytest.fixture(scope="session")
def rabbitmq(testbed_dir: Path) -> Iterator[RabbitMQ]:
    broker = start_rabbitmq(testbed_dir / "rabbitmq")
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def s3(testbed_dir: Path) -> Iterator[S3Server]:
    server = start_s3(testbed_dir / "s3")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kube(testbed_dir: Path) -> Iterator[KubeAPI]:
    api = start_kube(testbed_dir / "kube")
    yield api
    api.stop()


@pytest.fixture
def bucket(s3: S3Server) -> str:
    """A new empty bucket for one test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name
