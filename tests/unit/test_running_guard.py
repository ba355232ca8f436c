"""kvs2.ingest.RunningGuard: when a running replica must rebuild because compacted offsets it meets may
hide tombstones Kafka already dropped (the real-Kafka test is tests/integration/faults/
test_resurrection_running.py)."""

from __future__ import annotations

import time

from kvs2.ingest import RunningGuard


def test_a_gap_met_within_the_window_after_the_last_proof_is_safe() -> None:
    guard = RunningGuard(10.0, time.time(), exempt_until_serving=False)
    now = time.monotonic()
    guard.proven({0: now - 5.0})
    assert guard.check({0}, now, serving=True) is None


def test_a_gap_met_later_than_the_window_makes_the_replica_rebuild() -> None:
    guard = RunningGuard(10.0, time.time() - 100.0, exempt_until_serving=False)
    now = time.monotonic()
    guard.proven({0: now - 1.0, 1: now - 30.0})
    assert guard.check({0}, now, serving=True) is None
    reason = guard.check({0, 1}, now, serving=True)
    assert reason is not None and "partition 1" in reason and "delete.retention.ms" in reason


def test_without_a_newer_proof_the_stored_caught_up_time_counts() -> None:
    guard = RunningGuard(10.0, time.time() - 30.0, exempt_until_serving=False)
    assert guard.check({2}, time.monotonic(), serving=True) is not None
    assert guard.check(set(), time.monotonic(), serving=True) is None  # no gap, nothing to fear


def test_a_build_from_the_beginning_is_exempt_only_until_it_first_serves() -> None:
    guard = RunningGuard(0.0, time.time() - 30.0, exempt_until_serving=True)
    now = time.monotonic()
    assert guard.check({0}, now, serving=False) is None
    assert guard.check({0}, now, serving=True) is not None
    assert guard.check({0}, now, serving=False) is not None  # serving once ends the exemption
