"""Shared plumbing for the test harness: cache and run directories, free loopback ports, and child
processes that are started with their logs captured and stopped by PID.

Why one module: the Kafka, control-plane and kubelet harnesses all start long-running processes;
they must all bind to loopback only, leave logs a failing test can point to, and stop exactly the
PIDs they started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


def cache_root() -> Path:
    """`~/.cache/kvs2` (or `$KVS2_CACHE`): downloads and builds, keyed by version."""
    root = Path(os.environ.get("KVS2_CACHE", Path.home() / ".cache" / "kvs2"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def state_root() -> Path:
    """`.kvs2/` in the repository: run directories, PID files and kubeconfigs of local stacks."""
    root = repo_root() / ".kvs2"
    root.mkdir(parents=True, exist_ok=True)
    return root


def progress(message: str) -> None:
    """Progress for slow cold-cache work, on the real stderr. Under pytest's capture it shows only where
    the caller suspends capturing (the fixtures do, while they install and start things)."""
    print(f"[kvs2-harness] {message}", file=sys.__stderr__, flush=True)


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class ManagedProcess:
    """A child process with its output in `log_path`; `stop()` ends exactly this PID (and its group)."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = dict(os.environ if self.env is None else self.env)
        self.popen = subprocess.Popen(
            list(self.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.cwd,
            start_new_session=True,  # its own process group, so stop() also ends its children
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, no grace: a crash."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit code."""
        if self.popen is None:
            return None
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])


def _running(pid: int) -> bool:
    """Alive and not a zombie: an exited process that init has not reaped yet counts as stopped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """Stop a process recorded in a PID file by an earlier `up` (its own session/process group)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _running(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def live_pid(pid_file: Path, cmdline_marker: bytes) -> int | None:
    """The PID recorded in `pid_file` if that process is alive, not a zombie, and its command line
    contains `cmdline_marker` — the guard against a recycled PID before `down` signals it."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    if cmdline_marker not in cmdline or "\nState:\tZ" in status:
        return None
    return pid
