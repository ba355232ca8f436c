"""`kvs2 serve --workers N`: several server processes for one replica, one of them the ingester."""

from __future__ import annotations

import os
import signal
import subprocess

from kvs2.client import Client

from tests.harness.common import wait_until
from tests.harness.kafka import KafkaBroker
from tests.integration.dataplane.conftest import StartReplica


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def test_every_worker_serves_reads_writes_cas_and_waits(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    replica = start_replica(kafka.bootstrap_servers, topic, "a", extra_args=("--workers", "3"))
    assert replica.process is not None
    assert len(_children(replica.process.pid)) >= 2  # the leader forked two followers
    # Each Client is a new connection; SO_REUSEPORT spreads them over the processes.
    for i in range(30):
        with Client(replica.target) as c:
            assert c.health() == "SERVING"
            written = c.set(f"k{i}".encode(), b"v")
            value = c.get(f"k{i}".encode(), after=[written])
            assert value is not None
            assert c.get(f"k{i}".encode(), consistency="linearizable") is not None
            assert c.set_if(f"cas{i}".encode(), b"x", 0)  # the verdict reaches whichever process asked
            assert not c.set_if(f"cas{i}".encode(), b"y", 0)
    assert replica.stop() == 0  # SIGTERM: every process drains and exits


def test_a_dead_worker_stops_the_replica_so_it_gets_restarted(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    replica = start_replica(kafka.bootstrap_servers, topic, "a", extra_args=("--workers", "2"))
    assert replica.process is not None
    (follower,) = _children(replica.process.pid)
    os.kill(follower, signal.SIGKILL)
    wait_until(lambda: not replica.process.alive(), timeout=30, what="the leader to stop")  # type: ignore[union-attr]
    assert replica.process.popen is not None
    assert replica.process.popen.returncode == 1
    assert "worker process" in replica.log_text()
