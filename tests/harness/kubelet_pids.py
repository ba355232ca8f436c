"""PID files for container processes: a PID plus the process start time, so a recycled PID is never
mistaken for a container, and a kubelet that died without cleaning up can be cleaned up after."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def _start_ticks(pid: int) -> str | None:
    """The process start time from /proc (field 22): with the PID it names a process unambiguously."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def write_pid_file(path: Path, pid: int) -> None:
    path.write_text(f"{pid} {_start_ticks(pid) or ''}\n")


def read_pid_file(path: Path) -> int | None:
    """The PID recorded in `path` if that very process still runs (same start time, not a zombie)."""
    try:
        pid_text, _, ticks = path.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if not ticks or _start_ticks(pid) != ticks:
        return None
    try:
        if "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text():
            return None
    except OSError:
        return None
    return pid


def sweep_stale_processes(state_dir: Path) -> int:
    """Kill container processes a previous (crashed) kubelet left behind; returns how many."""
    killed = 0
    for pid_file in (state_dir / "pods").glob("*/*/*.pid"):
        pid = read_pid_file(pid_file)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
                killed += 1
        pid_file.unlink(missing_ok=True)
    return killed
