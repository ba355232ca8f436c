"""What the replica has applied, shared between the ingester thread and the asyncio server.

The ingester (a thread) publishes a `Snapshot`: next offsets, Kafka's end offsets as last reported to
the consumer, whether the replica is caught up, and which topic it follows. The server's event loop
holds the latest snapshot, flips gRPC health, and wakes coroutines waiting for a condition on it
(read-your-writes, linearizable reads, watches). Why through the loop: asyncio futures may only be
touched from their loop's thread, and the ingester must never block on a slow reader.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kvs2.guard import COUNTERS


@dataclass(frozen=True)
class Snapshot:
    applied: Mapping[int, int] = field(default_factory=dict)
    serving: bool = False
    # Kafka's end offset per partition, as the consumer last saw it (no extra round trip).
    high_watermarks: Mapping[int, int] = field(default_factory=dict)
    partitions: int = 0
    topic_id: str = ""
    # time.monotonic() of the latest end-offset look-up (kvs2.consistency.EndOffsetProbe) whose answer the
    # replica has applied: it reflects every write acknowledged before then.
    caught_up_at: Mapping[int, float] = field(default_factory=dict)
    # time.monotonic() at which Kafka was last asked for (and answered) each partition's end offset.
    ends_proven_at: Mapping[int, float] = field(default_factory=dict)
    # Why the replica is not applying records (e.g. its disk is full); empty when nothing is wrong.
    problem: str = ""
    # The resurrection guard's rebuilds in this replica so far (kvs2.guard; taken when the snapshot is
    # made, in the ingester's process, so `--workers` followers report the leader's count).
    guard_rebuilds: int = field(default_factory=lambda: COUNTERS.rebuilds)
    guard_last_reason: str = field(default_factory=lambda: COUNTERS.last_reason)

    def has_applied(self, partition: int, offset: int) -> bool:
        return self.applied.get(partition, 0) > offset

    def lag(self, partition: int) -> int:
        return max(0, self.high_watermarks.get(partition, 0) - self.applied.get(partition, 0))

    def staleness(self, partition: int, now: float) -> float:
        """Seconds since the partition was last caught up (infinite if never)."""
        at = self.caught_up_at.get(partition)
        return float("inf") if at is None else max(0.0, now - at)


Condition = Callable[[Snapshot], bool]


@dataclass
class Progress:
    loop: asyncio.AbstractEventLoop
    now: Snapshot = field(default_factory=Snapshot)
    _waiters: list[tuple[Condition, asyncio.Future[None]]] = field(default_factory=list)
    _on_serving: list[Callable[[bool], None]] = field(default_factory=list)

    @property
    def serving(self) -> bool:
        return self.now.serving

    @property
    def applied(self) -> Mapping[int, int]:
        return self.now.applied

    # ----- the ingester's side (any thread) ---------------------------------------------------------
    def publish(self, snapshot: Snapshot) -> None:
        # RuntimeError: the loop is closed, the process is shutting down.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.update, snapshot)

    # ----- the loop's side ---------------------------------------------------------------------------
    def on_serving_change(self, callback: Callable[[bool], None]) -> None:
        self._on_serving.append(callback)
        callback(self.serving)

    def update(self, snapshot: Snapshot) -> None:
        was_serving = self.now.serving
        self.now = snapshot
        if snapshot.serving != was_serving:
            for callback in self._on_serving:
                callback(snapshot.serving)
        if self._waiters:
            still: list[tuple[Condition, asyncio.Future[None]]] = []
            for condition, future in self._waiters:
                if future.done():
                    continue
                if condition(snapshot):
                    future.set_result(None)
                else:
                    still.append((condition, future))
            self._waiters = still

    async def wait_for(self, condition: Condition, timeout: float | None) -> None:
        """Return once `condition` holds for the latest snapshot; TimeoutError after `timeout`."""
        if condition(self.now):
            return
        future: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append((condition, future))
        await asyncio.wait_for(future, timeout)

    async def wait_update(self, timeout: float) -> None:
        """Return at the next published snapshot, or after `timeout` — whichever comes first."""
        current = self.now
        with contextlib.suppress(TimeoutError):
            await self.wait_for(lambda s: s is not current, timeout)
