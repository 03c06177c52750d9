"""CPU accounting from /proc for the benchmarks: per process, per process tree, for the machine.

`Meter` measures a block (this process, each named service's tree, and the rest of the machine);
`CpuMeter` follows bench/worker.py's groups (worker parent, forkserver and pool children) between
samples, with the time their threads waited for a CPU.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree() -> dict[int, list[int]]:
    """Parent pid -> child pids."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    return children


def parent_pids() -> dict[int, int]:
    """Child pid -> parent pid."""
    return {child: parent for parent, children in process_tree().items() for child in children}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of the process itself, in clock ticks; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def run_delay_ns(pid: int) -> int | None:
    """Time the process's threads spent runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat):
    the part of a wall-clock figure that other work on the same cores added."""
    total, found = 0, False
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
            found = True
        except (OSError, IndexError, ValueError):
            continue
    return total if found else None


def system_busy_ticks() -> int:
    """Busy CPU time of the whole machine (all CPUs): everything but idle and iowait, in ticks."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]) - fields[3] - fields[4]


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine (all CPUs): everything but idle and iowait."""
    return system_busy_ticks() / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and every live process below it."""
    children, total, todo = process_tree(), 0, [pid]
    while todo:
        current = todo.pop()
        total += cpu_ticks(current) or 0
        todo.extend(children.get(current, []))
    return total / CLK_TCK


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Meter:
    """Wall time and CPU seconds over a block: this process, each service, and the rest of the
    machine ("other": every process not named, e.g. other people's work on a shared machine)."""

    pids: dict[str, int]
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self) -> Iterator[Meter]:
        start_own, start_busy = own_cpu_seconds(), machine_busy_seconds()
        start_services = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()}
        started = time.monotonic()
        try:
            yield self
        finally:
            self.wall = time.monotonic() - started
            self.cpu = {"bench": own_cpu_seconds() - start_own}
            for name, pid in self.pids.items():
                self.cpu[name] = tree_cpu_seconds(pid) - start_services[name]
            busy = machine_busy_seconds() - start_busy
            self.cpu["other"] = max(0.0, busy - sum(self.cpu.values()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_seconds": round(self.wall, 3),
            "cpu_seconds": {k: round(v, 2) for k, v in self.cpu.items()},
        }

    def describe(self) -> str:
        return ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.cpu.items())


class CpuMeter:
    """CPU seconds used by this process's tree, grouped, between `start()` and the last `sample()`,
    and by everything else on the machine ("other": /proc/stat's busy time less the tree's).

    Groups: a process under one of `roots` (name -> pid) belongs to that name, the rest of the tree
    to "bench"; under the worker, its parent, forkserver and pool children are told apart. Each
    pid's own utime + stime is read at every sample; a pid that exits between two samples loses at
    most what it used since the last one (pool children are recycled). The tree is re-scanned at
    most every `rescan` seconds.
    """

    def __init__(self, roots: dict[str, int | None], rescan: float = 0.5):
        self.roots = {pid: name for name, pid in roots.items() if pid is not None}
        self.rescan = rescan
        self.groups: dict[int, str] = {}
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.wait_first: dict[int, int] = {}
        self.wait_last: dict[int, int] = {}
        self.system_first = self.system_last = 0
        self.started = False
        self._scanned = 0.0

    def add_root(self, name: str, pid: int) -> None:
        self.roots[pid] = name

    def _scan(self) -> None:
        parents = parent_pids()
        me = os.getpid()
        for pid in parents:
            if pid in self.groups:
                continue
            chain, node = [], pid
            while node and node != me and node not in self.roots:
                chain.append(node)
                node = parents.get(node, 0)
            if node == 0:
                continue  # not in this process's tree
            root_name = self.roots.get(node, "bench")
            self.groups[pid] = self._classify(root_name, pid, depth=len(chain))
        self._scanned = time.monotonic()

    def _classify(self, root_name: str, pid: int, depth: int) -> str:
        """depth: 0 for the root itself, 1 for its children (forkserver, resource tracker), 2 and
        more for what the forkserver forks (pool children inherit its command line)."""
        if root_name not in ("worker", "bench"):
            return root_name
        if depth == 0:
            return "worker parent" if root_name == "worker" else "bench"
        if depth == 1 and ("forkserver" in cmdline(pid) or "resource_tracker" in cmdline(pid)):
            return f"{root_name} forkserver"
        return "worker pool" if root_name == "worker" else "bare pool"

    def start(self) -> None:
        self._scan()
        self.first, self.last, self.wait_first, self.wait_last = {}, {}, {}, {}
        for pid in self.groups:
            ticks, wait = cpu_ticks(pid), run_delay_ns(pid)
            if ticks is not None:
                self.first[pid] = self.last[pid] = ticks
            if wait is not None:
                self.wait_first[pid] = self.wait_last[pid] = wait
        self.system_first = self.system_last = system_busy_ticks()
        self.started = True

    def sample(self) -> None:
        if not self.started:
            return
        if time.monotonic() - self._scanned > self.rescan:
            self._scan()
        for pid in self.groups:
            ticks, wait = cpu_ticks(pid), run_delay_ns(pid)
            if ticks is not None:
                self.first.setdefault(pid, 0)  # born after start: all of its CPU counts
                self.last[pid] = ticks
            if wait is not None:
                self.wait_first.setdefault(pid, 0)
                self.wait_last[pid] = wait
        self.system_last = system_busy_ticks()

    def seconds(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for pid, last in self.last.items():
            group = self.groups[pid]
            totals[group] = totals.get(group, 0.0) + (last - self.first.get(pid, 0)) / CLK_TCK
        system = (self.system_last - self.system_first) / CLK_TCK
        totals["other"] = max(0.0, system - sum(totals.values()))
        return totals

    def run_delay(self) -> dict[str, float]:
        """Seconds each group's threads waited for a CPU while runnable."""
        totals: dict[str, float] = {}
        for pid, last in self.wait_last.items():
            group = self.groups[pid]
            totals[group] = totals.get(group, 0.0) + (last - self.wait_first.get(pid, 0)) / 1e9
        return totals


PR_SET_CHILD_SUBREAPER = 36


def reaper(report: str, argv: list[str], timeout: float = 60.0) -> None:
    """Run `argv` and write to `report` (JSON) its wall seconds, exit code and the CPU seconds of its
    whole process tree, exactly: this process becomes a child subreaper (prctl), so the processes
    orphaned below it (a worker's forkserver outlives the worker, and its pool children's CPU is
    counted only to the forkserver's parent when reaped) are re-parented here and reaped, and
    RUSAGE_CHILDREN then holds every descendant's CPU. Run it in its own process (`reaped`): it
    waits for every child it has. `timeout`: how long to wait for orphans after `argv` exits."""
    import ctypes
    import json
    import resource
    import subprocess

    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    started = time.monotonic()
    child = subprocess.Popen(argv)
    code = child.wait()
    wall = time.monotonic() - started
    deadline, left = time.monotonic() + timeout, 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # every descendant reaped
        if pid == 0:
            if time.monotonic() > deadline:
                left = len(process_tree().get(os.getpid(), []))
                break
            time.sleep(0.05)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(report).write_text(
        json.dumps(
            {
                "exit": code,
                "wall_seconds": wall,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "user_seconds": usage.ru_utime,
                "system_seconds": usage.ru_stime,
                "orphans_left": left,
            }
        )
    )


def reaped(argv: list[str], report: Path, **popen: Any):
    """`argv` under `reaper` in a new process (its report in `report`): a Popen, `popen` its
    keyword arguments (env, cwd, stdout, ...)."""
    import subprocess
    import sys

    bench = str(Path(__file__).resolve().parent)
    code = "import sys; sys.path.insert(0, sys.argv[1]); import proc; proc.reaper(sys.argv[2], sys.argv[3:])"
    return subprocess.Popen([sys.executable, "-c", code, bench, str(report), *argv], **popen)
