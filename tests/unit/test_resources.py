"""Pool sizing reads the container's cgroup limits, not the node's core count."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompressor_worker.resources import (
    cpu_quota,
    memory_budget,
    memory_limit,
    parse_cfs,
    parse_cpu_max,
    parse_memory_max,
    pool_size,
)
from kompressor_worker.task import check_key


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("max 100000", None), ("200000 100000", 2.0), ("150000 100000\n", 1.5), ("50000 100000", 0.5)],
)
def test_cgroup_v2_cpu_max(text: str, cpus: float | None):
    assert parse_cpu_max(text) == cpus


def test_cgroup_v1_quota():
    assert parse_cfs("-1", "100000") is None
    assert parse_cfs("300000\n", "100000\n") == 3.0


def test_memory_limits():
    assert parse_memory_max("max") is None
    assert parse_memory_max("2147483648\n") == 2**31
    assert parse_memory_max(str(2**63 - 4096)) is None  # cgroup v1's "unlimited"


def test_readers_prefer_v2_and_fall_back_to_v1(tmp_path: Path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(str(2**30))
    assert cpu_quota(tmp_path) == 4.0 and memory_limit(tmp_path) == 2**30
    (tmp_path / "cpu.max").write_text("100000 100000")
    (tmp_path / "memory.max").write_text("max")
    assert cpu_quota(tmp_path) == 1.0 and memory_limit(tmp_path) is None
    assert cpu_quota(tmp_path / "absent") is None


@given(st.integers(0, 64), st.one_of(st.none(), st.floats(0.01, 128)), st.integers(1, 256))
def test_pool_size_is_positive_and_follows_the_quota_not_the_node(configured, quota, cpus):
    size = pool_size(configured, quota, cpus)
    assert size >= 1
    if configured:
        assert size == configured
    elif quota is not None:
        assert size <= max(1, quota)
    else:
        assert size == cpus


def test_memory_budget_shares_the_limit_after_the_reserve():
    assert memory_budget(None, 4, 100) is None
    assert memory_budget(2 * 2**30, 2, 2**29) == (2 * 2**30 - 2**29) // 2


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("out/a.webp", True),
        ("/etc/passwd", False),
        ("out/../x.jpg", False),
        ("a//b.jpg", False),
        ("./a.jpg", False),
        ("", False),
        ("k" * 1025, False),
        ("k" * 1024, True),
    ],
)
def test_output_keys_are_checked(key: str, ok: bool):
    assert (check_key(key) is None) == ok
