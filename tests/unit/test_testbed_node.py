"""The test bed node's choice of bridge network (testbed/node.py): a /24 of its own, never one the
machine already has an address in; and its machine-wide lock: one node at a time."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed import node
from testbed.node import BRIDGE_POOL, free_bridge

networks = st.builds(
    lambda address, prefix: ipaddress.ip_network((address, prefix), strict=False),
    st.integers(
        min_value=int(BRIDGE_POOL.network_address) - 2**16, max_value=int(BRIDGE_POOL.broadcast_address)
    ),
    st.integers(min_value=8, max_value=32),
)


@given(st.lists(networks, max_size=20))
def test_the_bridge_is_the_first_pool_subnet_no_machine_network_overlaps(used):
    try:
        bridge = free_bridge(used)
    except RuntimeError:
        assert all(any(s.overlaps(n) for n in used) for s in BRIDGE_POOL.subnets(new_prefix=24))
        return
    assert bridge.subnet.prefixlen == 24 and bridge.subnet.subnet_of(BRIDGE_POOL)
    assert not any(bridge.subnet.overlaps(n) for n in used)
    earlier = [s for s in BRIDGE_POOL.subnets(new_prefix=24) if s < bridge.subnet]
    assert all(any(s.overlaps(n) for n in used) for s in earlier)
    assert bridge.gateway == str(bridge.subnet.network_address + 1)


def test_a_machine_on_the_whole_pool_gets_no_bridge():
    with pytest.raises(RuntimeError, match="no free /24"):
        free_bridge([ipaddress.ip_network("10.0.0.0/8")])


def test_the_machine_own_network_is_skipped():
    assert free_bridge([ipaddress.ip_network("10.213.0.0/23")]).name == "kompressor2"


def test_a_second_node_waits_for_the_first_to_stop(tmp_path, monkeypatch):
    monkeypatch.setattr(node, "LOCK", tmp_path / "node.lock")
    first = node._take_lock(timeout=1)
    with pytest.raises(TimeoutError, match="another node is running"):
        node._take_lock(timeout=1.5)
    first.close()
    node._take_lock(timeout=1).close()
