"""Producer fatal errors (issue 8, defect 8): librdkafka's producer becomes unusable after a fatal error
(e.g. an idempotence sequence it cannot repair). Before, nothing listened (no `error_cb`): every write
failed until the process restarted, and health stayed SERVING. The writer must re-create the producer,
say so in the log, fail writes with UNAVAILABLE meanwhile, and report itself unhealthy while it has no
working producer. librdkafka offers no way to inject a fatal error from Python, so a fake producer
stands in for it here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError
from kvs2.errors import KafkaUnavailable, WriteOutcomeUnknown
from kvs2.kafka_io import Writer, WriteToken


class FakeProducer:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.produced: list[tuple[bytes, Callable[..., None]]] = []
        self.purged = False

    def produce(
        self, topic: str, key: bytes, value: bytes | None, on_delivery: Callable[..., None], **kw: Any
    ) -> None:
        self.produced.append((key, on_delivery))

    def poll(self, timeout: float) -> int:
        time.sleep(min(timeout, 0.01))
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self.purged = True

    def fatal(self, reason: str = "Fatal error: idempotent producer sequence desynchronised") -> None:
        self.settings["error_cb"](KafkaError(KafkaError._FATAL, reason, fatal=True))


class Factory:
    """Makes FakeProducers; `fail` makes creation raise, `gate` holds creation until set."""

    def __init__(self) -> None:
        self.made: list[FakeProducer] = []
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, settings: dict[str, Any]) -> FakeProducer:
        self.gate.wait(30)
        if self.fail:
            raise RuntimeError("cannot create producer: SSL certificate file is gone")
        producer = FakeProducer(settings)
        self.made.append(producer)
        return producer


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def factory() -> Factory:
    return Factory()


def _writer(factory: Factory, health: list[bool]) -> Writer:
    return Writer(
        {"bootstrap.servers": "127.0.0.1:1"},
        "t",
        message_timeout=5,
        producer_factory=factory,
        on_health=health.append,
    )


def test_a_fatal_error_recreates_the_producer_and_writes_fail_meanwhile(
    factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    health: list[bool] = []
    writer = _writer(factory, health)
    try:
        first = factory.made[0]
        factory.gate.clear()  # hold the re-creation to see the in-between state
        with caplog.at_level(logging.ERROR, logger="kvs2.kafka_io"):
            first.fatal()
        with pytest.raises(KafkaUnavailable, match="fatal error"):
            writer.write(b"k", b"v")
        assert health[-1] is False
        factory.gate.set()
        _wait(lambda: len(factory.made) == 2 and health[-1] is True, "a new producer")
        assert first.purged
        writer.write(b"k", b"v")
        assert [k for k, _ in factory.made[1].produced] == [b"k"]
        assert "re-creating" in caplog.text
    finally:
        writer.close(timeout=1)


def test_health_stays_down_while_the_producer_cannot_be_recreated(factory: Factory) -> None:
    health: list[bool] = []
    writer = _writer(factory, health)
    try:
        factory.fail = True
        factory.made[0].fatal()
        _wait(lambda: health == [False], "unhealthy")
        time.sleep(0.3)  # retries keep failing
        assert health[-1] is False
        with pytest.raises(KafkaUnavailable):
            writer.write(b"k", b"v")
        factory.fail = False
        _wait(lambda: health[-1] is True, "healthy again", timeout=60)
        writer.write(b"k", b"v")
    finally:
        writer.close(timeout=1)


def test_a_delivery_timeout_says_the_write_may_still_be_applied(factory: Factory) -> None:
    """Issue 8, defect 9: a write librdkafka gave up on may have reached Kafka: say so."""
    writer = _writer(factory, [])
    try:
        pending = writer.write(b"k", b"v")
        _key, on_delivery = factory.made[0].produced[0]
        on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out"), None)
        with pytest.raises(WriteOutcomeUnknown, match="may still be applied"):
            pending.result(timeout=5)
    finally:
        writer.close(timeout=1)


def test_message_timeout_outlasts_the_write_timeout(factory: Factory) -> None:
    """The caller's own timer must fire first (with the "may still be applied" warning)."""
    writer = _writer(factory, [])
    try:
        assert int(factory.made[0].settings["message.timeout.ms"]) > 5_000
    finally:
        writer.close(timeout=1)


def test_successful_delivery_resolves_the_token(factory: Factory) -> None:
    class Msg:
        def partition(self) -> int:
            return 2

        def offset(self) -> int:
            return 7

    writer = _writer(factory, [])
    try:
        pending = writer.write(b"k", b"v")
        factory.made[0].produced[0][1](None, Msg())
        assert pending.result(timeout=5) == WriteToken(2, 7)
    finally:
        writer.close(timeout=1)


def test_health_needs_every_part() -> None:
    from kvs2.server import HealthGate

    states: list[bool] = []
    gate = HealthGate(states.append, {"replica": False, "producer": True})
    gate.set("replica", True)
    gate.set("producer", False)  # the producer hit a fatal error: not SERVING, however caught up
    gate.set("replica", True)
    gate.set("producer", True)
    assert states == [False, True, False, True]
