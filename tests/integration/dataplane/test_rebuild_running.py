"""A running replica that must rebuild takes a peer's snapshot (kvs2.restart), on real Kafka.

Replica B (`--bootstrap-peers` = A, `--workers 2`) serves the topic; the topic is deleted and recreated
with other data. B must discard everything it holds. A (no peers) rebuilds in place by replaying; B,
held back (SIGSTOP) until A serves the new topic so that the peer it asks is ready, restarts itself and
installs A's snapshot. Meanwhile a reader keeps asking B for every key: once B has stopped serving the old
topic, no answer may carry the old topic's data, and none may mix the two (a half-installed store).
"""

from __future__ import annotations

import signal
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
from kvs2.client import BatchWriteError, Client
from kvs2.credentials import ClientTls

from bench.snapshot import store_digest
from tests.harness.common import LOOPBACK, free_port, wait_until
from tests.harness.kafka import KafkaBroker, create_topic, delete_topic
from tests.harness.replica import ReplicaProcess
from tests.integration.dataplane.conftest import PARTITIONS, StartReplica

pytestmark = pytest.mark.integration

KEYS = [f"k{i:03d}".encode() for i in range(120)]
NEW_KEYS = KEYS[::2] + [f"n{i:03d}".encode() for i in range(40)]


def _old(key: bytes) -> bytes:
    return b"old-" + key


def _new(key: bytes) -> bytes:
    return b"new-" + key


@dataclass
class Reader:
    """Reads every key of both topics from B in one MultiGet (one LMDB snapshot), over and over, each on
    a new connection (so that every worker process of B is asked), and judges each answer."""

    target: str
    tls: ClientTls | None = None
    refused: int = 0  # UNAVAILABLE (not serving), refused connections, deadlines while B is stopped
    old: int = 0  # wholly the old topic's data, answered before B first refused
    new: int = 0  # wholly the new topic's data
    foreign: list[str] = field(default_factory=list)  # old data after a refusal, or a mixture
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        keys = sorted(set(KEYS) | set(NEW_KEYS))
        while not self.stop.is_set():
            try:
                with Client(self.target, timeout=2.0, retries=0, tls=self.tls) as c:
                    answer = dict(c.multi_get(keys))
            except grpc.RpcError:
                self.refused += 1
                self.stop.wait(0.05)
                continue
            got = {k: v.data for k, v in answer.items() if v is not None}
            if got == {k: _old(k) for k in KEYS}:
                if self.refused:
                    self.foreign.append("the old topic's data after B had stopped serving it")
                else:
                    self.old += 1
            elif got == {k: _new(k) for k in NEW_KEYS}:
                self.new += 1
            else:
                self.foreign.append(f"a mixture or partial store: {sorted(got.items())[:6]}…")


def _write(client: Client, items: dict[bytes, bytes]) -> None:
    """Publish every item (again, if the producer has not learned of the recreated topic yet)."""

    def published() -> bool:
        try:
            client.set_many(items)
        except (grpc.RpcError, BatchWriteError):
            return False
        return True

    wait_until(published, timeout=60, interval=1.0, what="the writes to be published")


def _digest(replica: ReplicaProcess) -> str:
    return store_digest(replica.data_dir)


@dataclass
class Pair:
    """Replicas A (no peers) and B (`--bootstrap-peers` = A) of `topic`, as the scenario drives them."""

    bootstrap: str
    topic: str
    partitions: int
    a_target: str
    b: ReplicaProcess
    client: Callable[[str], Client]  # a client of the replica at this address
    wait_a_serving: Callable[[], None]
    wait_b_serving: Callable[[], None]
    tls: ClientTls | None = None


def rebuild_b_while_running(pair: Pair) -> None:
    """Recreate the topic with other data while B serves; B must restart, take A's snapshot, and never
    answer a reader with the old topic's data (or a mixture) once it has stopped serving it."""
    with pair.client(pair.a_target) as c:
        _write(c, {k: _old(k) for k in KEYS})
    with pair.client(pair.b.target) as cb:
        wait_until(lambda: cb.count() == len(KEYS), timeout=60, what="b to apply the old topic")

    reader = Reader(pair.b.target, pair.tls)
    reading = threading.Thread(target=reader.run, daemon=True)
    reading.start()
    b = pair.b.process
    assert b is not None
    try:
        wait_until(lambda: reader.old > 0, timeout=30, what="the reader to see the old topic on b")
        delete_topic(pair.bootstrap, pair.topic)
        wait_until(lambda: reader.refused > 0, timeout=60, what="b to stop serving the deleted topic")
        b.signal(signal.SIGSTOP)  # until A serves the new topic: B's peer must be ready
        try:
            create_topic(pair.bootstrap, pair.topic, pair.partitions, config={"cleanup.policy": "compact"})
            pair.wait_a_serving()
            with pair.client(pair.a_target) as c:
                _write(c, {k: _new(k) for k in NEW_KEYS})
                wait_until(lambda: c.count() == len(NEW_KEYS), timeout=60, what="a to apply the new topic")
        finally:
            b.signal(signal.SIGCONT)
        pair.wait_b_serving()
        wait_until(lambda: reader.new > 0, timeout=60, what="the reader to see the new topic on b")
    finally:
        reader.stop.set()
        reading.join(timeout=30)

    assert reader.foreign == [], reader.foreign[:5]
    log = pair.b.log_text()
    restarted = log.find("restarting this replica process to rebuild it")
    assert restarted >= 0, b.log_tail(80)
    assert f"bootstrapped from a snapshot of peer {pair.a_target}" in log[restarted:], log[restarted:][-4000:]
    with pair.client(pair.b.target) as cb:
        got = {k: v.data for k, v in cb.multi_get(NEW_KEYS) if v is not None}
        assert got == {k: _new(k) for k in NEW_KEYS}
        assert cb.count() == len(NEW_KEYS)


def test_a_running_replica_that_must_rebuild_takes_its_peers_snapshot(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    bootstrap = kafka.bootstrap_servers
    a = start_replica(bootstrap, topic, "a")
    metrics = f"{LOOPBACK}:{free_port()}"  # with --workers: a multiprocess metrics directory, made anew
    b = start_replica(
        bootstrap,
        topic,
        "b",
        extra_args=("--bootstrap-peers", a.target, "--workers", "2", "--metrics-listen", metrics),
    )
    rebuild_b_while_running(
        Pair(
            bootstrap,
            topic,
            PARTITIONS,
            a.target,
            b,
            lambda target: Client(target, timeout=10.0),
            lambda: a.wait_serving(timeout=120),
            lambda: b.wait_serving(timeout=180),
        )
    )
    wait_until(
        lambda: 'kvs2_replica_phase{phase="Serving"} 1.0' in _scrape(metrics),
        timeout=30,
        what="b's metrics to say it serves after the restart",
    )
    assert a.stop() == 0
    assert b.stop() == 0
    assert _digest(b) == _digest(a)


def _scrape(listen: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=2) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""
