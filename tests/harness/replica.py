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

from tests.harness.common import LOOPBACK, ManagedProcess, free_port, wait_until


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
    port: int = field(default_factory=free_port)
    host: str = LOOPBACK
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    process: ManagedProcess | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> ReplicaProcess:
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
        return self

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
