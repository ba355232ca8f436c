"""The local replica: one LMDB environment holding the data and the Kafka offsets it reflects.

Why one environment and one write transaction per batch: the data and the next offset of every
partition it came from commit together, so after a crash the replica resumes exactly where its data
ends — no record is applied twice and none is skipped.

Layout (named databases):
  data    key → 8-byte big-endian revision ‖ value
  offsets 4-byte big-endian partition → 8-byte big-endian next offset to read
  meta    b"topic", b"topic_id", b"partitions", b"format", b"skipped"
A key's revision is the Kafka offset of its last write plus one, so 0 never names a write and can
stand for "absent" (what compare-and-set's "must not exist" needs).
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lmdb

log = logging.getLogger(__name__)

FORMAT_VERSION = b"1"
_REV = struct.Struct(">Q")
_PART = struct.Struct(">I")
_OFFSET = struct.Struct(">q")


@dataclass(frozen=True, slots=True)
class Entry:
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record. `value is None` is a tombstone (a delete)."""

    key: bytes
    value: bytes | None
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class TopicIdentity:
    """What the replica was built from. A different id or partition count makes it stale."""

    topic: str
    topic_id: str
    partitions: int


class _ResizeGate:
    """Lets many readers in, and a map resize in only when no transaction is open in this process.

    LMDB forbids `mdb_env_set_mapsize` while any transaction of the process is active.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class Replica:
    """The LMDB environment. Exactly one thread (the ingester) writes; any thread reads."""

    def __init__(self, path: Path, *, map_size: int = 1 << 34, sync: bool = True) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=4,
            subdir=True,
            sync=sync,
            metasync=sync,
            max_readers=512,
        )
        self._data = self._env.open_db(b"data")
        self._offsets = self._env.open_db(b"offsets")
        self._meta = self._env.open_db(b"meta")
        self._gate = _ResizeGate()
        self.max_key_bytes: int = self._env.max_key_size()

    # ----- reads -------------------------------------------------------------------------------
    def get(self, key: bytes) -> Entry | None:
        with self._gate.reading(), self._env.begin(db=self._data, buffers=False) as txn:
            raw = txn.get(key)
        return None if raw is None else _decode(raw)

    def multi_get(self, keys: Sequence[bytes]) -> list[Entry | None]:
        """All keys from one read transaction: one consistent snapshot of the replica."""
        with self._gate.reading(), self._env.begin(db=self._data, buffers=False) as txn:
            raws = [txn.get(k) for k in keys]
        return [None if raw is None else _decode(raw) for raw in raws]

    def next_offsets(self) -> dict[int, int]:
        with self._gate.reading(), self._env.begin(db=self._offsets) as txn:
            return {
                _PART.unpack(k)[0]: _OFFSET.unpack(v)[0] for k, v in txn.cursor(db=self._offsets).iternext()
            }

    def identity(self) -> TopicIdentity | None:
        with self._gate.reading(), self._env.begin(db=self._meta) as txn:
            topic = txn.get(b"topic")
            topic_id = txn.get(b"topic_id")
            partitions = txn.get(b"partitions")
            fmt = txn.get(b"format")
        if topic is None or topic_id is None or partitions is None or fmt != FORMAT_VERSION:
            return None
        return TopicIdentity(bytes(topic).decode(), bytes(topic_id).decode(), int(bytes(partitions)))

    def skipped_records(self) -> int:
        with self._gate.reading(), self._env.begin(db=self._meta) as txn:
            raw = txn.get(b"skipped")
        return 0 if raw is None else int(bytes(raw))

    def items(self) -> list[tuple[bytes, Entry]]:
        """Every key in order (for tests and tooling; not a serving path)."""
        with self._gate.reading(), self._env.begin(db=self._data, buffers=False) as txn:
            return [(bytes(k), _decode(v)) for k, v in txn.cursor().iternext()]

    # ----- writes (the ingester only) -------------------------------------------------------------
    def invalidate(self) -> None:
        """Empty the replica and forget what it was built from: it no longer reflects any topic."""
        with self._env.begin(write=True) as txn:
            txn.drop(self._data, delete=False)
            txn.drop(self._offsets, delete=False)
            txn.drop(self._meta, delete=False)

    def reset(self, identity: TopicIdentity) -> None:
        """Empty the replica and record what it is now built from, in one transaction."""
        with self._env.begin(write=True) as txn:
            txn.drop(self._data, delete=False)
            txn.drop(self._offsets, delete=False)
            txn.drop(self._meta, delete=False)
            txn.put(b"topic", identity.topic.encode(), db=self._meta)
            txn.put(b"topic_id", identity.topic_id.encode(), db=self._meta)
            txn.put(b"partitions", str(identity.partitions).encode(), db=self._meta)
            txn.put(b"format", FORMAT_VERSION, db=self._meta)

    def apply(self, records: Iterable[Record], next_offsets: Mapping[int, int]) -> int:
        """Apply records in order and store the partitions' next offsets, all in ONE transaction.

        Returns how many records were skipped because their key cannot be stored (empty, or longer
        than LMDB's key limit — only producers other than kvs2 can write those). They are counted in
        `meta/skipped` and logged, never silently dropped.
        """
        records = list(records)
        while True:
            try:
                return self._apply_once(records, next_offsets)
            except lmdb.MapFullError:
                self._grow()

    def _apply_once(self, records: Sequence[Record], next_offsets: Mapping[int, int]) -> int:
        skipped = 0
        max_key = self.max_key_bytes
        with self._env.begin(write=True) as txn:
            data = txn.cursor(db=self._data)
            for rec in records:
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
                if rec.value is None:
                    if data.set_key(key):
                        data.delete()
                else:
                    data.put(key, _REV.pack(rec.offset + 1) + rec.value)
            for partition, offset in next_offsets.items():
                txn.put(_PART.pack(partition), _OFFSET.pack(offset), db=self._offsets)
            if skipped:
                raw = txn.get(b"skipped", db=self._meta)
                total = (0 if raw is None else int(bytes(raw))) + skipped
                txn.put(b"skipped", str(total).encode(), db=self._meta)
        return skipped

    def _grow(self) -> None:
        with self._gate.exclusive():
            new_size = self._env.info()["map_size"] * 2
            log.info("LMDB map full: growing it to %d bytes", new_size)
            self._env.set_mapsize(new_size)

    def close(self) -> None:
        with self._gate.exclusive():
            self._env.close()


def _decode(raw: bytes) -> Entry:
    return Entry(value=raw[8:], revision=_REV.unpack_from(raw)[0])
