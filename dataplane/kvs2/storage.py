"""The local replica: one LMDB environment holding the data and the Kafka offsets it reflects.

Why one environment and one write transaction per batch: the data and the next offset of every
partition it came from commit together, so after a crash the replica resumes exactly where its data
ends — no record is applied twice and none is skipped.

Layout (named databases):
  data    key → 8-byte big-endian revision ‖ value
  offsets 4-byte big-endian partition → 8-byte big-endian next offset to read
  changes partition ‖ offset (4+8 bytes) → op (1 byte) ‖ key length (4 bytes) ‖ key ‖ value:
          the recent change history that Watch serves, trimmed to `history` offsets per partition
  history partition → the first offset from which `changes` is complete (a gap in the offsets —
          compaction — or trimming moves it forward)
  cond    (dupsort) user key → request id of each applied conditional record still needed for replay
  garbage request id → side key: conditional records no longer needed (failed, or superseded by a
          plain write), waiting for a tombstone that lets Kafka's compaction drop them
  garbage_keys (dupsort) user key → request id of each of its `garbage` records
  urgent  request id → b"": garbage a plain tombstone of its key found untombstoned (see
          `kvs2.conditional`): it must be tombstoned before Kafka may drop that plain tombstone
  meta    b"topic", b"topic_id", b"partitions", b"format", b"skipped", b"caught_up_at" (wall-clock
          seconds when the replica last proved itself caught up; kvs2.guard), b"rebuild" (why a running
          replica decided it must be rebuilt; kvs2.restart)
A key's revision is the Kafka offset of its last write plus one, so 0 never names a write and can
stand for "absent" (what compare-and-set's "must not exist" needs).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lmdb

from kvs2.diskspace import storage_failure
from kvs2.errors import Unavailable

log = logging.getLogger(__name__)

FORMAT_VERSION = b"2"
_REV = struct.Struct(">Q")
_PART = struct.Struct(">I")
_OFFSET = struct.Struct(">q")
_CHANGE_KEY = struct.Struct(">Iq")
_CHANGE_HEAD = struct.Struct(">BI")
_PUT, _DELETE = 0, 1
DEFAULT_HISTORY = 100_000
_NEVER = 1 << 62
# Kafka keys of conditional records: SIDE_MARKER ‖ 16-byte request id ‖ user key. Unique per request,
# so compaction never lets one conditional record hide another, or a plain record (kvs2.conditional).
SIDE_MARKER = b"\x00kvs2:if\x00"
REQUEST_ID_BYTES = 16


def side_key(request_id: bytes, key: bytes) -> bytes:
    return SIDE_MARKER + request_id + key


def parse_side_key(raw: bytes) -> tuple[bytes, bytes] | None:
    """(request id, user key) of a conditional record's Kafka key, or None for a plain key."""
    if not raw.startswith(SIDE_MARKER):
        return None
    head = len(SIDE_MARKER)
    return raw[head : head + REQUEST_ID_BYTES], raw[head + REQUEST_ID_BYTES :]


class Entry(NamedTuple):
    """A key's value and revision. A NamedTuple rather than a frozen dataclass: every read builds one,
    and `tuple.__new__` (what `_decode` uses) costs a quarter of a frozen dataclass's `__init__`."""

    value: bytes
    revision: int


class Conditional(NamedTuple):
    """What makes a record conditional (compare-and-set); see `kvs2.conditional` for the protocol."""

    request_id: bytes
    expected_revision: int  # 0: the key must not exist
    delete: bool
    tombstone: bool = False  # a clean-up tombstone for `side_key`: no effect on data


class Record(NamedTuple):
    """One consumed Kafka record. `value is None` is a tombstone (a delete).

    A NamedTuple rather than a dataclass: replay builds one per record, and this is twice as cheap.
    """

    key: bytes
    value: bytes | None
    partition: int
    offset: int
    conditional: Conditional | None = None


class Outcome(NamedTuple):
    """How a conditional record was applied: by every replica, identically."""

    request_id: bytes
    applied: bool
    revision: int  # the key's revision after the record (applied) or at the time (not applied)
    partition: int
    offset: int


class Applied(NamedTuple):
    skipped: int
    outcomes: list[Outcome]


@dataclass(frozen=True, slots=True)
class Change:
    """One applied record, as Watch reports it. `value is None` is a delete."""

    partition: int
    offset: int
    key: bytes
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Page:
    """A Range page and the next offsets it reflects, read in one transaction."""

    items: list[tuple[bytes, Entry | None]]
    next_key: bytes | None
    applied: dict[int, int]


@dataclass(frozen=True, slots=True)
class TopicIdentity:
    """What the replica was built from. A different id or partition count makes it stale."""

    topic: str
    topic_id: str
    partitions: int


class _ResizeGate:
    """Lets many readers in, and a map resize in only when no read transaction is open in this process.

    LMDB forbids `mdb_env_set_mapsize` while any transaction of the process is active. Why not a lock
    per read: a read is ~1 µs of LMDB, and a Condition taken twice per read cost ten times that
    (bench/readpath.py). The fast path is two list operations and one attribute read, each atomic
    under the GIL:

      reader  `_active.append()`, then reads `_closed`    (leaves with `_active.pop()`)
      resizer sets `_closed`, then waits for `_active` to empty

    Whichever of the two writes comes second, its thread sees the other's: a reader that finds
    `_closed` False is counted before the resizer looks, so the resizer waits for it; a reader that
    finds it True steps back out and waits on the Condition (the slow path) until the resize is done.
    A reader leaving while `_closed` is set wakes the resizer. Only the slow paths take the Condition.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: list[None] = []  # one item per read transaction open in this process
        self._closed = False  # a resize (or close) wants the environment to itself

    def enter(self) -> None:
        """Count a reader in; waits only while a resize is in progress."""
        active = self._active
        active.append(None)
        while self._closed:
            active.pop()
            self._wake_resizer()
            with self._cond:
                while self._closed:
                    self._cond.wait()
            active.append(None)

    def leave(self) -> None:
        self._active.pop()
        if self._closed:
            self._wake_resizer()

    def _wake_resizer(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @contextmanager
    def reading(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._closed:  # one resize at a time (the ingester's, or a reader adopting a size)
                self._cond.wait()
            self._closed = True
            while self._active:
                # A reader leaving wakes us; the timeout only bounds a wake-up lost to a reader that
                # read `_closed` just before we set it (it is then already counted out, see above).
                self._cond.wait(0.05)
        try:
            yield
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()


class Replica:
    """The LMDB environment. Exactly one thread (the ingester) writes; any thread reads."""

    def __init__(
        self,
        path: Path,
        *,
        map_size: int = 1 << 34,
        sync: bool = True,
        history: int = DEFAULT_HISTORY,
        history_bytes: int = 0,
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.history = history
        # Bound on the change history's size in bytes (0: none): values are stored twice (data and
        # history), so a write-heavy store must not fill its disk with history.
        self.history_bytes = history_bytes
        self._env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=10,
            subdir=True,
            sync=sync,
            metasync=sync,
            max_readers=512,
        )
        self._data = self._env.open_db(b"data")
        self._offsets = self._env.open_db(b"offsets")
        self._meta = self._env.open_db(b"meta")
        self._changes = self._env.open_db(b"changes")
        self._history = self._env.open_db(b"history")
        self._cond = self._env.open_db(b"cond", dupsort=True)
        self._garbage = self._env.open_db(b"garbage")
        self._garbage_keys = self._env.open_db(b"garbage_keys", dupsort=True)
        self._urgent = self._env.open_db(b"urgent")
        self._gate = _ResizeGate()
        self._topic_id_cache: tuple[str, bytes] = ("", b"")
        self.max_key_bytes: int = self._env.max_key_size()
        # User keys with applied conditional records still needed for replay (the `cond` database),
        # kept in memory so that a plain write checks it without an LMDB look-up.
        self._has_cond = self._load_cond_keys()

    # ----- reads -------------------------------------------------------------------------------
    def _begin(self, db: Any) -> lmdb.Transaction:
        """A read transaction (values as bytes), counted in the resize gate: the caller must end it
        with `_end`. If another process (a `--workers` sibling's ingester) grew the map, adopt the new
        size first: LMDB refuses transactions until this process does.

        Why not a context manager: the hot reads (get, multi_get) pay for every Python call; this
        pair with a try/finally costs about a third of a generator context manager.
        """
        gate = self._gate
        for attempt in range(2):
            gate.enter()
            try:
                return self._env.begin(db=db, buffers=False)
            except lmdb.MapResizedError:
                gate.leave()
                if attempt:
                    raise
            except BaseException:
                gate.leave()
                raise
            with gate.exclusive():  # no transaction of this process is open now
                self._env.set_mapsize(0)
        raise AssertionError("unreachable")

    def _end(self, txn: lmdb.Transaction) -> None:
        try:
            txn.abort()  # read-only: nothing to commit; py-lmdb keeps the reader slot for reuse
        finally:
            self._gate.leave()

    @contextmanager
    def _reading(self, db: Any) -> Iterator[Any]:
        """`_begin`/`_end` as a context manager, for the reads that are not on a hot path."""
        txn = self._begin(db)
        try:
            yield txn
        finally:
            self._end(txn)

    def _check_built_from(self, txn: lmdb.Transaction, topic_id: str | None) -> None:
        """Refuse a read whose snapshot is not built from `topic_id` (None: no check).

        Why in the read's own transaction: the ingester discards a stale replica right after announcing
        NOT_SERVING, and a read that passed the serving check an instant earlier must not see the emptied
        (or rebuilding) replica as data.
        """
        if topic_id is None:
            return
        raw = txn.get(b"topic_id", db=self._meta)
        if raw is None or raw != self._topic_id_bytes(topic_id):
            raise Unavailable("this replica is rebuilding from its topic and not serving reads yet")

    def _topic_id_bytes(self, topic_id: str) -> bytes:
        """`topic_id` encoded, cached: every read compares it with the stored id."""
        cached = self._topic_id_cache
        if cached[0] != topic_id:
            cached = self._topic_id_cache = (topic_id, topic_id.encode())
        return cached[1]

    def get(self, key: bytes, topic_id: str | None = None) -> Entry | None:
        txn = self._begin(self._data)
        try:
            if topic_id is not None:
                self._check_built_from(txn, topic_id)
            raw = txn.get(key)
        finally:
            self._end(txn)
        return None if raw is None else _new_entry(Entry, (raw[8:], _unpack_rev(raw)[0]))

    def multi_get(self, keys: Sequence[bytes], topic_id: str | None = None) -> list[Entry | None]:
        """All keys from one read transaction: one consistent snapshot of the replica."""
        txn = self._begin(self._data)
        try:
            if topic_id is not None:
                self._check_built_from(txn, topic_id)
            get = txn.get
            raws = [get(k) for k in keys]
        finally:
            self._end(txn)
        new, unpack = _new_entry, _unpack_rev
        return [None if raw is None else new(Entry, (raw[8:], unpack(raw)[0])) for raw in raws]

    def next_offsets(self) -> dict[int, int]:
        with self._reading(self._offsets) as txn:
            return self._offsets_in(txn)

    def _offsets_in(self, txn: lmdb.Transaction) -> dict[int, int]:
        return {_PART.unpack(k)[0]: _OFFSET.unpack(v)[0] for k, v in txn.cursor(db=self._offsets).iternext()}

    def _applied_in(self, txn: lmdb.Transaction) -> dict[int, int]:
        """Next offsets of EVERY partition of the topic (0 for one nothing was applied from yet).

        Why every one: a Watch from these positions starts unlisted partitions at its own current
        position, so a partition left out would lose the writes between the read and the Watch.
        """
        applied = self._offsets_in(txn)
        raw = txn.get(b"partitions", db=self._meta)
        for p in range(0 if raw is None else int(bytes(raw))):
            applied.setdefault(p, 0)
        return applied

    def scan(
        self,
        start: bytes,
        end: bytes | None,
        limit: int,
        *,
        keys_only: bool = False,
        topic_id: str | None = None,
    ) -> Page:
        """Up to `limit` keys in [start, end) (end None: to the last key) and the offsets they reflect."""
        items: list[tuple[bytes, Entry | None]] = []
        next_key: bytes | None = None
        with self._reading(self._data) as txn:
            self._check_built_from(txn, topic_id)
            cursor = txn.cursor()
            found = cursor.set_range(start) if start else cursor.first()
            while found:
                key = cursor.key()
                if end is not None and key >= end:
                    break
                if len(items) == limit:
                    next_key = key
                    break
                items.append((key, None if keys_only else _decode(cursor.value())))
                found = cursor.next()
            applied = self._applied_in(txn)
        return Page(items, next_key, applied)

    def count(
        self, start: bytes, end: bytes | None, topic_id: str | None = None
    ) -> tuple[int, dict[int, int]]:
        """How many keys are in [start, end), and the offsets that count reflects."""
        n = 0
        with self._reading(self._data) as txn:
            self._check_built_from(txn, topic_id)
            cursor = txn.cursor()
            found = cursor.set_range(start) if start else cursor.first()
            while found:
                if end is not None and cursor.key() >= end:
                    break
                n += 1
                found = cursor.next()
            applied = self._applied_in(txn)
        return n, applied

    def history_start(self) -> dict[int, int]:
        """Per partition, the first offset from which the change history is complete."""
        with self._reading(self._history) as txn:
            return {_PART.unpack(k)[0]: _OFFSET.unpack(v)[0] for k, v in txn.cursor().iternext()}

    def changes(self, partition: int, since: int, until: int, limit: int = 10_000) -> list[Change]:
        """Changes of `partition` with since <= offset < until, in offset order (at most `limit`)."""
        return self.changes_since(partition, since, until, limit)[1]

    def changes_since(
        self, partition: int, since: int, until: int, limit: int = 10_000
    ) -> tuple[int, list[Change]]:
        """The partition's history start and its changes since <= offset < until, from ONE snapshot.

        Why one: the ingester trims history concurrently; a check of the start in one transaction and a
        read in another could let a trim in between skip changes unnoticed.
        """
        out: list[Change] = []
        with self._reading(self._changes) as txn:
            raw_first = txn.get(_PART.pack(partition), db=self._history)
            first = 0 if raw_first is None else _OFFSET.unpack(raw_first)[0]
            cursor = txn.cursor()
            found = cursor.set_range(_CHANGE_KEY.pack(partition, since))
            while found and len(out) < limit:
                p, offset = _CHANGE_KEY.unpack(cursor.key())
                if p != partition or offset >= until:
                    break
                raw = cursor.value()
                op, key_len = _CHANGE_HEAD.unpack_from(raw)
                head = _CHANGE_HEAD.size
                key = raw[head : head + key_len]
                value = None if op == _DELETE else raw[head + key_len :]
                out.append(Change(p, offset, key, value))
                found = cursor.next()
        return first, out

    def identity(self) -> TopicIdentity | None:
        with self._reading(self._meta) as txn:
            topic = txn.get(b"topic")
            topic_id = txn.get(b"topic_id")
            partitions = txn.get(b"partitions")
            fmt = txn.get(b"format")
        if topic is None or topic_id is None or partitions is None or fmt != FORMAT_VERSION:
            return None
        return TopicIdentity(bytes(topic).decode(), bytes(topic_id).decode(), int(bytes(partitions)))

    def caught_up_at(self) -> float | None:
        """Wall-clock time the replica last proved itself caught up (kvs2.guard), None if unrecorded."""
        with self._reading(self._meta) as txn:
            raw = txn.get(b"caught_up_at")
        return None if raw is None else float(bytes(raw))

    def mark_caught_up(self, at: float) -> None:
        """Record that the replica was caught up at wall-clock time `at` (an idle replica's proof)."""
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    txn.put(b"caught_up_at", repr(at).encode(), db=self._meta)
                return
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                raise storage_failure(self.path, exc) from exc

    def copy_to(self, directory: Path) -> dict[int, int]:
        """Write a compacted, consistent copy of the environment (`data.mdb`) into `directory`; return
        the next offsets it reflects. One read transaction: writers carry on meanwhile (kvs2.snapshot)."""
        with self._reading(self._offsets) as txn:
            offsets = self._offsets_in(txn)
            self._env.copy(str(directory), compact=True, txn=txn)
        return offsets

    def copy_to_fd(self, fd: int, on_offsets: Callable[[dict[int, int]], None]) -> None:
        """Write a compacted, consistent copy of the environment (`data.mdb`'s bytes) to `fd` — a pipe
        that kvs2.snapshot streams while LMDB writes it; `on_offsets` gets the next offsets the copy
        reflects before its first byte. One read transaction, held until the copy is written."""
        with self._reading(self._offsets) as txn:
            on_offsets(self._offsets_in(txn))
            self._env.copyfd(fd, compact=True, txn=txn)

    def skipped_records(self) -> int:
        with self._reading(self._meta) as txn:
            raw = txn.get(b"skipped")
        return 0 if raw is None else int(bytes(raw))

    def stats(self) -> dict[str, int]:
        """LMDB's numbers for metrics: map size, page size, pages in use, keys in the data database."""
        with self._reading(self._data) as txn:
            entries = int(txn.stat(self._data)["entries"])
            info = self._env.info()
            page_size = int(self._env.stat()["psize"])
        return {
            "map_size": int(info["map_size"]),
            "page_size": page_size,
            "used_pages": int(info["last_pgno"]) + 1,
            "entries": entries,
        }

    def items(self) -> list[tuple[bytes, Entry]]:
        """Every key in order (for tests and tooling; not a serving path)."""
        with self._reading(self._data) as txn:
            return [(bytes(k), _decode(v)) for k, v in txn.cursor().iternext()]

    # ----- writes (the ingester only) -------------------------------------------------------------
    def invalidate(self) -> None:
        """Empty the replica and forget what it was built from: it no longer reflects any topic."""
        with self._env.begin(write=True) as txn:
            self._drop_all(txn)

    def _drop_all(self, txn: lmdb.Transaction) -> None:
        for db in (
            self._data,
            self._offsets,
            self._meta,
            self._changes,
            self._history,
            self._cond,
            self._garbage,
            self._garbage_keys,
            self._urgent,
        ):
            txn.drop(db, delete=False)
        self._has_cond = set()

    def mark_rebuild(self, reason: str) -> None:
        """Mark the store as one that must be rebuilt, and why (kvs2.restart): the next start asks peers
        for a snapshot (kvs2.bootstrap.why_build reads the mark), else replays the topic.

        The topic id goes in the same transaction, so that from its commit on no read of any process
        sharing the environment (`--workers`) answers from this store: reads check the id in their own
        transaction. The data stays until a snapshot replaces the file or a replay resets it (dropping
        millions of keys first would only delay the restart).
        """
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    txn.delete(b"topic_id", db=self._meta)
                    txn.put(b"rebuild", reason.encode(), db=self._meta)
                return
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                raise storage_failure(self.path, exc) from exc

    def rebuild_reason(self) -> str | None:
        """Why a running replica marked this store to be rebuilt (`mark_rebuild`), None if unmarked."""
        with self._reading(self._meta) as txn:
            raw = txn.get(b"rebuild")
        return None if raw is None else bytes(raw).decode(errors="replace")

    def reset(self, identity: TopicIdentity) -> None:
        """Empty the replica and record what it is now built from, in one transaction."""
        with self._env.begin(write=True) as txn:
            self._drop_all(txn)
            txn.put(b"topic", identity.topic.encode(), db=self._meta)
            txn.put(b"topic_id", identity.topic_id.encode(), db=self._meta)
            txn.put(b"partitions", str(identity.partitions).encode(), db=self._meta)
            txn.put(b"format", FORMAT_VERSION, db=self._meta)
            # A build from the beginning is safe from the resurrection guard's point of view from now.
            txn.put(b"caught_up_at", repr(time.time()).encode(), db=self._meta)

    def apply(
        self,
        records: Iterable[Record],
        next_offsets: Mapping[int, int],
        fresh_from: Mapping[int, int] | None = None,
        *,
        caught_up_at: float | None = None,
    ) -> Applied:
        """Apply records in order and store the partitions' next offsets, all in ONE transaction.

        Records whose key cannot be stored (empty, or longer than LMDB's key limit — only producers
        other than kvs2 can write those) are skipped, counted in `meta/skipped` and logged, never
        silently dropped. Conditional records are evaluated against the state they meet; their
        outcomes are returned so the replica that accepted one can answer its client.

        `fresh_from[p]`: offsets of partition p from there on were written after the replica last saw the
        partition's end, an instant ago, too recently for Kafka's cleaner to have compacted them; a gap
        among them is a transaction marker or an aborted transaction of another producer, not a lost
        change, and does not cut the change history.
        `caught_up_at` (wall clock), when given, is stored with the offsets (kvs2.guard).
        """
        records = list(records)
        has_cond = set(self._has_cond)
        while True:
            try:
                return self._apply_once(records, next_offsets, fresh_from or {}, caught_up_at)
            except lmdb.MapFullError:
                self._has_cond = has_cond  # the aborted transaction's changes to it are void
                self._grow()
            except lmdb.Error as exc:  # nothing was committed: the stored state is the last consistent one
                self._has_cond = has_cond
                raise storage_failure(self.path, exc) from exc

    def _apply_once(
        self,
        records: Sequence[Record],
        next_offsets: Mapping[int, int],
        fresh_from: Mapping[int, int],
        caught_up_at: float | None = None,
    ) -> Applied:
        skipped = 0
        outcomes: list[Outcome] = []
        max_key = self.max_key_bytes
        has_cond = self._has_cond
        with self._env.begin(write=True) as txn:
            data = txn.cursor(db=self._data)
            changes = txn.cursor(db=self._changes)
            expected = self._offsets_in(txn)
            history = self._history_in(txn)
            for rec in records:
                gap_from = expected.get(rec.partition, rec.offset)
                if rec.offset != gap_from and gap_from < fresh_from.get(rec.partition, _NEVER):
                    # A gap: records were compacted away before we read them, so a watcher resuming
                    # from before here would miss changes. History is complete only from here on.
                    history[rec.partition] = rec.offset
                elif rec.partition not in expected and rec.partition not in history:
                    history[rec.partition] = rec.offset
                expected[rec.partition] = rec.offset + 1
                key = rec.key
                if not key or len(key) > max_key:
                    skipped += 1
                    log.warning(
                        "skipping record at partition %d offset %d: its key is %d bytes "
                        "(keys must be 1..%d bytes)",
                        rec.partition,
                        rec.offset,
                        len(key),
                        max_key,
                    )
                    continue
                value = rec.value
                if rec.conditional is not None:
                    cond = rec.conditional
                    if cond.tombstone:
                        self._forget_cond(txn, key, cond.request_id)
                        continue
                    raw = data.get(key)
                    current = 0 if raw is None else _REV.unpack_from(raw)[0]
                    if current != cond.expected_revision:
                        outcomes.append(Outcome(cond.request_id, False, current, rec.partition, rec.offset))
                        self._put_garbage(txn, key, cond.request_id)
                        continue
                    after = 0 if cond.delete else rec.offset + 1
                    outcomes.append(Outcome(cond.request_id, True, after, rec.partition, rec.offset))
                    txn.put(key, cond.request_id, db=self._cond)
                    has_cond.add(key)
                    value = None if cond.delete else value
                else:
                    if key in has_cond:
                        # A plain write decides the key's state by itself: earlier conditional records of
                        # this key are no longer needed to replay it.
                        self._collect_cond(txn, key)
                        has_cond.discard(key)
                    if value is None:
                        # Conditional records of the key that were not tombstoned before this plain
                        # tombstone (kvs2.conditional, "the invariant") must be, before Kafka may drop it.
                        self._mark_urgent(txn, key)
                change_key = _CHANGE_KEY.pack(rec.partition, rec.offset)
                if value is None:
                    if data.set_key(key):
                        data.delete()
                    changes.put(change_key, _CHANGE_HEAD.pack(_DELETE, len(key)) + key)
                else:
                    data.put(key, _REV.pack(rec.offset + 1) + value)
                    changes.put(change_key, _CHANGE_HEAD.pack(_PUT, len(key)) + key + value)
            for partition, offset in next_offsets.items():
                txn.put(_PART.pack(partition), _OFFSET.pack(offset), db=self._offsets)
                self._trim(changes, history, partition, offset)
            if self.history_bytes:
                self._trim_bytes(txn, changes, history, {**expected, **next_offsets})
            for partition, offset in history.items():
                txn.put(_PART.pack(partition), _OFFSET.pack(offset), db=self._history)
            if skipped:
                raw = txn.get(b"skipped", db=self._meta)
                total = (0 if raw is None else int(bytes(raw))) + skipped
                txn.put(b"skipped", str(total).encode(), db=self._meta)
            if caught_up_at is not None:
                txn.put(b"caught_up_at", repr(caught_up_at).encode(), db=self._meta)
        return Applied(skipped, outcomes)

    def _collect_cond(self, txn: lmdb.Transaction, key: bytes) -> None:
        cursor = txn.cursor(db=self._cond)
        if cursor.set_key(key):
            for request_id in cursor.iternext_dup():
                self._put_garbage(txn, key, bytes(request_id))
            cursor.set_key(key)
            cursor.delete(dupdata=True)

    def _put_garbage(self, txn: lmdb.Transaction, key: bytes, request_id: bytes) -> None:
        txn.put(request_id, side_key(request_id, key), db=self._garbage)
        txn.put(key, request_id, db=self._garbage_keys)

    def _mark_urgent(self, txn: lmdb.Transaction, key: bytes) -> None:
        cursor = txn.cursor(db=self._garbage_keys)
        if cursor.set_key(key):
            for request_id in cursor.iternext_dup():
                txn.put(bytes(request_id), b"", db=self._urgent)

    def _forget_cond(self, txn: lmdb.Transaction, key: bytes, request_id: bytes) -> None:
        """A clean-up tombstone: the record is gone for replay, whether it was garbage or still needed.

        A record still needed is tombstoned only by a plain Delete of its key, just before the Delete's
        own tombstone (`cleanup_before_delete`), which decides the key's state by itself.
        """
        txn.delete(request_id, db=self._garbage)
        txn.delete(request_id, db=self._urgent)
        txn.delete(key, request_id, db=self._garbage_keys)
        removed = key in self._has_cond and txn.delete(key, request_id, db=self._cond)
        if removed and txn.get(key, db=self._cond) is None:
            self._has_cond.discard(key)

    def cleanup_before_delete(self, key: bytes) -> list[bytes]:
        """Kafka keys of every conditional record of `key` this replica knows replay could still meet:
        the ones a plain Delete tombstones before its own tombstone (see `kvs2.conditional`)."""
        with self._reading(self._cond) as txn:
            request_ids: list[bytes] = []
            for db in (self._cond, self._garbage_keys):
                cursor = txn.cursor(db=db)
                if cursor.set_key(key):
                    request_ids += [bytes(r) for r in cursor.iternext_dup()]
        return [side_key(r, key) for r in dict.fromkeys(request_ids)]

    def urgent_garbage(self, limit: int = 1000) -> list[bytes]:
        """Kafka keys of garbage a plain tombstone met untombstoned: to tombstone first, without delay."""
        with self._reading(self._urgent) as txn:
            out: list[bytes] = []
            for request_id in txn.cursor().iternext(keys=True, values=False):
                side = txn.get(request_id, db=self._garbage)
                if side is not None:
                    out.append(bytes(side))
                if len(out) == limit:
                    break
            return out

    def _load_cond_keys(self) -> set[bytes]:
        with self._env.begin(db=self._cond, buffers=False) as txn:
            return {bytes(k) for k in txn.cursor().iternext_nodup(keys=True, values=False)}

    def garbage(self, limit: int = 1000) -> list[bytes]:
        """Kafka keys of conditional records that can be tombstoned (see `kvs2.conditional`)."""
        with self._reading(self._garbage) as txn:
            out: list[bytes] = []
            for value in txn.cursor().iternext(keys=False, values=True):
                out.append(bytes(value))
                if len(out) == limit:
                    break
            return out

    def _history_in(self, txn: lmdb.Transaction) -> dict[int, int]:
        return {_PART.unpack(k)[0]: _OFFSET.unpack(v)[0] for k, v in txn.cursor(db=self._history).iternext()}

    def _trim(self, changes: lmdb.Cursor, history: dict[int, int], partition: int, next_offset: int) -> None:
        """Keep the last `self.history` offsets of the partition's change history."""
        keep_from = next_offset - self.history
        if keep_from <= history.get(partition, 0):
            return
        changes.set_range(_CHANGE_KEY.pack(partition, 0))
        while key := changes.key():  # empty once the cursor runs off the end
            p, offset = _CHANGE_KEY.unpack(key)
            if p != partition or offset >= keep_from:
                break
            changes.delete()  # moves to the next entry
        history[partition] = keep_from

    def _trim_bytes(
        self, txn: lmdb.Transaction, changes: lmdb.Cursor, history: dict[int, int], ends: Mapping[int, int]
    ) -> None:
        """Drop the oldest changes of every partition, a slice at a time, until the history's pages fit
        in `history_bytes`; each partition's history then starts at its first change kept."""
        while _db_bytes(txn.stat(self._changes)) > self.history_bytes:
            removed = False
            for partition in sorted(ends):
                n = 0
                changes.set_range(_CHANGE_KEY.pack(partition, 0))
                while n < 64 and (key := changes.key()):
                    if _CHANGE_KEY.unpack(key)[0] != partition:
                        break
                    changes.delete()  # moves to the next entry
                    n += 1
                if not n:
                    continue
                removed = True
                key = changes.key()
                first = _CHANGE_KEY.unpack(key) if key else None
                keep_from = first[1] if first is not None and first[0] == partition else ends[partition]
                history[partition] = max(history.get(partition, 0), keep_from)
            if not removed:
                return

    def _grow(self) -> None:
        with self._gate.exclusive():
            new_size = self._env.info()["map_size"] * 2
            log.info("LMDB map full: growing it to %d bytes", new_size)
            self._env.set_mapsize(new_size)

    def close(self) -> None:
        with self._gate.exclusive():
            self._env.close()


def _db_bytes(stat: Any) -> int:
    return int(stat["psize"]) * (
        int(stat["branch_pages"]) + int(stat["leaf_pages"]) + int(stat["overflow_pages"])
    )


_new_entry = tuple.__new__  # Entry(value, revision) without NamedTuple's Python-level __new__
_unpack_rev = _REV.unpack_from


def _decode(raw: bytes) -> Entry:
    return _new_entry(Entry, (raw[8:], _unpack_rev(raw)[0]))
