"""The producer settings that keep a write from being appended twice (torture seed 23; the real-Kafka
scenario is tests/integration/faults/test_duplicates.py).

librdkafka renumbers unacknowledged records after an out-of-order answer to a request queued behind one
that timed out, so the broker appends the timed-out request's records a second time. One request in flight
per connection rules that out; nothing in `--kafka-config` may undo it. Records purged from the queue may
be such retries, so their callers must hear "may still be applied", never a plain failure."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError
from kvs2.errors import WriteOutcomeUnknown
from kvs2.kafka_io import Writer

from tests.unit.test_producer_fatal import Factory


def _writer(factory: Factory, config: dict[str, str]) -> Writer:
    return Writer(config, "t", message_timeout=5.0, producer_factory=factory)


def test_one_produce_request_in_flight_whatever_the_configuration_says() -> None:
    factory = Factory()
    writer = _writer(factory, {"max.in.flight.requests.per.connection": "5"})
    try:
        assert factory.made[0].settings["max.in.flight.requests.per.connection"] == 1
        assert factory.made[0].settings["enable.idempotence"] is True
    finally:
        writer.close(timeout=0.1)


@pytest.mark.parametrize("code", [KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT])
def test_a_purged_write_may_still_be_applied(code: int) -> None:
    factory = Factory()
    writer = _writer(factory, {})
    try:
        fut = writer.write(b"k", b"v")
        _key, on_delivery = factory.made[0].produced[0]
        on_delivery(KafkaError(code, "purged"), None)
        with pytest.raises(WriteOutcomeUnknown, match="may still be applied"):
            fut.result(timeout=5)
    finally:
        writer.close(timeout=0.1)
