"""The resurrection guard's rule and its clock (kvs2.guard), and where the replica stores the clock."""

from __future__ import annotations

import time
from pathlib import Path

from kvs2.guard import CaughtUpClock, stale_reason
from kvs2.storage import Record, Replica, TopicIdentity


def test_resume_within_delete_retention_less_margin() -> None:
    assert stale_reason(1000.0, 1000.0 + 29.0, delete_retention_seconds=90.0, margin_seconds=60.0) is None


def test_rebuild_past_delete_retention_less_margin_and_say_why() -> None:
    reason = stale_reason(1000.0, 1000.0 + 31.0, delete_retention_seconds=90.0, margin_seconds=60.0)
    assert reason is not None and "delete.retention.ms" in reason


def test_rebuild_when_the_margin_exceeds_the_retention() -> None:
    assert stale_reason(1000.0, 1000.5, delete_retention_seconds=0.1, margin_seconds=60.0) is not None


def test_rebuild_when_never_recorded() -> None:
    assert stale_reason(None, 1000.0, delete_retention_seconds=86400.0, margin_seconds=60.0) is not None


def test_clock_is_the_earliest_partition_and_only_moves_forward() -> None:
    clock = CaughtUpClock(stored=100.0, partitions=2)
    assert clock.observe({0: 5, 1: 3}, {0: 5, 1: 4}, now=200.0) is None  # partition 1 is behind
    assert clock.observe({0: 5, 1: 4}, {0: 5, 1: 4}, now=210.0) == 210.0
    assert clock.observe({0: 5, 1: 4}, {0: 5, 1: 4}, now=210.5, step=1.0) is None  # not worth a write
    assert clock.observe({0: 5, 1: 4}, {0: 5, 1: 4}, now=212.0, step=1.0) == 212.0


def test_reset_starts_the_clock_and_apply_stores_it_with_the_offsets(tmp_path: Path) -> None:
    replica = Replica(tmp_path / "db", map_size=1 << 20)
    assert replica.caught_up_at() is None
    before = time.time()
    replica.reset(TopicIdentity("t", "id", 1))
    started = replica.caught_up_at()
    assert started is not None and started >= before
    replica.apply([Record(b"k", b"v", 0, 0)], {0: 1})
    assert replica.caught_up_at() == started  # not given: unchanged
    replica.apply([Record(b"k", b"w", 0, 1)], {0: 2}, caught_up_at=started + 5)
    assert replica.caught_up_at() == started + 5
    replica.mark_caught_up(started + 9)
    assert replica.caught_up_at() == started + 9
    replica.close()


def test_clock_moves_only_on_new_answers_from_kafka() -> None:
    """Cut off from Kafka, the probe gets no new answers: the clock must not move however long the
    replica keeps running (a frozen consumer cache must not keep proving it caught up)."""
    clock = CaughtUpClock(stored=100.0, partitions=2)
    assert clock.observe_proven({0: 150.0}) is None  # partition 1 has no answer it reached yet
    assert clock.observe_proven({0: 150.0, 1: 160.0}) == 150.0
    assert clock.observe_proven({0: 150.0, 1: 160.0}) is None  # the same answers again: no movement
    assert clock.observe_proven({0: 140.0, 1: 170.0}) is None  # an older answer never moves it back


def test_the_clock_tells_when_every_partition_was_last_proven() -> None:
    clock = CaughtUpClock(stored=100.0, partitions=2)
    assert clock.at == 100.0
    clock.observe_proven({0: 150.0})
    assert clock.at == 100.0  # partition 1 not proven since
    clock.observe_proven({1: 140.0})
    assert clock.at == 140.0
