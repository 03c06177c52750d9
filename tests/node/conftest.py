"""The test bed with a real node (testbed/node.py): its own bridge, and RabbitMQ, S3 and the control
plane listening on the bridge's gateway so that pods reach them. These fixtures replace the root
conftest's `rabbitmq`, `s3` and `kube` for the tests in this folder.

The node needs root, the node binaries and packages (`scripts/setup.sh kube node`; the images are
built on first use). KOMPRESSOR_NODE_TESTS=1 requires the node (its absence fails the tests),
KOMPRESSOR_NODE_TESTS=0 leaves these tests out; unset, they run when the node can, else are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import KubeAPI, RabbitMQ, S3Server, start_kube, start_rabbitmq, start_s3
from testbed.node import Bridge, Node, claim_bridge, node_binaries_present, start_node

WANTED = os.environ.get("KOMPRESSOR_NODE_TESTS", "")
if WANTED == "0":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def bridge() -> Iterator[Bridge]:
    if WANTED != "1":
        if os.geteuid() != 0:
            pytest.skip("the node needs root (KOMPRESSOR_NODE_TESTS=1 to require it)")
        if not node_binaries_present():
            pytest.skip("the node is not installed: scripts/setup.sh kube node")
    claimed = claim_bridge()
    yield claimed
    claimed.stop()


@pytest.fixture(scope="session")
def rabbitmq(testbed_dir: Path, bridge: Bridge) -> Iterator[RabbitMQ]:
    broker = start_rabbitmq(testbed_dir / "node-rabbitmq", host=bridge.gateway)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def s3(testbed_dir: Path, bridge: Bridge) -> Iterator[S3Server]:
    server = start_s3(testbed_dir / "node-s3", host=bridge.gateway)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kube(testbed_dir: Path, bridge: Bridge) -> Iterator[KubeAPI]:
    api = start_kube(testbed_dir / "node-kube", address=bridge.gateway)
    yield api
    api.stop()


@pytest.fixture(scope="session")
def node(testbed_dir: Path, kube: KubeAPI, bridge: Bridge) -> Iterator[Node]:
    running = start_node(kube, bridge, testbed_dir / "node")
    yield running
    running.stop()
