"""The ingester: the only writer of the replica. It follows every partition of the topic and applies
each consumed batch, together with the partitions' next offsets, in one LMDB transaction.

Life of the ingester:
  1. describe the topic (id, partition count); if it differs from what the replica was built from,
     the replica is stale (topic deleted and recreated, partitions changed): wipe it and rebuild;
  2. note the end offsets Kafka has now — the replica is "caught up" once its next offsets reach them
     (positions, never "last record + 1": offsets have gaps);
  3. consume in batches from the stored offsets; apply; publish progress;
  4. re-check the topic's identity every second while idle, and before applying a batch when the last
     check is older than VERIFY_BEFORE_APPLY or the consumer reported the topic unknown: a topic
     deleted and recreated under the same name serves records at offsets the old one also had, and
     they must never be mixed into the old replica. A topic merely not found stops serving but
     discards nothing (see `_TopicGone`): only a topic with a different id does.
Kafka unreachable before step 2 keeps the replica NOT_SERVING and retries with backoff; a Kafka
outage after that leaves it serving what it has (reads are local) while librdkafka reconnects.

A replica that must rebuild while running (`_Rebuild`: the topic changed, the stored offsets are gone
from Kafka, the running guard met a late compaction gap) either replays the topic in place, or — given
`restart_to_rebuild` (the server passes one when the replica has `--bootstrap-peers`) — marks its store
"must rebuild" and has the process restart, so that the start-up path takes a peer's snapshot
(kvs2.restart says why). The checks made when the first session starts (a store of another topic, the
guard at start) always build in place: the start-up bootstrap has just asked the peers for that; so does
a process that replaced one that restarted, until it first serves (`may_restart_before_serving`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kvs2 import metrics
from kvs2.consistency import EndOffsetProbe
from kvs2.errors import KafkaUnavailable, Kvs2Error, StorageFailed, TopicNotFound
from kvs2.guard import (
    COUNTERS,
    DEFAULT_MARGIN_SECONDS,
    REFRESH_SECONDS,
    CaughtUpClock,
    stale_reason,
)
from kvs2.kafka_io import Admin, ChangelogReader, OffsetGone
from kvs2.progress import Snapshot
from kvs2.storage import Outcome, Replica, TopicIdentity

log = logging.getLogger(__name__)

ProgressSink = Callable[[Snapshot], None]
# Records applied since the heap was last trimmed after which an idle ingester trims it again.
TRIM_AFTER_RECORDS = 200_000
# Seconds a topic identity check stays good for applying fetched records (see the module docstring).
VERIFY_BEFORE_APPLY = 0.25
# Seconds taken off the topic's min.compaction.lag.ms for the time between Kafka reporting a partition's
# end and the replica reading that report (see Ingester._fresh_window).
FRESH_MARGIN = 1.0


@dataclass(frozen=True)
class TopicSpec:
    """How to create the topic when it is missing (local development only; the operator creates it)."""

    partitions: int
    replication_factor: int
    # Why a compaction lag: Kafka then never compacts a record younger than it, so a gap among fresh
    # offsets is another producer's transaction marker, not a lost change, and Watch does not end there
    # with OUT_OF_RANGE (FRESH_MARGIN, Replica.apply's `fresh_from`). The operator should set the same.
    min_compaction_lag_ms: int = 60_000


class _Rebuild(Exception):
    """The replica no longer matches the topic; start over from an empty replica."""


class _TopicGone(Exception):
    """The topic is not found. Not a reason to discard anything: a deletion by mistake or a metadata
    glitch must not destroy what may be the last copies of the data. Stop serving; only a topic with a
    different id (checked when a session starts) makes the replica rebuild."""


class Ingester:
    def __init__(
        self,
        replica: Replica,
        admin: Admin,
        make_reader: Callable[[], ChangelogReader],
        topic: str,
        on_progress: ProgressSink,
        *,
        on_topic_limit: Callable[[int], None] = lambda _limit: None,
        on_outcomes: Callable[[list[Outcome]], None] = lambda _outcomes: None,
        create: TopicSpec | None = None,
        batch_size: int = 10_000,
        identity_check_interval: float = 1.0,
        guard_margin: float = DEFAULT_MARGIN_SECONDS,
        restart_to_rebuild: Callable[[str], None] | None = None,
        may_restart_before_serving: bool = True,
    ) -> None:
        self._replica = replica
        self._admin = admin
        self._make_reader = make_reader
        self._topic = topic
        self._on_progress = on_progress
        self._on_topic_limit = on_topic_limit
        self._on_outcomes = on_outcomes
        self._create = create
        self._batch_size = batch_size
        self._identity_check_interval = identity_check_interval
        self._guard_margin = guard_margin
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvs2-ingester", daemon=True)
        self._problem: Kvs2Error | None = None  # what stops the ingester now (logged once; see _recovered)
        self._restart = restart_to_rebuild
        # False in a process that replaced one that restarted to rebuild (kvs2.restart): it must serve once
        # before it may restart again, so that a rebuild that keeps failing cannot restart in a loop.
        self._may_restart = may_restart_before_serving
        self._started = False  # a session got past its start-up checks (see _session)
        self._fresh_window = 0.0  # seconds; set from the topic's min.compaction.lag.ms in _session
        self._retention: float | None = None  # the topic's delete.retention.ms in seconds (kvs2.guard)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the ingester thread runs (the server supervises it: a dead one ends the process)."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    # ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._session()
                delay = 0.5
            except _Rebuild as why:
                self._on_progress(Snapshot())  # NOT_SERVING first
                if self._restart is not None and self._may_restart:
                    log.warning("replica is stale (%s): not serving; it restarts to rebuild", why)
                    # Reads check the topic id in their own transaction: from this commit, none answers.
                    self._replica.mark_rebuild(str(why))
                    self._restart(str(why))
                    self._stop.wait()  # alive until stopped: a dead ingester would count as a failure
                    return
                log.warning("replica is stale (%s): discarding it and rebuilding from the topic", why)
                # Reads check the replica's identity in their own transaction (`Replica` reads with a
                # topic id), so none can see the emptied replica even before NOT_SERVING arrives.
                self._replica.invalidate()
            except _TopicGone as why:
                log.warning(
                    "%s: not serving; keeping the replica's data until a topic with a different id exists",
                    why,
                )
                self._on_progress(Snapshot(applied=self._replica.next_offsets()))
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            except Kvs2Error as exc:
                self._report_problem(exc)
                self._on_progress(Snapshot(applied=self._replica.next_offsets(), problem=str(exc)))
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            except Exception:  # a bug: log it loudly, keep the process honest (NOT_SERVING), retry
                log.exception("ingester failed unexpectedly; retrying")
                self._on_progress(Snapshot(applied=self._replica.next_offsets()))
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _report_problem(self, problem: Kvs2Error) -> None:
        if self._problem is None or str(problem) != str(self._problem):
            log.warning("replica cannot follow topic %r yet: %s", self._topic, problem)
        self._problem = problem

    def _recovered(self, proven: type[Kvs2Error]) -> None:
        """Say that the recorded problem is over, once an operation of the kind it stopped (`proven`:
        KafkaUnavailable — Kafka answered; StorageFailed — a write transaction committed) succeeded."""
        problem = self._problem
        if problem is None:
            return
        if isinstance(problem, StorageFailed):
            if proven is not StorageFailed:
                return  # Kafka answering says nothing about the disk: wait for a committed write
            log.info(
                "the data directory %s accepts writes again; applying records of topic %r",
                self._replica.path,
                self._topic,
            )
        elif proven is not KafkaUnavailable:
            return
        elif isinstance(problem, TopicNotFound):
            log.info("topic %r exists again; following it", self._topic)
        elif isinstance(problem, KafkaUnavailable):
            log.info("Kafka is reachable again; following topic %r", self._topic)
        else:
            log.info("following topic %r again (it had stopped: %s)", self._topic, problem)
        self._problem = None

    def _identity(self) -> TopicIdentity:
        try:
            return self._admin.describe(self._topic)
        except TopicNotFound:
            if self._create is None:
                raise
            spec = self._create
            created = self._admin.create_topic(
                self._topic,
                spec.partitions,
                spec.replication_factor,
                config={"min.compaction.lag.ms": str(spec.min_compaction_lag_ms)},
            )
            if created:
                log.info(
                    "created topic %r (%d partitions, compacted, min.compaction.lag.ms=%d)",
                    self._topic,
                    spec.partitions,
                    spec.min_compaction_lag_ms,
                )
            return self._admin.describe(self._topic)

    def _session(self) -> None:
        identity = self._identity()
        retention = self._admin.delete_retention_ms(self._topic) / 1000
        building = True
        first = not self._started  # the start-up bootstrap has just judged this store (module docstring)
        current = self._replica.identity()
        if current != identity:
            if current is not None and self._restart is not None and self._may_restart and not first:
                raise _Rebuild(
                    f"topic {self._topic!r} changed from id {current.topic_id} with {current.partitions} "
                    f"partitions to id {identity.topic_id} with {identity.partitions}"
                )
            log.info(
                "building replica of topic %r (id %s, %d partitions) from the beginning",
                identity.topic,
                identity.topic_id,
                identity.partitions,
            )
            self._replica.reset(identity)
        else:
            building = self._guard(identity, retention, first)
        self._started = True
        offsets = self._replica.next_offsets()
        targets = self._admin.end_offsets(self._topic, identity.partitions)
        try:
            self._on_topic_limit(self._admin.max_message_bytes(self._topic))
        except Kvs2Error as exc:
            log.warning("could not read the topic's max.message.bytes: %s", exc)
        # Offsets written after the replica saw a partition's end less than this long ago are younger than
        # the topic's min.compaction.lag.ms, so Kafka has not compacted them: a gap among them is another
        # producer's transaction marker, not a lost change. With Kafka's default (0) every gap counts as
        # compaction (Watch may then answer OUT_OF_RANGE across markers, but never skips a change).
        try:
            lag = self._admin.min_compaction_lag_ms(self._topic) / 1000
        except Kvs2Error as exc:
            log.warning("could not read the topic's min.compaction.lag.ms: %s", exc)
            lag = 0.0
        self._fresh_window = max(0.0, lag - FRESH_MARGIN)
        try:
            self._retention = self._admin.delete_retention_ms(self._topic) / 1000
        except Kvs2Error as exc:
            log.warning("could not read the topic's delete.retention.ms (no guard while running): %s", exc)
            self._retention = None
        self._recovered(KafkaUnavailable)

        reader = self._make_reader()
        # Staleness and lag bounds rest on Kafka's answers, never on the consumer's cache (issue 8).
        probe = EndOffsetProbe(lambda: self._admin.end_offsets_each(self._topic, range(identity.partitions)))
        try:
            reader.assign(identity.partitions, offsets)
            probe.start()
            guard = RunningGuard(
                max(0.0, retention - self._guard_margin),
                self._replica.caught_up_at(),
                exempt_until_serving=building,
            )
            self._follow(reader, identity, offsets, targets, probe, guard)
        except OffsetGone as exc:
            raise _Rebuild(str(exc)) from exc
        finally:
            probe.stop()
            reader.close()

    def _guard(self, identity: TopicIdentity, retention: float, first: bool) -> bool:
        """The resurrection guard (kvs2.guard): rebuild rather than resume a replica whose stored state
        may be missing deletes that compaction dropped while it was behind. Whether it rebuilds (in
        place; after the first session, with a restart hook, by restarting: `_Rebuild`)."""
        reason = stale_reason(self._replica.caught_up_at(), time.time(), retention, self._guard_margin)
        if reason is not None:
            log.warning("replica of topic %r must be rebuilt, not resumed: %s", self._topic, reason)
            COUNTERS.rebuilt(reason)
            if self._restart is not None and self._may_restart and not first:
                raise _Rebuild(reason)
            self._replica.reset(identity)
            return True
        return False

    def _follow(
        self,
        reader: ChangelogReader,
        identity: TopicIdentity,
        offsets: dict[int, int],
        targets: Mapping[int, int],
        probe: EndOffsetProbe,
        guard: RunningGuard,
    ) -> None:
        serving = _caught_up(offsets, targets)
        if serving:
            self._may_restart = True
            log.info("replica is caught up with topic %r: serving", self._topic)

        caught_up_at: dict[int, float] = {}
        clock = CaughtUpClock(self._replica.caught_up_at(), identity.partitions)

        def proven_at(applied: Mapping[int, int]) -> dict[int, float]:
            """Per partition, the wall-clock time of the newest end-offset answer from Kafka that `applied`
            has reached: the guard's clock rests on Kafka's answers, never on the consumer's cached
            watermarks, which freeze while the replica is cut off (issue 8, defect 3)."""
            mono, wall = time.monotonic(), time.time()
            return {p: wall - (mono - at) for p, at in probe.caught_up_since(applied).items()}

        def publish() -> None:
            ends, ends_at = probe.latest()
            # The consumer's cache is often newer under load: take the larger end (more lag, never less).
            watermarks = {**ends}
            for p, high in reader.high_watermarks(identity.partitions).items():
                watermarks[p] = max(high, ends.get(p, high))
            for p, at in probe.caught_up_since(offsets).items():
                caught_up_at[p] = max(at, caught_up_at.get(p, at))
            self._on_progress(
                Snapshot(
                    applied=dict(offsets),
                    serving=serving,
                    high_watermarks=watermarks,
                    partitions=identity.partitions,
                    topic_id=identity.topic_id,
                    caught_up_at=dict(caught_up_at),
                    ends_proven_at=ends_at,
                )
            )

        publish()
        next_check = time.monotonic() + self._identity_check_interval
        verified = time.monotonic()
        next_publish = 0.0
        seen_end: dict[int, tuple[int, float]] = {}  # partition → (end offset, when a fetch reported it)
        since_trim = 0  # records applied since the heap was last trimmed
        while not self._stop.is_set():
            records, eof = reader.read(self._batch_size, timeout=0.2)
            read_at = time.monotonic()
            fresh_from = {p: end for p, (end, at) in seen_end.items() if read_at - at < self._fresh_window}
            for partition, end in eof.items():
                seen_end[partition] = (end, read_at)
            if not records and seen_end:
                # Idle: the consumer's last fetch responses still put each end where its EOF did.
                watermarks = reader.high_watermarks(identity.partitions)
                for partition, (end, _at) in list(seen_end.items()):
                    if watermarks.get(partition) == end:
                        seen_end[partition] = (end, read_at)
            self._admin.serve_logs()
            in_doubt = reader.topic_in_doubt or time.monotonic() - verified > VERIFY_BEFORE_APPLY
            # _Rebuild drops this batch unapplied. Kafka not answering: apply it (it was fetched from the
            # topic an instant ago) and check again at the next batch.
            if records and in_doubt and self._check_identity(identity):
                reader.topic_in_doubt = False
                verified = time.monotonic()
            advanced: dict[int, int] = {}
            skipped: set[int] = set()  # partitions with offsets missing before a record or an end
            for _key, _value, partition, offset, _cond in records:
                if offset != advanced.get(partition, offsets.get(partition, 0)):
                    skipped.add(partition)
                advanced[partition] = offset + 1
            for partition, end in eof.items():
                if end > max(offsets.get(partition, 0), advanced.get(partition, 0)):
                    skipped.add(partition)
                    advanced[partition] = end
            guard.proven(probe.caught_up_since(offsets))
            reason = guard.check(
                {p for p in skipped if offsets.get(p, 0) < fresh_from.get(p, _NEVER)}, read_at, serving
            )
            if reason is not None:  # this batch is dropped unapplied: the replica is rebuilt
                COUNTERS.rebuilt(reason)
                raise _Rebuild(reason)
            if records or advanced:
                stamp = clock.observe_proven(proven_at(offsets | advanced))
                applied = self._replica.apply(records, advanced, fresh_from, caught_up_at=stamp)
                self._recovered(StorageFailed)
                metrics.record_applied(records)
                if applied.outcomes:
                    self._on_outcomes(applied.outcomes)
                offsets.update(advanced)
                since_trim += len(records)
                if not serving and _caught_up(offsets, targets):
                    serving = True
                    self._may_restart = True
                    log.info("replica is caught up with topic %r: serving", self._topic)
                    release_freed_memory()
                    since_trim = 0
                publish()
                next_publish = time.monotonic() + 0.5
            elif time.monotonic() >= next_publish:
                if since_trim >= TRIM_AFTER_RECORDS:  # idle after a burst
                    release_freed_memory()
                    since_trim = 0
                publish()  # idle: refresh Kafka's end offsets as the consumer sees them (staleness bounds)
                stamp = clock.observe_proven(proven_at(offsets), REFRESH_SECONDS)
                if stamp is not None:  # every offset is stored already: this proves the stored state
                    self._replica.mark_caught_up(stamp)
                    self._recovered(StorageFailed)
                next_publish = time.monotonic() + 0.5
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self._identity_check_interval
                if self._check_identity(identity):
                    verified = time.monotonic()

    def _check_identity(self, identity: TopicIdentity) -> bool:
        """Raise _Rebuild if the topic is no longer the one the replica was built from.

        Returns whether the check could be made (False: Kafka did not answer; the replica keeps serving
        what it has, and librdkafka reconnects by itself).
        """
        try:
            now = self._admin.describe(self._topic, timeout=5.0)
        except TopicNotFound as exc:
            raise _TopicGone(f"topic {self._topic!r} was deleted or is not visible") from exc
        except Kvs2Error:
            return False
        if now != identity:
            raise _Rebuild(
                f"topic {self._topic!r} changed from id {identity.topic_id} with {identity.partitions} "
                f"partitions to id {now.topic_id} with {now.partitions}"
            )
        return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to do
        return None
    return trim


def release_freed_memory() -> None:
    """Give the memory freed during catch-up back to the operating system (glibc's `malloc_trim`).

    Why: replay allocates and frees hundreds of megabytes (librdkafka's fetch buffers in its own threads,
    LMDB's dirty pages, record objects), and glibc keeps what was freed in its arenas, so a caught-up
    replica went on holding it as anonymous memory (measured in bench/RESULTS.md, "Write and replay
    side": 138 MB → 30 MB for 300k records in-process). Costs a few milliseconds; never while catching up.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_NEVER = 1 << 62  # an offset no partition reaches: no transaction-marker window


class RunningGuard:
    """The resurrection guard while the replica runs (kvs2.guard covers a restart).

    Why: a replica cut off from Kafka, paused or starved for longer than `delete.retention.ms` resumes
    from its position without a restart; a tombstone that was written, cleaned and dropped meanwhile is
    never read, and the key it deleted lives on in this replica (reads answer it, compare-and-sets are
    judged against it; found by the torture run). Every record at or past a partition's applied offset
    was written after the newest end-offset answer from Kafka that the offset had reached (`proven`),
    so its tombstones survive until at least that answer's time + delete.retention.ms. A gap in the
    offsets read (records compacted away) found later than that, less the guard's margin, may hide a
    dropped tombstone: the replica must rebuild. Gaps found in time, and records read without a gap,
    are safe. A build from the beginning is exempt until it first catches up, as at start (it counts
    from when it started; the guard's docstring).
    """

    def __init__(self, window: float, stored_wall: float | None, *, exempt_until_serving: bool) -> None:
        self._window = window
        start = time.monotonic() - (time.time() - stored_wall) if stored_wall is not None else float("-inf")
        self._start = start
        self._at: dict[int, float] = {}
        self._exempt = exempt_until_serving

    def proven(self, at: Mapping[int, float]) -> None:
        """Per partition, monotonic send times of end-offset answers the applied offsets reached."""
        for p, t in at.items():
            if t > self._at.get(p, self._start):
                self._at[p] = t

    def check(self, gaps: set[int], read_at: float, serving: bool) -> str | None:
        """Why the replica must rebuild before applying a batch with gaps in `gaps`, or None."""
        if self._exempt and not serving:
            return None
        self._exempt = False
        for p in sorted(gaps):
            behind = read_at - self._at.get(p, self._start)
            if behind > self._window:
                return (
                    f"partition {p} skips compacted offsets {behind:.1f}s after the replica was last "
                    f"proven caught up on it, longer than the topic's delete.retention.ms less the guard's "
                    f"margin ({self._window:.1f}s): compaction may have dropped tombstones it never read"
                )
        return None


def _caught_up(offsets: Mapping[int, int], targets: Mapping[int, int]) -> bool:
    return all(offsets.get(p, 0) >= end for p, end in targets.items())
