"""One delivery callback per `Write` batch (issue 12): each report must reach the right item, including
items that share a key and items librdkafka refused to queue. librdkafka cannot be made to refuse one
record of a batch from Python, so a fake producer stands in for it; the real-Kafka behaviour is
tests/integration/dataplane/test_write_batch.py."""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import KafkaError
from kvs2.errors import KafkaUnavailable, WriteOutcomeUnknown
from kvs2.kafka_io import BatchDelivery, Writer


class _Msg:
    def __init__(self, key: bytes, partition: int, offset: int) -> None:
        self._key, self._partition, self._offset = key, partition, offset

    def key(self) -> bytes:
        return self._key

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class _BatchProducer:
    """Queues what `produce_batch` gets; refuses the records whose key is in `refuse`."""

    def __init__(self, settings: dict[str, Any], refuse: frozenset[bytes] = frozenset()) -> None:
        self.settings = settings
        self.refuse = refuse
        self.queued: list[tuple[dict[str, Any], Any]] = []

    def produce_batch(self, topic: str, messages: list[dict[str, Any]], on_delivery: Any) -> int:
        for message in messages:
            if message["key"] in self.refuse:
                message["_error"] = KafkaError(KafkaError._QUEUE_FULL)
            else:
                self.queued.append((message, on_delivery))
        return len(self.queued)

    def __len__(self) -> int:
        return 0

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def test_reports_for_a_repeated_key_reach_its_items_in_order() -> None:
    batch = BatchDelivery([b"a", b"b", b"a", b"a"])
    batch.on_delivery(None, _Msg(b"a", 3, 10))  # type: ignore[arg-type]
    batch.on_delivery(None, _Msg(b"b", 1, 5))  # type: ignore[arg-type]
    batch.on_delivery(None, _Msg(b"a", 3, 11))  # type: ignore[arg-type]
    assert not batch.done.done()
    batch.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), _Msg(b"a", 3, -1))  # type: ignore[arg-type]
    assert batch.done.done()
    assert batch.offsets == [10, 5, 11, -1]
    assert batch.partitions == [3, 1, 3, -1]
    assert isinstance(batch.errors[3], WriteOutcomeUnknown)


def test_records_never_queued_are_failed_and_the_others_still_get_their_reports() -> None:
    made: list[_BatchProducer] = []

    def factory(settings: dict[str, Any]) -> _BatchProducer:
        made.append(_BatchProducer(settings, refuse=frozenset({b"x"})))
        return made[-1]

    writer = Writer({}, "t", message_timeout=5.0, producer_factory=factory)
    try:
        batch = writer.write_many([b"x", b"k", b"x", b"m"], [b"1", b"2", None, b"4"], queue_wait=0.1)
        queued = made[0].queued
        assert [(m["key"], m["value"]) for m, _ in queued] == [(b"k", b"2"), (b"m", b"4")]
        for offset, (message, on_delivery) in enumerate(queued):
            on_delivery(None, _Msg(message["key"], 0, offset))
        assert batch.done.done()
        assert batch.offsets == [-1, 0, -1, 1]
        assert set(batch.errors) == {0, 2}
        assert all(
            isinstance(e, KafkaUnavailable) and "queue is full" in str(e) for e in batch.errors.values()
        )
    finally:
        writer.close(timeout=0.1)


def test_a_batch_waits_for_room_in_the_queue_then_fails_what_does_not_fit() -> None:
    class Full(_BatchProducer):
        def __len__(self) -> int:
            return 100_000

        def produce_batch(self, topic: str, messages: list[dict[str, Any]], on_delivery: Any) -> int:
            for message in messages:
                message["_error"] = KafkaError(KafkaError._QUEUE_FULL)
            return 0

    writer = Writer({}, "t", message_timeout=5.0, producer_factory=Full)
    try:
        batch = writer.write_many([b"a", b"b"], [b"1", b"2"], queue_wait=0.05)
        assert batch.done.done() and set(batch.errors) == {0, 1}
    finally:
        writer.close(timeout=0.1)


def test_a_single_write_goes_through_while_a_batch_waits_for_room() -> None:
    """A batch waiting for room in librdkafka's queue must not hold the producer lock: a single Set takes
    it on the event loop, which would freeze every call of the replica meanwhile."""
    room, waiting = threading.Event(), threading.Event()

    class Busy(_BatchProducer):
        def __len__(self) -> int:
            waiting.set()
            return 0 if room.is_set() else 100_000

        def produce(self, topic: str, key: bytes, value: bytes | None, on_delivery: Any, **kw: Any) -> None:
            self.queued.append(({"key": key, "value": value}, on_delivery))

    made: list[Busy] = []

    def factory(settings: dict[str, Any]) -> Busy:
        made.append(Busy(settings))
        return made[-1]

    writer = Writer({}, "t", message_timeout=5.0, producer_factory=factory)
    batches: list[BatchDelivery] = []
    producing = threading.Thread(
        target=lambda: batches.append(writer.write_many([b"a"], [b"1"], queue_wait=3.0))
    )
    try:
        producing.start()
        assert waiting.wait(10)
        writer.write(b"single", b"v")
        assert producing.is_alive(), "the batch gave up before the single write could go through"
        room.set()
        producing.join(10)
        assert [m["key"] for m, _ in made[0].queued] == [b"single", b"a"]
        assert not batches[0].errors
    finally:
        room.set()
        producing.join(10)
        writer.close(timeout=0.1)
