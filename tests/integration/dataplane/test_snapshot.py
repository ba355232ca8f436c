"""Snapshot bootstrap on real Kafka: a new replica starts from a serving peer's snapshot, and falls back
to replaying the topic when no peer answers or the stream breaks off."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from confluent_kafka import Consumer, TopicPartition
from kvs2._proto import kvs2_pb2 as pb
from kvs2.client import Client

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
    log = b.log_text()
    assert "bootstrapped from a snapshot of peer" in log
    assert "snapshot bytes over the data channel" in log  # not as gRPC chunks (kvs2.datachannel)


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
    # The data as gRPC chunks, so that the proxy on the gRPC port breaks the data off (a broken data
    # channel: tests/unit/test_datachannel.py).
    a = start_replica(bootstrap, topic, "a", extra_args=("--snapshot-data-listen", "off"))
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


def _phase(target: str) -> int | None:
    try:
        with Client(target, timeout=2.0) as c:
            return int(c.replica_status().phase)
    except grpc.RpcError:  # not listening (between the bootstrap child and the replica), or starting
        return None


def _metrics(listen: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=2) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def test_a_bootstrapping_replica_says_so_then_serves(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """Status and metrics while the snapshot streams (throttled so that it takes a while): phase
    BOOTSTRAPPING, health NOT_SERVING, reads UNAVAILABLE; then SERVING with the peer's data."""
    bootstrap = kafka.bootstrap_servers
    a = start_replica(bootstrap, topic, "a", extra_args=("--snapshot-max-bytes-per-second", "50000"))
    with a.client() as c:
        for i in range(300):
            c.set(f"k-{i}".encode(), bytes([i % 251]) * 1000)
        wait_until(lambda: c.count() == 300, timeout=30, what="a to apply the writes")
    metrics_listen = f"{LOOPBACK}:{free_port()}"
    port = free_port()
    target = f"{LOOPBACK}:{port}"
    started: list[ReplicaProcess] = []
    # start_replica returns once the replica itself listens: after the bootstrap. Watch it meanwhile.
    starting = threading.Thread(
        target=lambda: started.append(
            start_replica(
                bootstrap,
                topic,
                "b",
                wait=False,
                port=port,
                extra_args=("--bootstrap-peers", a.target, "--metrics-listen", metrics_listen),
            )
        )
    )
    starting.start()
    try:
        wait_until(
            lambda: _phase(target) == pb.PHASE_BOOTSTRAPPING, timeout=60, what="b to say it bootstraps"
        )
        assert 'kvs2_replica_phase{phase="Bootstrapping"} 1.0' in _metrics(metrics_listen)
        with Client(target, timeout=2.0) as cb:
            assert cb.health() == "NOT_SERVING"
            with pytest.raises(grpc.RpcError, match="bootstrapping") as refused:
                cb.get(b"k-1")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        starting.join()
    (b,) = started
    b.wait_serving(timeout=120)
    assert _phase(target) == pb.PHASE_SERVING
    wait_until(
        lambda: 'kvs2_replica_phase{phase="Serving"} 1.0' in _metrics(metrics_listen),
        timeout=30,
        what="b's metrics to say it serves",
    )
    assert _everything(b) == _everything(a)
    assert "bootstrapped from a snapshot of peer" in b.log_text()
