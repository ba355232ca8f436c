"""Server-side cost from /proc: CPU time and memory of a server process and its children.

Why /proc and not the load generator's view: the load generators (ghz, redis-benchmark, the RESP
open-loop generator) each cost differently, so throughput alone compares the generators as much as the
servers. CPU seconds spent by the server per request are what one core of each server costs per call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it (`kvs2 serve --workers N` forks its followers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(parents.get(p, []))
    return found


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU seconds of `pid` (all threads) and, with `tree`, of its live descendants."""
    total = 0.0
    for p in descendants(pid) if tree else [pid]:
        try:
            fields = _stat_fields(p)
        except OSError:
            continue  # exited meanwhile
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


@dataclass(frozen=True)
class Cost:
    """Server CPU over one load run, less what the server burns when idle (ingester polling etc.)."""

    busy_seconds: float  # CPU during the run, idle share subtracted
    raw_seconds: float  # CPU during the run as measured
    idle_share: float  # idle CPU, in cores (0.01 = 1 % of a core)
    elapsed: float

    def per(self, requests: float) -> float:
        """Seconds of server CPU per request (or per record/key, whatever `requests` counts)."""
        return self.busy_seconds / max(1.0, requests)

    def note(self, requests: float, unit: str = "request") -> str:
        return (
            f"server CPU {self.per(requests) * 1e6:.1f} µs/{unit} (/proc, less its idle "
            f"{self.idle_share * 100:.1f}% of a core)"
        )


def measure(pids: list[int], run: Callable[[], T], idle_window: float = 2.0) -> tuple[T, Cost]:
    """Run `run()` and return its result with the CPU the processes `pids` (and children) spent."""
    idle_from = sum(cpu_seconds(p) for p in pids)
    time.sleep(idle_window)
    idle = (sum(cpu_seconds(p) for p in pids) - idle_from) / idle_window
    before, started = sum(cpu_seconds(p) for p in pids), time.monotonic()
    result = run()
    elapsed = time.monotonic() - started
    raw = sum(cpu_seconds(p) for p in pids) - before
    return result, Cost(max(0.0, raw - idle * elapsed), raw, idle, elapsed)


@dataclass(frozen=True)
class Memory:
    rss: int  # bytes
    anon: int
    file: int
    peak: int  # VmHWM: the high-water mark of the resident set

    def note(self) -> str:
        mb = 1 << 20
        return (
            f"RSS {self.rss / mb:,.0f} MB (anonymous {self.anon / mb:,.0f} MB, file-backed incl. LMDB pages "
            f"{self.file / mb:,.0f} MB; peak {self.peak / mb:,.0f} MB)"
        )


def memory(pid: int) -> Memory:
    """Resident memory of one process from /proc/PID/status (kB figures)."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[name] = int(rest.split()[0]) * 1024
    return Memory(values["VmRSS"], values.get("RssAnon", 0), values.get("RssFile", 0), values.get("VmHWM", 0))


def uses_uvloop(pid: int) -> bool:
    """Whether a Python process has uvloop's extension loaded (its event loop is then almost surely
    uvloop's): the floor server is run with the same loop as the kvs2 replica it is compared with."""
    try:
        return "uvloop" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
