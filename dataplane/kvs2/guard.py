"""The resurrection guard: when a replica's stored state may be missing deletes, rebuild it.

Why: Kafka's compaction drops a tombstone `delete.retention.ms` after the cleaner first passes over it.
A replica that stops reading for longer than that and then resumes from its stored offsets may find
the tombstones of keys it holds already gone — those keys would live on in this replica forever.

The argument: the replica records (in LMDB, in the transaction that stores the offsets) the wall-clock
time T at which it last proved itself caught up — its next offsets had reached the end offsets Kafka
reported. Every record past its stored offsets was written after about T, so its tombstones survive
until at least T + delete.retention.ms. On start, if now is past that less a safety margin, the
replica rebuilds instead of resuming. A replica being built from the beginning counts from the moment
the build started (a put it read after T still has its later tombstone until T + delete.retention.ms).
Wall-clock time, because it must survive restarts; the margin absorbs clock steps and the gap between
Kafka reporting an end offset and our noting it.

The same holds without a restart: a replica cut off from Kafka (or paused) cannot prove itself caught up,
its clock stops, and once it reads again it may read past a gap where compaction dropped tombstones. The
ingester's `RunningGuard` (kvs2.ingest) rebuilds when a partition skips compacted offsets later than the
window after it was last proven caught up on it — a lost tombstone always leaves such a gap, so reading
without a gap never rebuilds (with `--bootstrap-peers` such a rebuild restarts the process to take a
peer's snapshot, kvs2.restart). A build (or a catch-up) that takes longer than the window is not helped by
starting it again — a replay must finish within delete.retention.ms (a snapshot bootstrap does not replay).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Subtracted from delete.retention.ms: the guard rebuilds this much before a tombstone could be gone.
DEFAULT_MARGIN_SECONDS = 60.0
# How often an idle, caught-up replica refreshes its stored "caught up at" (a small write transaction).
REFRESH_SECONDS = 1.0


def stale_reason(
    caught_up_at: float | None, now: float, delete_retention_seconds: float, margin_seconds: float
) -> str | None:
    """Why the stored state may be missing deletes (rebuild), or None when it is safe to resume."""
    window = max(0.0, delete_retention_seconds - margin_seconds)
    if caught_up_at is None:
        return (
            "it has no record of when it was last caught up (written by an older kvs2), so it cannot "
            "know whether compaction dropped tombstones it never read"
        )
    behind = now - caught_up_at
    if behind > window:
        return (
            f"it was last caught up {behind:.1f}s ago, longer than the topic's delete.retention.ms "
            f"({delete_retention_seconds:.1f}s) less a {margin_seconds:.1f}s margin: compaction may have "
            "dropped tombstones it never read"
        )
    return None


@dataclass
class GuardCounters:
    """How often the guard made a replica rebuild (for metrics and status)."""

    rebuilds: int = 0
    last_reason: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def rebuilt(self, reason: str) -> None:
        with self._lock:
            self.rebuilds += 1
            self.last_reason = reason

    def read(self) -> tuple[int, str]:
        """(rebuilds, last reason), read together."""
        with self._lock:
            return self.rebuilds, self.last_reason

    def restore(self, rebuilds: int, last_reason: str) -> None:
        """Take over the counts of the process this one replaced by exec (kvs2.restart): a counter that
        went back to zero on a rebuild would hide the rebuild."""
        with self._lock:
            self.rebuilds += rebuilds
            self.last_reason = self.last_reason or last_reason


COUNTERS = GuardCounters()


class CaughtUpClock:
    """Per partition, the last wall-clock time its next offset reached Kafka's end offset; the replica
    as a whole was caught up at the earliest of these. Tells the ingester when to store a newer time."""

    def __init__(self, stored: float | None, partitions: int) -> None:
        start = 0.0 if stored is None else stored
        self._at = dict.fromkeys(range(partitions), start)
        self._stored = start

    @property
    def at(self) -> float:
        """When the replica as a whole was last proven caught up (wall-clock seconds; 0: never)."""
        return min(self._at.values(), default=0.0)

    def observe(
        self, offsets: Mapping[int, int], end_offsets: Mapping[int, int], now: float, step: float = 0.0
    ) -> float | None:
        """Note which partitions are caught up at `now`; the time to store if it moved forward by more
        than `step` seconds (the caller stores it with `offsets`), else None."""
        return self.observe_proven(
            {p: now for p, end in end_offsets.items() if offsets.get(p, 0) >= end}, step
        )

    def observe_proven(self, proven: Mapping[int, float], step: float = 0.0) -> float | None:
        """Like `observe`, from per-partition times at which Kafka answered with an end offset the
        replica has since reached (kvs2.consistency.EndOffsetProbe): a replica cut off from Kafka gets
        no new answers, so its clock stops, as the guard needs."""
        for p, at in proven.items():
            if p in self._at and at > self._at[p]:
                self._at[p] = at
        at = min(self._at.values(), default=0.0)
        if at > self._stored + step:
            self._stored = at
            return at
        return None
