"""Bounded staleness and bounded lag must rest on evidence from Kafka, not on cached numbers.

Regression (issue 8, defect 3): the ingester refreshed `caught_up_at` from the consumer's *cached* high
watermarks. When the replica is cut off from Kafka those numbers freeze, the replica looks caught up
with them forever, and `max_staleness_ms` / `max_lag_records` reads keep passing while other replicas
accept writes it will never see. Staleness must be measured from the last look-up that proved the
position. Here the ingester runs against a fake admin and reader: the admin's end-offset look-ups start
failing (the cut), while the reader keeps reporting its frozen cache.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kvs2.consistency import EndOffsetOracle, ReadOptions, wait_fresh
from kvs2.errors import DeadlineExceeded, KafkaUnavailable, Kvs2Error
from kvs2.ingest import Ingester
from kvs2.progress import Progress, Snapshot
from kvs2.storage import Record, Replica, TopicIdentity

IDENTITY = TopicIdentity("t", "topic-id", 2)
END = {0: 3, 1: 0}


@dataclass
class FakeAdmin:
    """Kafka's admin API as the replica sees it; `cut` makes every look-up fail like a lost network."""

    cut: bool = False
    lookups: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _check(self) -> None:
        with self.lock:
            self.lookups += 1
        if self.cut:
            raise KafkaUnavailable("listing end offsets: Local: Timed out")

    def serve_logs(self) -> None:
        pass

    def describe(self, topic: str, timeout: float = 10.0) -> TopicIdentity:
        self._check()
        return IDENTITY

    def end_offsets(self, topic: str, partitions: int, timeout: float = 10.0) -> dict[int, int]:
        self._check()
        return dict(END)

    def end_offsets_each(
        self, topic: str, partitions: Collection[int], timeout: float = 10.0
    ) -> dict[int, int | Kvs2Error]:
        self._check()
        return {p: END[p] for p in partitions}

    def max_message_bytes(self, topic: str, timeout: float = 10.0) -> int:
        return 1_000_000

    def min_compaction_lag_ms(self, topic: str, timeout: float = 10.0) -> int:
        return 0

    def delete_retention_ms(self, topic: str, timeout: float = 10.0) -> int:
        return 86_400_000  # Kafka's default


class FakeReader:
    """Delivers the topic's three records once, then nothing; its watermark cache never changes."""

    topic_in_doubt = False

    def __init__(self) -> None:
        self._pending = [Record(b"k%d" % i, b"v", 0, i) for i in range(3)]

    def assign(self, partitions: int, next_offsets: Mapping[int, int]) -> None:
        pass

    def read(self, max_records: int, timeout: float) -> tuple[list[Record], dict[int, int]]:
        if self._pending:
            out, self._pending = self._pending, []
            return out, {0: 3, 1: 0}
        time.sleep(min(timeout, 0.02))
        return [], {}

    def high_watermarks(self, partitions: int) -> dict[int, int]:
        return dict(END)  # librdkafka's cache: frozen at the last fetch response, however old

    def close(self) -> None:
        pass


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    r = Replica(tmp_path / "db", map_size=1 << 22)
    yield r
    r.close()


def _wait(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_caught_up_at_stops_advancing_when_kafka_cannot_be_reached(replica: Replica) -> None:
    admin = FakeAdmin()
    snapshots: list[Snapshot] = []
    ingester = Ingester(replica, admin, FakeReader, "t", snapshots.append)  # type: ignore[arg-type]
    ingester.start()
    try:
        _wait(lambda: snapshots and snapshots[-1].serving and 0 in snapshots[-1].caught_up_at, "serving")
        admin.cut = True
        cut_at = time.monotonic()
        # Give the ingester every chance to refresh: several publishes after the cut.
        seen = len(snapshots)
        _wait(lambda: len(snapshots) >= seen + 4, "publishes after the cut")
        last = snapshots[-1]
        assert last.serving  # reads stay local; only freshness promises depend on Kafka
        assert last.caught_up_at[0] <= cut_at, "staleness was refreshed without any answer from Kafka"
        assert last.caught_up_at[1] <= cut_at
        assert all(at <= cut_at for at in last.ends_proven_at.values())
    finally:
        ingester.stop()


def test_caught_up_at_advances_while_kafka_answers(replica: Replica) -> None:
    admin = FakeAdmin()
    snapshots: list[Snapshot] = []
    ingester = Ingester(replica, admin, FakeReader, "t", snapshots.append)  # type: ignore[arg-type]
    ingester.start()
    try:
        _wait(lambda: snapshots and 0 in snapshots[-1].caught_up_at, "caught up")
        first = snapshots[-1].caught_up_at[0]
        _wait(lambda: snapshots[-1].caught_up_at.get(0, 0.0) > first, "a later proof of the position")
        assert snapshots[-1].ends_proven_at[0] > first
    finally:
        ingester.stop()


def _snapshot(proven_ago: float) -> Snapshot:
    now = time.monotonic()
    return Snapshot(
        applied={0: 3},
        serving=True,
        high_watermarks={0: 3},
        partitions=1,
        topic_id="topic-id",
        caught_up_at={0: now - proven_ago},
        ends_proven_at={0: now - proven_ago},
    )


async def _read(snapshot: Snapshot, options: ReadOptions) -> None:
    progress = Progress(asyncio.get_running_loop())
    progress.update(snapshot)
    await wait_fresh(progress, EndOffsetOracle(lambda parts: {}), options, [0], timeout=0.2)


async def test_bounded_lag_needs_recent_end_offsets() -> None:
    await _read(_snapshot(0.0), ReadOptions(max_lag_records=5))  # fresh evidence: served at once
    with pytest.raises(DeadlineExceeded, match="end offsets"):
        # Zero records behind numbers Kafka confirmed a minute ago says nothing about now.
        await _read(_snapshot(60.0), ReadOptions(max_lag_records=5))


async def test_bounded_staleness_uses_the_proven_time() -> None:
    await _read(_snapshot(0.0), ReadOptions(max_staleness=1.0))
    with pytest.raises(DeadlineExceeded, match="caught up"):
        await _read(_snapshot(60.0), ReadOptions(max_staleness=1.0))
