"""How fresh a read is: the per-request consistency levels and the waits that implement them.

Every replica applies every partition in Kafka's order, so freshness is a question of offsets:
  eventual      read the replica as it is;
  after tokens  wait until the replica's next offset passes each write's (partition, offset);
  linearizable  ask Kafka for the end offsets now, wait until the replica has applied up to them;
  max lag       wait until the replica is within N records of Kafka's end offsets on the partitions the
                read touches, with those end offsets confirmed by Kafka within MAX_END_OFFSETS_AGE;
  max staleness wait until those partitions were caught up at most T ago, where "caught up at t" means
                a look-up *sent* at t answered with end offsets the replica has applied.
All waits are bounded by the caller's deadline and end in `DeadlineExceeded` with the numbers.

Why look-ups and not the consumer's cached high watermarks: the cache freezes when fetches fail, so a
replica cut off from Kafka would look caught up with it forever (issue 8). `EndOffsetProbe` asks Kafka
itself, and an unanswered question proves nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from kvs2.errors import DeadlineExceeded, InvalidArgument, Kvs2Error, Unavailable
from kvs2.kafka_io import WriteToken
from kvs2.progress import Progress, Snapshot

log = logging.getLogger(__name__)

# A bounded-lag read needs Kafka's end offsets confirmed at most this long ago (the probe asks every
# PROBE_INTERVAL); older numbers say nothing about how far behind the replica is now.
MAX_END_OFFSETS_AGE = 2.0
PROBE_INTERVAL = 0.5


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


EndOffsetLookup = Callable[[Collection[int]], Mapping[int, "int | Kvs2Error"]]


class EndOffsetOracle:
    """Kafka's end offsets of given partitions, looked up by a call that *starts after* the caller asked.

    Why: a linearizable read must see every write acknowledged before it began; an answer from a
    look-up already in flight might predate such a write. Concurrent callers share the next
    look-up (over the union of their partitions), so a burst of linearizable reads costs one Kafka
    round trip, not one each. Each partition's answer stands alone: a partition whose leader is down
    fails only the reads that touch it.
    """

    def __init__(self, lookup: EndOffsetLookup) -> None:
        self._lookup = lookup
        self._pending: asyncio.Future[Mapping[int, int | Kvs2Error]] | None = None
        self._wanted: set[int] = set()
        self._runner: asyncio.Task[None] | None = None

    async def end_offsets(self, partitions: Collection[int]) -> dict[int, int]:
        """End offsets of `partitions`; the first partition Kafka could not answer for raises its error."""
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_future()
            self._wanted = set()
        self._wanted.update(partitions)
        pending = self._pending
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        answers = await asyncio.shield(pending)
        out: dict[int, int] = {}
        for p in sorted(set(partitions)):
            answer = answers.get(p)
            if answer is None:
                raise Unavailable(f"Kafka did not report the end offset of partition {p}")
            if isinstance(answer, Kvs2Error):
                raise answer
            out[p] = answer
        return out

    async def _run(self) -> None:
        while self._pending is not None:
            future, wanted, self._pending = self._pending, self._wanted, None
            try:
                result = await asyncio.to_thread(self._lookup, sorted(wanted))
            except Exception as exc:
                error = exc if isinstance(exc, Kvs2Error) else Unavailable(f"listing end offsets: {exc}")
                if not future.done():
                    future.set_exception(error)
                    future.exception()  # mark retrieved: callers may have gone
            else:
                if not future.done():
                    future.set_result(result)


class EndOffsetProbe:
    """Asks Kafka for the end offsets every `interval` seconds (own thread) and keeps recent answers,
    each stamped with the time its look-up was *sent*.

    Why the send time: every write acknowledged before the look-up was sent lies below the offsets it
    returns, so once the replica has applied up to them it reflects everything acknowledged until
    then. A few answers are kept because under load the replica is rarely at the newest one, but soon
    passes an older one.
    """

    def __init__(
        self,
        lookup: Callable[[], Mapping[int, int | Kvs2Error]],
        interval: float = PROBE_INTERVAL,
        keep: int = 32,
    ) -> None:
        self._lookup = lookup
        self._interval = interval
        self._answers: dict[int, deque[tuple[float, int]]] = {}
        self._keep = keep
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvs2-end-offset-probe", daemon=True)

    def start(self) -> EndOffsetProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # a look-up in flight ends by its own timeout; the thread is a daemon

    def record(self, sent_at: float, ends: Mapping[int, int | Kvs2Error]) -> None:
        with self._lock:
            for p, end in ends.items():
                if isinstance(end, int):
                    self._answers.setdefault(p, deque(maxlen=self._keep)).append((sent_at, end))

    def latest(self) -> tuple[dict[int, int], dict[int, float]]:
        """The newest confirmed end offset per partition, and when its look-up was sent."""
        with self._lock:
            answers = {p: a[-1] for p, a in self._answers.items() if a}
        return {p: end for p, (_t, end) in answers.items()}, {p: t for p, (t, _e) in answers.items()}

    def caught_up_since(self, applied: Mapping[int, int]) -> dict[int, float]:
        """Per partition: the latest send time whose answer `applied` has reached."""
        out: dict[int, float] = {}
        with self._lock:
            for p, answers in self._answers.items():
                reached = [t for t, end in answers if applied.get(p, 0) >= end]
                if reached:
                    out[p] = max(reached)
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                ends = self._lookup()
            except Kvs2Error as exc:
                log.debug("end offsets look-up failed: %s", exc)
            except Exception:
                log.exception("end offsets look-up failed unexpectedly")
            else:
                self.record(sent, ends)
            self._stop.wait(self._interval)


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
            ends = await asyncio.wait_for(oracle.end_offsets(parts), timeout)
        except TimeoutError as exc:
            # Kafka did not answer: that is Kafka being unreachable, not the replica being behind.
            raise Unavailable(
                "linearizable read: Kafka did not report the end offsets of partitions "
                f"{', '.join(map(str, parts))} within the deadline"
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
        now = time.monotonic()
        if max_lag > 0 and any(
            s.lag(p) > max_lag or _ends_age(s, p, now) > MAX_END_OFFSETS_AGE for p in parts
        ):
            return False
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
    now = time.monotonic()
    if max_lag > 0:
        missing += [f"partition {p} lags {s.lag(p)} records" for p in parts if s.lag(p) > max_lag]
        missing += [
            f"partition {p}: Kafka's end offsets were last confirmed {_age_text(_ends_age(s, p, now))} "
            "(Kafka has not answered since)"
            for p in parts
            if _ends_age(s, p, now) > MAX_END_OFFSETS_AGE
        ]
    if max_staleness > 0:
        missing += [
            f"partition {p} was last caught up {_age_text(s.staleness(p, now))}"
            for p in parts
            if s.staleness(p, now) > max_staleness
        ]
    return "the replica did not become fresh enough within the deadline: " + "; ".join(missing)


def _ends_age(s: Snapshot, partition: int, now: float) -> float:
    at = s.ends_proven_at.get(partition)
    return float("inf") if at is None else max(0.0, now - at)


def _age_text(age: float) -> str:
    return "never (no answer from Kafka yet)" if age == float("inf") else f"{age * 1000:.0f} ms ago"
