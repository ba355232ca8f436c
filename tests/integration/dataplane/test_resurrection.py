"""The resurrection guard on real Kafka: a replica that was down longer than the topic's
`delete.retention.ms` must not resume from its stored offsets, because compaction may have dropped
tombstones it never read — the keys they deleted would come back to life on that replica."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from kvs2.client import Client, Value
from kvs2.errors import Kvs2Error

from tests.harness.common import wait_until
from tests.harness.kafka import KafkaBroker, create_topic
from tests.integration.dataplane.conftest import StartReplica

pytestmark = pytest.mark.integration

# Compaction as eager as the broker allows: segments that roll at the next append after 100 ms, any
# dirt cleanable, and tombstones dropped 100 ms after the cleaner first passes over them.
EAGER_COMPACTION = {
    "cleanup.policy": "compact",
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "100",
}
DOOMED = [f"doomed-{i}".encode() for i in range(10)]
KEPT = [f"kept-{i}".encode() for i in range(10)]


def _producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})


def _produce(producer: Producer, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err.str())

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert not failures, failures


def _keys_in_topic(bootstrap: str, topic: str) -> set[bytes]:
    """Every key with any record (value or tombstone) still in the one-partition topic."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "resurrection-test",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    keys: set[bytes] = set()
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        while True:
            msg = consumer.poll(10)
            assert msg is not None, "no end-of-partition from the broker"
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return keys
                raise AssertionError(err.str())
            keys.add(msg.key() or b"")
    finally:
        consumer.close()


def test_replica_down_past_delete_retention_does_not_resurrect_deleted_keys(
    kafka: KafkaBroker, topic_name: str, start_replica: StartReplica
) -> None:
    bootstrap = kafka.bootstrap_servers
    create_topic(bootstrap, topic_name, 1, config=EAGER_COMPACTION)
    a = start_replica(bootstrap, topic_name, "a")
    with a.client() as c:
        for key in DOOMED + KEPT:
            c.set(key, b"v-" + key)
        wait_until(
            lambda: all(c.get(k) is not None for k in DOOMED + KEPT), timeout=30, what="a to apply the writes"
        )
    a.stop()

    # While a is down: delete the doomed keys, then keep writing so segments roll and the cleaner
    # passes again and again, until neither the values nor the tombstones are left in the topic.
    _delete_and_compact_away(bootstrap, topic_name)

    a = start_replica(bootstrap, topic_name, "a")  # the same data directory
    with a.client() as c:
        wait_until(lambda: c.get(b"roll") is not None, timeout=30, what="a to catch up")
        resurrected = [k for k in DOOMED if c.get(k) is not None]
        assert resurrected == [], f"deleted keys came back to life on the restarted replica: {resurrected}"
        for key in KEPT:
            value = c.get(key)
            assert value is not None and value.data == b"v-" + key
    assert "delete.retention.ms" in a.log_text()  # it says why it rebuilt


def _delete_and_compact_away(bootstrap: str, topic: str) -> None:
    """Delete the doomed keys, then keep writing until compaction dropped their values and tombstones."""
    producer = _producer(bootstrap)
    _produce(producer, topic, [(k, None) for k in DOOMED])
    round_ = 0

    def compacted_away() -> bool:
        nonlocal round_
        round_ += 1
        _produce(producer, topic, [(f"filler-{i}".encode(), f"{round_}".encode()) for i in range(50)])
        time.sleep(0.2)  # segment.ms: the next append rolls the segment
        _produce(producer, topic, [(b"roll", f"{round_}".encode())])
        return not (_keys_in_topic(bootstrap, topic) & set(DOOMED))

    wait_until(
        compacted_away, timeout=180, interval=1.0, what="compaction to drop the doomed keys' tombstones"
    )


def _get_or_none(client: Client, key: bytes) -> Value | None:
    try:
        return client.get(key)
    except Kvs2Error:
        return None  # not serving (rebuilding): not there yet
