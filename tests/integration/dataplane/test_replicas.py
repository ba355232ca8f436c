"""The data plane against a real Kafka broker, with replicas as real processes."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Producer
from kvs2.client import Client
from kvs2.storage import Replica

from tests.harness.common import wait_until
from tests.harness.kafka import KafkaBroker, create_topic, delete_topic
from tests.integration.dataplane.conftest import PARTITIONS, StartReplica
from tests.protogen import generate

ROOT = Path(__file__).resolve().parents[3]


def test_set_on_one_replica_is_visible_on_another(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    b = start_replica(kafka.bootstrap_servers, topic, "b")
    with a.client() as ca, b.client() as cb:
        written = ca.set(b"greeting", b"hello")
        assert 0 <= written.partition < PARTITIONS
        wait_until(lambda: cb.get(b"greeting") is not None, timeout=15, what="replica b to apply the write")
        value = cb.get(b"greeting")
        assert value is not None
        assert value.data == b"hello"
        assert value.revision == written.offset + 1


def test_multiget_order_duplicates_not_found_delete_and_empty_value(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    with a.client() as c:
        c.set(b"k1", b"v1")
        c.set(b"k2", b"")
        last = c.set(b"k3", b"v3")
        wait_until(lambda: c.get(b"k3") is not None, timeout=15, what="writes to apply")
        wait_until(lambda: c.get(b"k1") is not None and c.get(b"k2") is not None, timeout=15, what="apply")
        parts = c.multi_get([b"k3", b"missing", b"k1", b"k3", b"k2"])
        assert [(k, None if v is None else v.data) for k, v in parts] == [
            (b"k3", b"v3"),
            (b"missing", None),
            (b"k1", b"v1"),
            (b"k3", b"v3"),
            (b"k2", b""),
        ]
        assert parts[0][1] is not None
        assert parts[0][1].revision == last.offset + 1
        c.delete(b"k1")
        wait_until(lambda: c.get(b"k1") is None, timeout=15, what="the delete to apply")
        empty = c.get(b"k2")
        assert empty is not None
        assert empty.data == b""  # an empty value is a value, not a delete


def _produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes | None]]) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
        }
    )
    for i, (key, value) in enumerate(items):
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


def _end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from kvs2.kafka_io import Admin

    return Admin({"bootstrap.servers": bootstrap}).end_offsets(topic, partitions)


def test_kill_9_during_ingest_then_restart_is_exact(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica, tmp_path: Path
) -> None:
    rng = random.Random(7)
    model: dict[bytes, bytes] = {}
    items: list[tuple[bytes, bytes | None]] = []
    for i in range(100_000):
        key = f"key-{rng.randrange(20_000):05d}".encode()
        if rng.random() < 0.1:
            items.append((key, None))
            model.pop(key, None)
        else:
            value = f"v{i}".encode()
            items.append((key, value))
            model[key] = value
    _produce(kafka.bootstrap_servers, topic, items)
    ends = _end_offsets(kafka.bootstrap_servers, topic, PARTITIONS)
    assert sum(ends.values()) == 100_000

    replica = start_replica(kafka.bootstrap_servers, topic, "a", wait=False)
    data_file = replica.data_dir / "data.mdb"
    wait_until(
        lambda: data_file.exists() and data_file.stat().st_size > 256 * 1024,
        timeout=60,
        interval=0.01,
        what="ingest to start",
    )
    replica.kill()
    interrupted = Replica(replica.data_dir)
    stored_at_kill = interrupted.next_offsets()
    interrupted.close()
    assert sum(stored_at_kill.values()) < 100_000, "the kill came after ingest finished; use more records"

    replica.start()
    replica.wait_serving(timeout=120)
    assert replica.stop() == 0

    after = Replica(replica.data_dir)
    try:
        assert after.next_offsets() == ends
        assert {k: e.value for k, e in after.items()} == model
    finally:
        after.close()


def _write_and_see(client: Client, key: bytes, value: bytes) -> None:
    client.set(key, value)
    wait_until(lambda: client.get(key) is not None, timeout=15, what=f"{key!r} to be applied")


def _recreate(bootstrap: str, topic: str) -> None:
    """Delete the topic and create it again under the same name (a new topic id)."""
    delete_topic(bootstrap, topic)
    create_topic(bootstrap, topic, PARTITIONS, config={"cleanup.policy": "compact"})


def test_recreated_topic_makes_the_replica_rebuild(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    replica = start_replica(kafka.bootstrap_servers, topic, "a")
    with replica.client() as c:
        _write_and_see(c, b"old", b"1")
    assert replica.stop() == 0

    _recreate(kafka.bootstrap_servers, topic)
    _produce(kafka.bootstrap_servers, topic, [(b"new", b"2")])

    replica.start()
    replica.wait_serving()
    with replica.client() as c:
        assert c.get(b"old") is None
        new = c.get(b"new")
        assert new is not None
        assert new.data == b"2"
    assert "rebuild" in replica.log_text() or "from the beginning" in replica.log_text()


def test_recreated_topic_is_noticed_while_running(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    replica = start_replica(kafka.bootstrap_servers, topic, "a")
    with replica.client() as c:
        _write_and_see(c, b"old", b"1")
        _recreate(kafka.bootstrap_servers, topic)
        c.set(b"new", b"2")

        def rebuilt() -> bool:
            try:
                return c.get(b"new") is not None
            except grpc.RpcError:
                return False  # NOT_SERVING while rebuilding

        wait_until(rebuilt, timeout=60, what="the replica to rebuild from the new topic")
        assert c.get(b"old") is None


def test_client_generated_from_the_seed_proto_alone_works(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica, tmp_path: Path
) -> None:
    replica = start_replica(kafka.bootstrap_servers, topic, "a")
    gen = tmp_path / "seedgen"
    generate(ROOT / "tests" / "fixtures" / "seed" / "kvs2.proto", gen)
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(gen)!r})
        import grpc, kvs2_pb2 as pb, kvs2_pb2_grpc as rpc
        stub = rpc.Kvs2Stub(grpc.insecure_channel({replica.target!r}))
        assert stub.Set(pb.SetRequest(key=b"seed", value=b"compatible"), timeout=10).status == pb.PUBLISHED
        for _ in range(100):
            r = stub.Get(pb.GetRequest(key=b"seed"), timeout=10)
            if r.status == pb.OK:
                break
            time.sleep(0.1)
        assert (r.status, r.data) == (pb.OK, b"compatible"), r
        m = stub.MultiGet(pb.MultiGetRequest(keys=[b"seed", b"nope"]), timeout=10)
        assert [(p.key, p.status, p.data) for p in m.parts] == [
            (b"seed", pb.OK, b"compatible"), (b"nope", pb.NOT_FOUND, b"")], m
        print("seed client ok")
        """
    )
    # -I: isolated mode, so the seed client cannot import the kvs2 package or its generated code.
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "seed client ok" in result.stdout


def test_value_over_the_topic_limit_is_invalid_argument(
    kafka: KafkaBroker, topic_name: str, start_replica: StartReplica
) -> None:
    create_topic(
        kafka.bootstrap_servers,
        topic_name,
        1,
        config={"cleanup.policy": "compact", "max.message.bytes": "20000"},
    )
    replica = start_replica(kafka.bootstrap_servers, topic_name, "a")
    with replica.client() as c:
        with pytest.raises(grpc.RpcError) as info:
            c.set(b"big", b"x" * 30_000)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max.message.bytes" in (info.value.details() or "")
        c.set(b"small", b"x" * 10_000)  # under the limit: accepted


def test_sigterm_stops_cleanly(kafka: KafkaBroker, topic: str, start_replica: StartReplica) -> None:
    replica = start_replica(kafka.bootstrap_servers, topic, "a")
    with replica.client() as c:
        c.set(b"k", b"v")
    assert replica.stop() == 0
    assert "stopped" in replica.log_text()


def test_kafka_down_at_start_then_back(
    private_kafka: KafkaBroker, topic_name: str, start_replica: StartReplica
) -> None:
    create_topic(private_kafka.bootstrap_servers, topic_name, 2, config={"cleanup.policy": "compact"})
    private_kafka.stop()
    replica = start_replica(private_kafka.bootstrap_servers, topic_name, "a", wait=False)
    wait_until(
        lambda: replica.health() == "NOT_SERVING", timeout=30, what="the replica to answer NOT_SERVING"
    )
    wait_until(lambda: "cannot follow topic" in replica.log_text(), timeout=30, what="a clear log line")
    time.sleep(1)
    assert replica.health() == "NOT_SERVING"
    private_kafka.start()
    replica.wait_serving(timeout=90)


def test_kafka_down_during_set_is_unavailable_within_the_deadline(
    private_kafka: KafkaBroker, topic_name: str, start_replica: StartReplica
) -> None:
    create_topic(private_kafka.bootstrap_servers, topic_name, 2, config={"cleanup.policy": "compact"})
    replica = start_replica(private_kafka.bootstrap_servers, topic_name, "a")
    with replica.client(timeout=3.0) as c:
        c.set(b"before", b"1")
        private_kafka.kill()
        with pytest.raises(grpc.RpcError) as info:
            c.set(b"during", b"2")
    # The replica's own answer within the call's deadline: had it let the deadline pass, the client
    # would have ended the call itself with DEADLINE_EXCEEDED.
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reflection_and_health_work_with_standard_tools(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """grpcurl discovers the API by reflection alone; grpc-health-probe (what Kubernetes-style probes
    use) sees SERVING for both "" and kvs2.Kvs2."""
    from tests.harness.gobuild import ensure_tool

    replica = start_replica(kafka.bootstrap_servers, topic, "a")
    grpcurl = str(ensure_tool("grpcurl"))
    listed = subprocess.run(
        [grpcurl, "-plaintext", replica.target, "list"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    assert {"kvs2.Kvs2", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    put = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            "-d",
            '{"key": "cmVmbA==", "value": "b2s="}',
            replica.target,
            "kvs2.Kvs2/Set",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert put.returncode == 0, put.stderr
    probe = str(ensure_tool("grpc-health-probe"))
    for service in ("", "kvs2.Kvs2"):
        checked = subprocess.run(
            [probe, f"-addr={replica.target}", f"-service={service}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SERVING" in checked.stdout + checked.stderr
