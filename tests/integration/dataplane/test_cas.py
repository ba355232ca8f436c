"""Compare-and-set without a leader, against real Kafka with replicas as real processes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import Consumer, Producer, TopicPartition
from kvs2.client import CasResult, Client
from kvs2.kafka_io import Admin
from kvs2.storage import SIDE_MARKER, Replica

from tests.harness.common import wait_until
from tests.harness.kafka import KafkaBroker, create_topic
from tests.integration.dataplane.conftest import PARTITIONS, StartReplica


def test_concurrent_create_if_absent_through_different_replicas_has_one_winner(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    replicas = [start_replica(kafka.bootstrap_servers, topic, name) for name in ("a", "b")]

    def attempt(i: int) -> tuple[int, CasResult]:
        with Client(replicas[i % 2].target) as c:
            return i, c.set_if(b"leader", f"candidate-{i}".encode(), 0)

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(attempt, range(12)))
    winners = [(i, r) for i, r in results if r.applied]
    assert len(winners) == 1, f"{len(winners)} writers won the create-if-absent"
    ((winner, won),) = winners
    for _, lost in results:
        if not lost.applied:
            assert lost.revision == won.revision  # every loser saw the winner's revision
    for replica in replicas:
        with replica.client() as c:
            value = c.get(b"leader", after=[won.written])
            assert value is not None
            assert (value.data, value.revision) == (f"candidate-{winner}".encode(), won.revision)


def test_cas_increments_from_both_replicas_lose_nothing(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    replicas = [start_replica(kafka.bootstrap_servers, topic, name) for name in ("a", "b")]
    per_worker, workers = 15, 4
    conflicts = 0
    lock = threading.Lock()

    def increment(worker: int) -> None:
        nonlocal conflicts
        with Client(replicas[worker % 2].target) as c:
            done = 0
            while done < per_worker:
                current = c.get(b"counter", consistency="linearizable")
                n = 0 if current is None else int(current.data)
                if c.set_if(b"counter", str(n + 1).encode(), 0 if current is None else current.revision):
                    done += 1
                else:
                    with lock:
                        conflicts += 1

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(increment, range(workers)))
    with replicas[1].client() as c:
        final = c.get(b"counter", consistency="linearizable")
    assert final is not None
    assert int(final.data) == per_worker * workers
    assert conflicts > 0, "the workers never raced; the test proved nothing about conflicts"


def _record_count(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "count", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    n, idle = 0, 0
    while idle < 5:
        msgs = consumer.consume(1000, timeout=0.3)
        idle = 0 if msgs else idle + 1
        n += sum(1 for m in msgs if m.error() is None)
    consumer.close()
    return n


def test_a_replica_rebuilt_from_the_compacted_log_equals_the_live_ones(
    kafka: KafkaBroker, topic_name: str, start_replica: StartReplica
) -> None:
    """Failed conditional writes, CAS-only chains, conditional deletes and plain writes, then Kafka's
    cleaner compacts the topic (tombstones expire too): a replica built from scratch must hold exactly
    what the live replicas hold. With conditional records under the user's key this fails: a failed
    record would shadow the key's real value."""
    config = {
        "cleanup.policy": "compact",
        "segment.ms": "200",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": "100",
    }
    create_topic(kafka.bootstrap_servers, topic_name, PARTITIONS, config=config)
    a = start_replica(kafka.bootstrap_servers, topic_name, "a")
    expected: dict[bytes, tuple[bytes, int]] = {}  # what the replicas must hold: value and revision
    deleted: list[bytes] = []
    with a.client() as c:
        for i in range(40):
            k = f"plain-then-failed-{i}".encode()
            kept = c.set(k, b"kept")
            failed = c.set_if(k, b"lost", 12345)  # fails: must never hide b"kept" nor move its revision
            assert not failed
            assert failed.revision == kept.offset + 1, "a failed CAS must report the key's revision"
            expected[k] = (b"kept", kept.offset + 1)
            chain = f"cas-chain-{i}".encode()
            r = c.set_if(chain, b"1", 0)
            r = c.set_if(chain, b"2", r.revision)
            assert not c.set_if(chain, b"x", 1)
            r = c.set_if(chain, b"3", r.revision)
            assert r.applied
            expected[chain] = (b"3", r.revision)
            gone = f"cas-deleted-{i}".encode()
            r = c.set_if(gone, b"1", 0)
            assert c.delete_if(gone, r.revision)
            deleted.append(gone)
            mixed = f"mixed-{i}".encode()
            r = c.set_if(mixed, b"cas", 0)
            c.set(mixed, b"plain")
            r2 = c.get(mixed, consistency="linearizable")
            assert r2 is not None
            r = c.set_if(mixed, b"cas-again", r2.revision)
            assert r.applied
            expected[mixed] = (b"cas-again", r.revision)
    produced = sum(
        Admin({"bootstrap.servers": kafka.bootstrap_servers}).end_offsets(topic_name, PARTITIONS).values()
    )
    time.sleep(0.5)
    roller = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for p in range(PARTITIONS):  # a record in every partition closes its segment, so the cleaner can work
        roller.produce(topic_name, key=f"roll-{p}".encode(), value=b"x", partition=p)
    assert roller.flush(30) == 0
    # At least the 80 failed conditional records are superseded by their clean-up tombstones; the
    # tombstones themselves go in a later cleaning pass (delete.retention.ms=100).
    wait_until(
        lambda: _record_count(kafka.bootstrap_servers, topic_name) <= produced - 80,
        timeout=180,
        interval=2.0,
        what="Kafka's cleaner to compact the topic",
    )
    b = start_replica(kafka.bootstrap_servers, topic_name, "b")
    b.wait_serving()
    with a.client() as ca:
        ca.get(b"roll-0", consistency="linearizable")  # a has applied everything
    with b.client() as cb:
        cb.get(b"roll-0", consistency="linearizable")
    assert a.stop() == 0
    assert b.stop() == 0
    live, rebuilt = Replica(a.data_dir), Replica(b.data_dir)
    try:
        live_items = {k: (e.value, e.revision) for k, e in live.items()}
        rebuilt_items = {k: (e.value, e.revision) for k, e in rebuilt.items()}
        gaps = rebuilt.history_start()
    finally:
        live.close()
        rebuilt.close()
    # Every key holds the value and revision its last applied write reported; deleted keys are gone.
    assert {k: live_items.get(k) for k in expected} == expected
    assert not set(deleted) & set(live_items)
    assert any(start > 0 for start in gaps.values()), "the rebuilt replica never met a compacted gap"
    assert rebuilt_items == live_items


def _tombstones(bootstrap: str, topic: str) -> list[bytes]:
    """Kafka keys of every null-value record of the conditional (side-key) kind in the topic."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "scan", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    found, idle = [], 0
    while idle < 5:
        msgs = consumer.consume(1000, timeout=0.3)
        idle = 0 if msgs else idle + 1
        for m in msgs:
            key = m.key()
            if m.error() is None and m.value() is None and key is not None and key.startswith(SIDE_MARKER):
                found.append(key)
    consumer.close()
    return found


def test_conditional_records_replay_no_longer_needs_are_tombstoned(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    """A failed CAS is tombstoned by the replica that accepted it; an applied CAS followed by a plain
    write is tombstoned by one of the replicas after the grace delay — then no replica lists it.

    Exactly once each: b's grace is long, so only a's janitor acts, and b must learn from a's
    tombstones instead of writing its own. (With equal graces two janitors may both tombstone a record
    — a random delay makes it rare, not impossible — so equal graces cannot pin an exact count.)"""
    a = start_replica(kafka.bootstrap_servers, topic, "a", extra_args=("--cas-cleanup-grace", "1"))
    b = start_replica(kafka.bootstrap_servers, topic, "b", extra_args=("--cas-cleanup-grace", "600"))
    with a.client() as c:
        created = c.set_if(b"k", b"1", 0)
        assert created
        assert not c.set_if(b"k", b"2", 0)  # fails: tombstoned at once by a
        c.set(b"k", b"plain")  # the applied CAS record is no longer needed for replay
    wait_until(
        lambda: len(set(_tombstones(kafka.bootstrap_servers, topic))) == 2, timeout=30, what="2 tombstones"
    )
    time.sleep(3)  # past a's grace again: a janitor that did not forget its garbage would repeat itself
    tombstones = _tombstones(kafka.bootstrap_servers, topic)
    assert sorted(tombstones) == sorted(set(tombstones)), f"a record was tombstoned twice: {tombstones}"
    assert len(tombstones) == 2
    for replica in (a, b):
        assert replica.stop() == 0
        stored = Replica(replica.data_dir)
        try:
            assert stored.garbage() == []
            entry = stored.get(b"k")
            assert entry is not None
            assert entry.value == b"plain"
        finally:
            stored.close()
