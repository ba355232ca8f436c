"""Shared plumbing for the test harness: cache and run directories, free loopback ports, and child
processes that are started with their logs captured and stopped by PID.

Why one module: the Kafka, control-plane and kubelet harnesses all start long-running processes;
they must all bind to loopback only, leave logs a failing test can point to, stop exactly the
PIDs they started — and die with the test run that started them, even when that run is killed
with SIGKILL and has no chance to stop them (`popen` below).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------------------------------
# Children that die with their parent
# --------------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_libc = ctypes.CDLL(None, use_errno=True)  # resolved before any fork: the child only calls it
_SIGKILL = int(signal.SIGKILL)
_die_with_parent = False


def children_die_with_parent(enabled: bool = True) -> None:
    """Make every `ManagedProcess` started from now on die with this process (the test run).

    Off by default because `make up` / `make cluster` start processes that must outlive the command
    that started them; the pytest plugin (tests/harness/hygiene.py) switches it on for test runs.
    """
    global _die_with_parent
    _die_with_parent = enabled


def _set_parent_death_signal(parent: int) -> Callable[[], None]:
    """A `preexec_fn` that asks the kernel to SIGKILL the child when its parent goes away.

    SIGKILL, not SIGTERM: a killed run leaves nothing that could wait for a grace period. The setting
    survives `exec` (of anything but a setuid binary). If the parent died before the call, no signal
    will ever come: the child kills itself instead.
    """

    def preexec() -> None:
        if _libc.prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


_spawn_requests: queue.Queue[tuple[Callable[[], Any], queue.Queue[tuple[bool, Any]]]] = queue.Queue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _spawner_loop() -> None:
    while True:
        start, reply = _spawn_requests.get()
        try:
            reply.put((True, start()))
        except BaseException as exc:  # handed to the caller, raised in its thread
            reply.put((False, exc))


def _on_spawner_thread(start: Callable[[], Any]) -> Any:
    """Run `start` on one thread that lives as long as the process.

    Why: the kernel delivers the parent-death signal when the *thread* that forked the child ends, not
    the process. A replica started from a short-lived thread (a thread pool in a test, a fixture run
    in a helper thread) would otherwise be killed as soon as that thread finished.
    """
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_spawner_loop, name="kvs2-harness-spawner", daemon=True)
            _spawner.start()
    reply: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
    _spawn_requests.put((start, reply))
    ok, value = reply.get()
    if not ok:
        raise value
    return value


def popen(argv: Sequence[str], *, die_with_parent: bool = True, **kwargs: Any) -> subprocess.Popen[Any]:
    """`subprocess.Popen` for every child the harness starts: with `die_with_parent` (the default) the
    child is SIGKILLed by the kernel when this process dies, however it dies (kill -9 included).

    The one place the harness forks, so the rule holds everywhere: a killed CI run leaves no Kafka JVM,
    etcd, kube-apiserver, process kubelet or replica behind. Pods of the process kubelet use it too
    (their parent is the kubelet, which dies with the run).
    """
    if not die_with_parent:
        return subprocess.Popen(list(argv), **kwargs)
    preexec = _set_parent_death_signal(os.getpid())
    return _on_spawner_thread(  # type: ignore[no-any-return]
        lambda: subprocess.Popen(list(argv), preexec_fn=preexec, **kwargs)
    )


# Every ManagedProcess started in this process, in start order: the pytest plugin attaches the log
# tails of those a failing test started (and of the long-lived ones) to its report.
started_processes: list[ManagedProcess] = []


@dataclass
class ManagedProcess:
    """A child process with its output in `log_path`; `stop()` ends exactly this PID (and its group).

    `die_with_parent`: None follows `children_die_with_parent()` (on under pytest, off for `make up`).
    """

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    die_with_parent: bool | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = dict(os.environ if self.env is None else self.env)
        self.popen = popen(
            self.argv,
            die_with_parent=_die_with_parent if self.die_with_parent is None else self.die_with_parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.cwd,
            start_new_session=True,  # its own process group, so stop() also ends its children
        )
        log.close()
        if not any(p is self for p in started_processes):
            started_processes.append(self)
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


class CheckedThread(threading.Thread):
    """A test's helper thread whose failure fails the test: `join()` re-raises what the target raised.

    A plain `threading.Thread` swallows its exception (pytest at most warns): a writer that died on its
    first call leaves a test that checks "everything written was seen" with nothing written — and green.
    `check()` lets the test's own loop stop as soon as the helper failed, instead of waiting for it.
    """

    def __init__(self, target: Callable[[], object], name: str | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self._work = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as exc:
            self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"helper thread {self.name} failed: {self.error!r}") from self.error

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.is_alive():
            raise AssertionError(f"helper thread {self.name} still running after {timeout}s")
        self.check()
