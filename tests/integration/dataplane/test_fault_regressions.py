"""Regressions of issue 8's fault-handling defects, against real Kafka and real `kvs2 serve` processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import grpc
import pytest
from kvs2._proto import kvs2_pb2 as pb
from kvs2._proto import kvs2_pb2_grpc as pb_grpc
from kvs2.client import Client

from tests.harness.common import wait_until
from tests.harness.kafka import KafkaBroker, create_topic
from tests.integration.dataplane.conftest import StartReplica


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def test_a_stopped_follower_cannot_stall_the_replica(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """Issue 8, defect 4: the leader fed followers with blocking writes under a lock, so one follower
    that stopped reading (SIGSTOP here; a busy one is the same) filled its pipe and stopped ingestion
    for the whole replica. The leader must keep ingesting, drop that follower, say so, and start
    another in its place."""
    a = start_replica(kafka.bootstrap_servers, topic, "a", extra_args=("--workers", "2"))
    b = start_replica(kafka.bootstrap_servers, topic, "b")
    assert a.process is not None
    (follower,) = _children(a.process.pid)
    os.kill(follower, signal.SIGSTOP)
    try:
        # Writes through b reach a's leader through Kafka; each batch it applies is news for the
        # follower, whose pipe fills after a few hundred of them.
        last = None
        with b.client() as c:
            for i in range(4000):
                last = c.set(f"k{i}".encode(), b"v")
                if i % 200 == 0 and "killed it" in a.log_text():
                    break
        wait_until(
            lambda: "killed it" in a.log_text(),
            timeout=90,
            what=f"replica a's leader to drop the stopped follower (log {a.log_path})",
        )
        assert last is not None
        assert a.process.alive(), a.log_text()[-3000:]
        assert f"worker process {follower}" in a.log_text()
        # The leader starts a replacement; then each new connection reaches the leader or it.
        wait_until(
            lambda: f"in place of {follower}" in a.log_text(), timeout=60, what="a replacement follower"
        )
        (replacement,) = _children(a.process.pid)
        assert replacement != follower
        # Leader, first follower, replacement: each says where it listens once it serves.
        wait_until(lambda: a.log_text().count("listening on") >= 3, timeout=60, what="the replacement")
        for i in range(20):
            with Client(a.target, timeout=30) as c:
                assert c.health() == "SERVING"
                assert c.get(b"k0", after=[last]) is not None  # the leader ingested everything b wrote
                assert c.set_if(f"lock{i}".encode(), b"a", 0)  # compare-and-set still gets its verdict
                assert not c.set_if(f"lock{i}".encode(), b"b", 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(follower, signal.SIGCONT)


def test_serve_refuses_kafka_settings_that_break_its_guarantees(start_replica: StartReplica) -> None:
    """Issue 8, defect 9: `KVS2_KAFKA_*` silently overrode acks, idempotence or the partitioner."""
    # librdkafka itself would accept this one and put keys where no other Kafka client looks for them.
    extra = ("--kafka-config", "partitioner=consistent_random")
    replica = start_replica("127.0.0.1:1", "t", "a", wait=False, extra_args=extra)
    assert replica.process is not None and replica.process.popen is not None
    assert replica.process.popen.wait(timeout=60) == 2
    assert "Kafka setting 'partitioner'" in replica.log_text()
    assert "cannot be changed" in replica.log_text()


def test_a_linearizable_read_kafka_does_not_answer_is_unavailable(
    private_kafka: KafkaBroker, topic_name: str, start_replica: StartReplica
) -> None:
    """Issue 8, defect 7: with the broker frozen (SIGSTOP: connections open, no answers), the end-offset
    look-up of a linearizable read never returns; the read used to end in DEADLINE_EXCEEDED ("the
    replica did not catch up") instead of the documented UNAVAILABLE ("Kafka unreachable").
    A raw stub: the client library would retry UNAVAILABLE."""
    create_topic(private_kafka.bootstrap_servers, topic_name, 2, config={"cleanup.policy": "compact"})
    replica = start_replica(private_kafka.bootstrap_servers, topic_name, "a")
    with replica.client() as c:
        assert c.get(b"k", after=[c.set(b"k", b"v")]) is not None
    broker = private_kafka._process  # the harness has no freeze yet (the nemesis adds one)
    assert broker is not None
    linearizable = pb.ReadOptions(consistency=pb.ReadOptions.LINEARIZABLE)
    broker.signal(signal.SIGSTOP)
    try:
        with grpc.insecure_channel(replica.target) as channel:
            stub = pb_grpc.Kvs2Stub(channel)
            assert stub.Get(pb.GetRequest(key=b"k"), timeout=10).data == b"v"  # eventual reads go on
            with pytest.raises(grpc.RpcError) as info:
                stub.Get(pb.GetRequest(key=b"k", read=linearizable), timeout=3)
    finally:
        broker.signal(signal.SIGCONT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    assert "end offset" in (info.value.details() or "")
