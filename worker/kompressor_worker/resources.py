"""How much CPU and memory this container may use, read from its cgroup.

`os.cpu_count()` reports the node's cores, not the container's CPU limit; a pool sized from it on a
64-core node with a 2-CPU limit would run 64 processes throttled to 2 CPUs. The parsers are pure; the
readers only open files under the cgroup root.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
# cgroup v1 reports "no limit" as a huge number rather than "max".
_V1_UNLIMITED = 2**62


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max` ("200000 100000" → 2.0; "max 100000" → None)."""
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1 = no limit)."""
    quota = int(quota_text.strip())
    return None if quota <= 0 else quota / int(period_text.strip())


def parse_memory_max(text: str) -> int | None:
    """cgroup v2 `memory.max` or v1 `memory.limit_in_bytes` in bytes ("max" or v1's huge number: None)."""
    text = text.strip()
    if text == "max":
        return None
    value = int(text)
    return None if value >= _V1_UNLIMITED else value


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cpu_quota(root: Path = CGROUP) -> float | None:
    """The CPUs the container's cgroup (v2, else v1) allows, or None when unlimited or unreadable."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        return parse_cpu_max(v2)
    quota, period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if quota is not None and period is not None:
        return parse_cfs(quota, period)
    return None


def memory_limit(root: Path = CGROUP) -> int | None:
    """The bytes the container's cgroup (v2, else v1) allows, or None when unlimited or unreadable."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        text = _read(path)
        if text is not None:
            return parse_memory_max(text)
    return None


def pool_size(configured: int, quota: float | None, cpus: int | None) -> int:
    """`configured` when set; else the CPU quota rounded down (a fractional CPU cannot run a whole
    encoder without throttling), at least 1; else the CPUs this process may run on."""
    if configured > 0:
        return configured
    if quota is not None:
        return max(1, math.floor(quota))
    return max(1, cpus or 1)


def memory_budget(limit: int | None, processes: int, reserve: int) -> int | None:
    """Bytes each child may use for one image: the limit less the parent's reserve, shared out."""
    if limit is None:
        return None
    return max(0, limit - reserve) // processes


def available_cpus() -> int:
    """The cores this process may run on (its affinity, not the node's count)."""
    return len(os.sched_getaffinity(0))
