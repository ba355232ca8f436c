"""How fresh a read is: the per-request consistency levels and the waits that implement them.

Every replica applies every partition in Kafka's order, so freshness is a question of offsets:
  eventual      read the replica as it is;
  after tokens  wait until the replica's next offset passes each write's (partition, offset);
  linearizable  ask Kafka for the end offsets now, wait until the replica has applied up to them;
  max lag       wait until the replica is within N records of Kafka's end offsets (as last reported
                to its consumer) on the partitions the read touches;
  max staleness wait until those partitions were caught up with those end offsets at most T ago.
All waits are bounded by the caller's deadline and end in `DeadlineExceeded` with the numbers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kvs2.errors import DeadlineExceeded, InvalidArgument, Kvs2Error
from kvs2.kafka_io import WriteToken
from kvs2.progress import Progress, Snapshot


@dataclass(frozen=True)
class ReadOptions:
    linearizable: bool = False
    after: tuple[WriteToken, ...] = ()
    max_lag_records: int = 0  # 0: no bound
    max_staleness: float = 0.0  # seconds; 0: no bound
    # The topic id the offsets belong to (tokens' topic; for linearizable reads, the topic whose end
    # offsets were looked up): a replica following another topic id never counts as fresh. "": unchecked.
    topic_id: str = ""

    @property
    def eventual(self) -> bool:
        return (
            not self.linearizable and not self.after and self.max_lag_records <= 0 and self.max_staleness <= 0
        )


EVENTUAL = ReadOptions()


class EndOffsetOracle:
    """Kafka's end offsets, looked up by a call that *starts after* the caller asked.

    Why: a linearizable read must see every write acknowledged before it began; an answer from a
    look-up already in flight might predate such a write. Concurrent callers share the next
    look-up, so a burst of linearizable reads costs one Kafka round trip, not one each.
    """

    def __init__(self, lookup: Callable[[], Mapping[int, int]]) -> None:
        self._lookup = lookup
        self._pending: asyncio.Future[Mapping[int, int]] | None = None
        self._runner: asyncio.Task[None] | None = None

    async def end_offsets(self) -> Mapping[int, int]:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_future()
        pending = self._pending
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await asyncio.shield(pending)

    async def _run(self) -> None:
        while self._pending is not None:
            future, self._pending = self._pending, None
            try:
                result = await asyncio.to_thread(self._lookup)
            except Kvs2Error as exc:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # mark retrieved: callers may have gone
            else:
                if not future.done():
                    future.set_result(result)


def validate(options: ReadOptions, partitions: int) -> None:
    for token in options.after:
        if not 0 <= token.partition < partitions:
            raise InvalidArgument(
                f"token names partition {token.partition}; the topic has partitions 0..{partitions - 1}"
            )
        if token.offset < 0:
            raise InvalidArgument(f"token offset {token.offset} is negative")
    if options.max_lag_records < 0:
        raise InvalidArgument("max_lag_records must not be negative")
    if options.max_staleness < 0:
        raise InvalidArgument("max_staleness_ms must not be negative")


async def wait_fresh(
    progress: Progress,
    oracle: EndOffsetOracle,
    options: ReadOptions,
    partitions: Iterable[int],
    timeout: float | None,
) -> None:
    """Return once the replica is as fresh as `options` asks for `partitions`; else DeadlineExceeded."""
    if options.eventual:
        return
    parts = sorted(set(partitions))
    needed: dict[int, int] = {}  # partition → an offset that must be applied
    for token in options.after:
        needed[token.partition] = max(needed.get(token.partition, -1), token.offset)
    if options.linearizable:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            ends = await asyncio.wait_for(oracle.end_offsets(), timeout)
        except TimeoutError as exc:
            raise DeadlineExceeded(
                "linearizable read: Kafka did not report its end offsets within the deadline"
            ) from exc
        if timeout is not None:
            timeout = max(0.0, timeout - (loop.time() - started))
        for p in parts:
            if ends.get(p, 0) > 0:
                needed[p] = max(needed.get(p, -1), ends[p] - 1)
    max_lag = options.max_lag_records
    max_staleness = options.max_staleness

    def fresh(s: Snapshot) -> bool:
        if options.topic_id and s.topic_id != options.topic_id:
            return False
        if not all(s.has_applied(p, o) for p, o in needed.items()):
            return False
        if max_lag > 0 and any(s.lag(p) > max_lag for p in parts):
            return False
        now = time.monotonic()
        return max_staleness <= 0 or all(s.staleness(p, now) <= max_staleness for p in parts)

    try:
        await progress.wait_for(fresh, timeout)
    except TimeoutError as exc:
        shortfall = _shortfall(progress.now, needed, parts, max_lag, max_staleness, options.topic_id)
        raise DeadlineExceeded(shortfall) from exc


def _shortfall(
    s: Snapshot,
    needed: Mapping[int, int],
    parts: Iterable[int],
    max_lag: int,
    max_staleness: float,
    topic_id: str = "",
) -> str:
    if topic_id and s.topic_id != topic_id:
        return (
            f"the read names topic id {topic_id}; this replica follows topic id {s.topic_id or '(none yet)'} "
            "(the topic was deleted and recreated): its offsets say nothing about that topic"
        )
    missing = [
        f"partition {p} needs offset {o} applied, replica is at {s.applied.get(p, 0)}"
        for p, o in sorted(needed.items())
        if not s.has_applied(p, o)
    ]
    if max_lag > 0:
        missing += [f"partition {p} lags {s.lag(p)} records" for p in parts if s.lag(p) > max_lag]
    if max_staleness > 0:
        now = time.monotonic()
        missing += [
            f"partition {p} was last caught up {s.staleness(p, now) * 1000:.0f} ms ago"
            for p in parts
            if s.staleness(p, now) > max_staleness
        ]
    return "the replica did not become fresh enough within the deadline: " + "; ".join(missing)
