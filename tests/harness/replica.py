"""Run `kvs2 serve` as a real child process, for integration tests and the local stack.

A real process (not an in-process server) so tests can SIGKILL it mid-ingest, restart it on the same
data directory, and see exactly what a user would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvs2.client import Client

from tests.harness.common import LOOPBACK, ManagedProcess, free_port, progress, wait_until

# What the replica (and gRPC's own log line) say when the port was taken between `free_port()` and the
# replica's bind; "Failed to bind to address" is what replicas without a clear bind error printed.
PORT_TAKEN_MARKERS = ("cannot listen on", "Address already in use", "Failed to bind to address")
PORT_ATTEMPTS = 5


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds a listening TCP socket on `port` (IPv4 or IPv6 table: gRPC
    binds 127.0.0.1 as ::ffff:127.0.0.1). Not "the port answers": that could be whoever took it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].rsplit(":", 1)[1] == f"{port:04X}" and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def kvs2_command() -> list[str]:
    """The installed console script next to this interpreter (the same one `pip install` makes)."""
    script = Path(sys.executable).parent / "kvs2"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kvs2.cli"]


@dataclass
class ReplicaProcess:
    bootstrap_servers: str
    topic: str
    data_dir: Path
    log_path: Path
    port: int = 0  # 0: a free port, chosen now
    host: str = LOOPBACK
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    process: ManagedProcess | None = None
    # The port the harness chose with `free_port()` while the replica has not bound it yet: only such a
    # port may be swapped for another when someone else takes it first (never one the test asked for).
    _movable_port: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.port == 0:
            self.port = free_port()
            self._movable_port = self.port

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, bind_timeout: float = 60.0) -> ReplicaProcess:
        """Start `kvs2 serve` and wait until it listens (or exits).

        The port from `free_port()` is only free when it was chosen: another process on this busy machine
        may bind it before the replica does. Then the replica exits with "Address already in use", and
        the harness starts it again on a new free port — but only on the first start, so a restart keeps
        the address the test and its clients know.
        """
        for attempt in range(1, PORT_ATTEMPTS + 1):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._launch()
            if not self._port_was_taken(offset, bind_timeout):
                self._movable_port = None  # bound: from now on the address is the replica's
                return self
            if self._movable_port != self.port or attempt == PORT_ATTEMPTS:
                raise RuntimeError(
                    f"replica could not listen on {self.target}: the port is in use; "
                    f"log {self.log_path}:\n{self.process.log_tail() if self.process else ''}"
                )
            taken = self.port
            self.port = self._movable_port = free_port()
            progress(f"replica: port {taken} was taken before it could bind; retrying on {self.port}")
        raise AssertionError("unreachable")

    def _port_was_taken(self, log_offset: int, timeout: float) -> bool:
        """Wait until the replica logs that it listens, or exits; True if it exited over a taken port."""
        process = self.process
        assert process is not None

        def settled() -> bool:
            return not process.alive() or listens(process.pid, self.port)

        try:
            wait_until(settled, timeout=timeout, what=f"replica to listen on {self.target}")
        except TimeoutError:
            return False  # alive but silent: let the caller's own wait report what is wrong
        if process.alive():
            return False
        log = self._log_since(log_offset)
        return any(marker in log for marker in PORT_TAKEN_MARKERS)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _launch(self) -> None:
        argv = [
            *kvs2_command(),
            "serve",
            "--bootstrap-servers",
            self.bootstrap_servers,
            "--topic",
            self.topic,
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.target,
            *self.extra_args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.process = ManagedProcess(f"replica-{self.port}", argv, self.log_path, env=env).start()

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.target, timeout=timeout)

    def health(self) -> str:
        with self.client(timeout=1.0) as c:
            return c.health()

    def wait_serving(self, timeout: float = 60.0) -> None:
        def serving() -> bool:
            if self.process is not None and not self.process.alive():
                raise RuntimeError(f"replica exited; log {self.log_path}:\n{self.process.log_tail()}")
            return self.health() == "SERVING"

        try:
            wait_until(serving, timeout=timeout, what=f"replica {self.target} to be SERVING")
        except TimeoutError as exc:
            tail = self.process.log_tail() if self.process else ""
            raise TimeoutError(f"{exc}; log {self.log_path}:\n{tail}") from exc

    def stop(self, grace: float = 15.0) -> int | None:
        return None if self.process is None else self.process.stop(grace)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
