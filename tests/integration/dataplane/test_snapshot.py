"""Snapshot bootstrap on real Kafka: a new replica starts from a serving peer's snapshot, and falls back
to replaying the topic when no peer answers or the stream breaks off."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.harness.common import LOOPBACK, free_port, wait_until
from tests.harness.kafka import KafkaBroker, create_topic
from tests.harness.replica import ReplicaProcess
from tests.integration.dataplane.conftest import StartReplica

pytestmark = pytest.mark.integration

# Old segments are deleted as well as compacted: once they are gone, replay cannot rebuild the keys
# written before — only a snapshot of a replica that read them can.
VANISHING = {
    "cleanup.policy": "compact,delete",
    "retention.ms": "10000",
    "segment.ms": "100",
    "min.compaction.lag.ms": "0",
}


def _everything(replica: ReplicaProcess) -> dict[bytes, tuple[bytes | None, int]]:
    with replica.client() as c:
        return {item.key: (item.value, item.revision) for item in c.scan()}


def _start_offset(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "snapshot-test"})
    try:
        low, _high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return int(low)
    finally:
        consumer.close()


def test_new_replica_starts_from_a_peers_snapshot_that_replay_could_not_produce(
    kafka: KafkaBroker, topic_name: str, start_replica: StartReplica
) -> None:
    bootstrap = kafka.bootstrap_servers
    create_topic(bootstrap, topic_name, 1, config=VANISHING)
    a = start_replica(bootstrap, topic_name, "a")
    with a.client() as c:
        for i in range(50):
            c.set(f"old-{i}".encode(), b"x" * 100)
        wait_until(lambda: c.count(prefix=b"old-") == 50, timeout=30, what="a to apply the old keys")
        first_new = 50

        def old_records_deleted() -> bool:
            nonlocal first_new
            c.set(f"new-{first_new}".encode(), b"y")  # rolls the segment; retention deletes old ones
            first_new += 1
            return _start_offset(bootstrap, topic_name) > 50

        wait_until(old_records_deleted, timeout=120, interval=1.0, what="retention to delete the old records")
        last = c.set(b"last", b"z")
        wait_until(lambda: c.get(b"last") is not None, timeout=30, what="a to apply the last write")

    b = start_replica(bootstrap, topic_name, "b", extra_args=("--bootstrap-peers", a.target))
    with b.client() as cb:
        wait_until(lambda: cb.get(b"last") is not None, timeout=30, what="b to catch up")
        value = cb.get(b"last")
        assert value is not None and value.revision == last.offset + 1
    assert _everything(b) == _everything(a)
    assert len([k for k in _everything(b) if k.startswith(b"old-")]) == 50  # only the snapshot had them
    assert "bootstrapped from a snapshot of peer" in b.log_text()


class _CuttingProxy:
    """A TCP proxy to a peer that breaks every connection off after `limit` bytes from the peer."""

    def __init__(self, upstream: tuple[str, int], limit: int) -> None:
        self.upstream = upstream
        self.limit = limit
        self.port = free_port()
        self._listener = socket.create_server((LOOPBACK, self.port))
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.limit), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(16384):
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stopped = True
        self._listener.close()


@pytest.fixture
def cutting_proxy() -> Iterator[list[_CuttingProxy]]:
    proxies: list[_CuttingProxy] = []
    yield proxies
    for proxy in proxies:
        proxy.close()


def test_broken_stream_and_absent_peer_fall_back_to_replay(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica, cutting_proxy: list[_CuttingProxy]
) -> None:
    bootstrap = kafka.bootstrap_servers
    a = start_replica(bootstrap, topic, "a")
    with a.client() as c:
        for i in range(300):
            c.set(f"k-{i}".encode(), bytes([i % 251]) * 1000)
        wait_until(lambda: c.count() == 300, timeout=30, what="a to apply the writes")
    proxy = _CuttingProxy((LOOPBACK, a.port), limit=100_000)  # the snapshot is larger than this
    cutting_proxy.append(proxy)
    absent = f"{LOOPBACK}:{free_port()}"
    b = start_replica(
        bootstrap, topic, "b", extra_args=("--bootstrap-peers", f"{absent},{LOOPBACK}:{proxy.port}")
    )
    assert _everything(b) == _everything(a)
    log = b.log_text()
    assert "bootstrapped from a snapshot" not in log
    assert "falling back to replaying" in log
