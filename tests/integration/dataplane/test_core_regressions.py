"""Regressions of issue 8's core defects, against real Kafka with replicas as real processes."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import lmdb
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kvs2.client import Client
from kvs2.kafka_io import Admin
from kvs2.storage import SIDE_MARKER, Replica

from tests.harness.common import wait_until
from tests.harness.kafka import KafkaBroker, create_topic, delete_topic
from tests.integration.dataplane.conftest import PARTITIONS, StartReplica

AGGRESSIVE_COMPACTION = {
    "cleanup.policy": "compact",
    "segment.ms": "200",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "100",
}


def _records(bootstrap: str, topic: str) -> list[tuple[bytes, bytes | None]]:
    """(Kafka key, value) of every record the topic holds now, all partitions."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "scan", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: list[tuple[bytes, bytes | None]] = []
    idle = 0
    while idle < 5:
        msgs = consumer.consume(1000, timeout=0.3)
        idle = 0 if msgs else idle + 1
        out += [(m.key() or b"", m.value()) for m in msgs if m.error() is None]
    consumer.close()
    return out


def _items(replica: Replica) -> dict[bytes, tuple[bytes, int]]:
    try:
        return {k: (e.value, e.revision) for k, e in replica.items()}
    finally:
        replica.close()


def test_a_rebuilt_replica_keeps_a_create_after_a_delete_whose_tombstone_expired(
    kafka: KafkaBroker, topic_name: str, start_replica: StartReplica
) -> None:
    """set_if(K, a, 0) → delete(K) → set_if(K, b, 0): once compaction drops the delete's tombstone
    (delete.retention.ms far shorter than the clean-up grace), a replica rebuilt from the log must still
    hold b. Before the fix it replayed the first conditional record and failed the second."""
    create_topic(kafka.bootstrap_servers, topic_name, PARTITIONS, config=AGGRESSIVE_COMPACTION)
    a = start_replica(kafka.bootstrap_servers, topic_name, "a", extra_args=("--cas-cleanup-grace", "600"))
    keys = [f"recreated-{i}".encode() for i in range(20)]
    with a.client() as c:
        for key in keys:
            assert c.set_if(key, b"first", 0)
            c.delete(key)
            assert c.set_if(key, b"second", 0)
    roller = Producer({"bootstrap.servers": kafka.bootstrap_servers})

    def plain_tombstones_gone() -> bool:
        # Rolling a segment in every partition lets the cleaner make another pass.
        for p in range(PARTITIONS):
            roller.produce(topic_name, key=f"roll-{p}".encode(), value=b"x", partition=p)
        assert roller.flush(30) == 0
        return not any(k in keys and v is None for k, v in _records(kafka.bootstrap_servers, topic_name))

    time.sleep(0.5)
    wait_until(plain_tombstones_gone, timeout=240, interval=2.0, what="compaction to drop the deletes")
    b = start_replica(kafka.bootstrap_servers, topic_name, "b")
    for replica in (a, b):
        with replica.client() as c:
            c.get(b"roll-0", consistency="linearizable")  # everything in the topic is applied
    assert a.stop() == 0
    assert b.stop() == 0
    live, rebuilt = _items(Replica(a.data_dir)), _items(Replica(b.data_dir))
    assert all(live[k][0] == b"second" for k in keys)
    differing = sorted(k for k in keys if rebuilt.get(k) != live[k])
    assert not differing, f"the rebuilt replica disagrees on {len(differing)} of {len(keys)} keys"
    assert rebuilt == live
    assert any(k.startswith(SIDE_MARKER) for k, _ in _records(kafka.bootstrap_servers, topic_name))


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    return Admin({"bootstrap.servers": bootstrap}).end_offsets(topic, PARTITIONS)


def _watch_until(client: Client, from_: dict[int, int], ends: dict[int, int]) -> list[bytes]:
    """Keys of the PUT events a Watch from `from_` delivers until it has covered `ends`."""
    seen: list[bytes] = []
    for event in client.watch(from_=from_, progress_interval_ms=100, reconnect=False):
        if event.kind == "put":
            seen.append(event.key)
        elif event.kind == "progress" and all(event.applied.get(p, 0) >= o for p, o in ends.items()):
            return seen
    raise AssertionError("the watch ended")


def test_watch_from_a_range_applied_misses_no_later_write(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """Range's `applied` must name every partition (an empty one at offset 0): a Watch from it then
    delivers every later write. Before the fix, partitions never written were left out and the Watch
    started them at its own current position, after the writes."""
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    with a.client() as c:
        c.set(b"early", b"x")
        c.get(b"early", consistency="linearizable")
        page = c.range()
        keys = [f"later-{i}".encode() for i in range(40)]
        for key in keys:
            c.set(key, b"v")
        c.get(keys[-1], consistency="linearizable")
        ends = _end_offsets(kafka.bootstrap_servers, topic)
        c.range(consistency="linearizable")  # the replica has applied everything up to `ends`
        seen = _watch_until(c, page.applied, ends)
    assert len(set(seen)) == len(keys), f"the watch delivered {len(set(seen))} of {len(keys)} later writes"
    assert sorted(seen) == sorted(keys)
    assert sorted(page.applied) == list(range(PARTITIONS))


def _stored_keys(data_dir: Path) -> int:
    """How many keys the replica's LMDB holds, read beside the running replica (LMDB allows it)."""
    env = lmdb.open(str(data_dir), readonly=True, max_dbs=16, subdir=True)
    try:
        db = env.open_db(b"data", create=False)
        with env.begin(db=db) as txn:
            return int(txn.stat(db)["entries"])
    finally:
        env.close()


def test_a_deleted_topic_stops_serving_but_keeps_the_data_until_a_new_topic_exists(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """A topic that vanishes (deleted by accident, or a metadata glitch) must not wipe the replica: it
    stops serving and keeps its data; only a topic with a different id makes it rebuild. Before the fix
    the replica discarded everything as soon as the topic was not found."""
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    with a.client() as c:
        for i in range(200):
            c.set(f"kept-{i}".encode(), b"v")
        c.get(b"kept-199", consistency="linearizable")
    delete_topic(kafka.bootstrap_servers, topic)
    wait_until(lambda: a.health() == "NOT_SERVING", timeout=60, what="the replica to stop serving")
    wait_until(lambda: "was deleted" in a.log_text(), timeout=60, what="the replica to notice the deletion")
    assert _stored_keys(a.data_dir) == 200
    with a.client() as c, pytest.raises(grpc.RpcError) as refused:
        c.get(b"kept-0")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    create_topic(kafka.bootstrap_servers, topic, PARTITIONS, config={"cleanup.policy": "compact"})
    a.wait_serving()
    with a.client() as c:
        assert c.count() == 0  # the new topic is empty: the old data is gone now, and only now
        c.set(b"new", b"n")
        value = c.get(b"new", consistency="linearizable")
        assert value is not None
        assert value.data == b"n"


def test_transaction_markers_of_another_producer_are_not_compaction_gaps(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """A transactional producer's commit markers take offsets that no consumer ever sees. On a topic whose
    min.compaction.lag.ms says recent records are never compacted, they must not read as compaction gaps:
    a Watch across them must deliver every write, not OUT_OF_RANGE."""
    topic = f"{topic}-lagged"
    create_topic(
        kafka.bootstrap_servers,
        topic,
        PARTITIONS,
        config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
    )
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    transactional = Producer(
        {"bootstrap.servers": kafka.bootstrap_servers, "transactional.id": f"{topic}-foreign"}
    )
    transactional.init_transactions(60)
    plain = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 0})
    with a.client() as c:
        page = c.range()
        written: list[bytes] = []
        for i in range(30):
            transactional.begin_transaction()
            transactional.produce(topic, key=f"txn-{i}".encode(), value=b"t", partition=0)
            transactional.commit_transaction(30)
            plain.produce(topic, key=f"plain-{i}".encode(), value=b"p", partition=0)
            assert plain.flush(30) == 0
            written += [f"txn-{i}".encode(), f"plain-{i}".encode()]
        ends = _end_offsets(kafka.bootstrap_servers, topic)
        c.range(consistency="linearizable")
        seen = _watch_until(c, page.applied, ends)
    assert sorted(seen) == sorted(written)


def test_a_token_from_before_the_topic_was_recreated_is_never_satisfied_by_the_new_topic(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """Offsets start again in a recreated topic: a read-your-writes token of the old topic must not be
    counted as applied by a replica of the new one, however far the new topic's offsets go."""
    a = start_replica(kafka.bootstrap_servers, topic, "a")
    with a.client() as c:
        old = c.set(b"k", b"old-topic")
        assert old.topic_id
        assert c.get(b"k", after=[old]) is not None  # applied here before the topic goes
    delete_topic(kafka.bootstrap_servers, topic)
    create_topic(kafka.bootstrap_servers, topic, PARTITIONS, config={"cleanup.policy": "compact"})

    def rebuilt() -> bool:
        """Serving the new topic: its id in a Range reply, and nothing of the old topic left."""
        if a.health() != "SERVING":
            return False
        with a.client() as c:
            page = c.range()
            return bool(page.topic_id) and page.topic_id != old.topic_id and not page.items

    wait_until(rebuilt, timeout=60, what="the replica to rebuild from the new topic")
    with a.client(timeout=2.0) as c:
        for i in range(50):
            c.set(f"n{i}".encode(), b"new")  # the new topic passes the old token's offset
        new = c.set(b"k", b"new-topic")
        assert new.topic_id != old.topic_id
        assert new.offset > old.offset
        value = c.get(b"k", after=[new])
        assert value is not None
        assert value.data == b"new-topic"
        with pytest.raises(grpc.RpcError) as stale:
            c.get(b"k", after=[old])
    assert stale.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert old.topic_id in (stale.value.details() or "")
