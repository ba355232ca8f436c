"""Replay equivalence, as a property: for any history of plain and conditional Sets and Deletes, every
log that Kafka's compaction may leave behind replays to the live replica's state.

The live side is the real `Store` and `ConditionalWrites` over a real LMDB `Replica`; only Kafka is a
model (`ModelKafka`), one that appends records and applies each to the live replica at once. Its
cleaner follows Kafka's rules for compacted topics:
  * a pass cleans a prefix of a partition (never past the active segment; any prefix is possible);
  * in a pass, a record is dropped when a later record of the same Kafka key is in the cleaned prefix —
    so per key only the latest record is kept for sure;
  * a tombstone may be dropped by any later pass once a pass has cleaned it (delete.retention.ms may
    be as short as you like), by which time every earlier record of its key is gone.
The janitor's clean-up tombstones may be written at any moment after the records become garbage, and
the accepting replica's immediate tombstone of a failed conditional write may be lost (a crash).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvs2.conditional import ConditionalWrites
from kvs2.config import Limits
from kvs2.core import Store
from kvs2.kafka_io import WriteToken
from kvs2.partitioner import partition_for
from kvs2.progress import Progress, Snapshot
from kvs2.storage import Conditional, Record, Replica, TopicIdentity, parse_side_key, side_key

PARTITIONS = 2
KEYS = [b"a", b"b"]
IDENTITY = TopicIdentity("t", "topic-id", PARTITIONS)


@dataclass
class Logged:
    kafka_key: bytes
    value: bytes | None
    offset: int
    conditional: Conditional | None
    removed: bool = False
    cleaned: bool = False


@dataclass
class ModelKafka:
    """The producer surface `Store` and `ConditionalWrites` use, over a modelled compacted topic."""

    live: Replica
    conditional: ConditionalWrites | None = None
    lose_tombstones: bool = False
    log: dict[int, list[Logged]] = field(default_factory=lambda: {p: [] for p in range(PARTITIONS)})

    def max_record_bytes(self) -> int:
        return 1 << 20

    def _append(self, partition: int, entry: Logged) -> Future[WriteToken]:
        part = self.log[partition]
        entry.offset = len(part)
        part.append(entry)
        applied = self.live.apply([_record(partition, entry)], {partition: entry.offset + 1})
        if applied.outcomes and self.conditional is not None:
            self.conditional.resolve(applied.outcomes)
        done: Future[WriteToken] = Future()
        done.set_result(WriteToken(partition, entry.offset))
        return done

    def write(self, key: bytes, value: bytes | None) -> Future[WriteToken]:
        return self._append(partition_for(key, PARTITIONS), Logged(key, value, 0, None))

    def write_conditional(
        self, request_id: bytes, key: bytes, value: bytes | None, expected_revision: int, partition: int
    ) -> Future[WriteToken]:
        cond = Conditional(request_id, expected_revision, value is None)
        return self._append(partition, Logged(side_key(request_id, key), value or b"", 0, cond))

    def tombstone(self, side: bytes, partition: int) -> Future[WriteToken]:
        if self.lose_tombstones:
            lost: Future[WriteToken] = Future()
            lost.set_result(WriteToken(partition, -1))
            return lost
        parsed = parse_side_key(side)
        assert parsed is not None
        cond = Conditional(parsed[0], 0, False, tombstone=True)
        return self._append(partition, Logged(side, None, 0, cond))

    def offset_of(self, kafka_key: bytes) -> tuple[int, int]:
        """(partition, offset) of the first record with this Kafka key."""
        for p, part in self.log.items():
            for e in part:
                if e.kafka_key == kafka_key:
                    return p, e.offset
        raise KeyError(kafka_key)

    def clean(self, partition: int, percent: int, drop_tombstones: bool) -> None:
        """One cleaner pass over the first `percent`% of the partition's records."""
        part = self.log[partition]
        end = len(part) * percent // 100
        present = [e for e in part[:end] if not e.removed]
        latest = {e.kafka_key: e.offset for e in present}
        for e in present:
            if latest[e.kafka_key] > e.offset:
                e.removed = True
            elif e.value is None and e.cleaned and drop_tombstones:
                e.removed = True  # delete.retention.ms has passed since a pass first cleaned it
            e.cleaned = True

    def surviving(self, partition: int) -> list[Record]:
        return [_record(partition, e) for e in self.log[partition] if not e.removed]


def _record(partition: int, e: Logged) -> Record:
    if e.conditional is None:
        return Record(e.kafka_key, e.value, partition, e.offset)
    parsed = parse_side_key(e.kafka_key)
    assert parsed is not None
    return Record(parsed[1], e.value, partition, e.offset, e.conditional)


keys = st.sampled_from(KEYS)
expectations = st.one_of(st.just("absent"), st.just("current"), st.integers(1, 40))
steps = st.one_of(
    st.tuples(st.just("set"), keys, st.binary(min_size=0, max_size=2)),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("set_if"), keys, st.binary(min_size=1, max_size=2), expectations, st.booleans()),
    st.tuples(st.just("delete_if"), keys, expectations, st.booleans()),
    st.tuples(st.just("janitor"), st.integers(0, 255)),
    st.tuples(
        st.just("clean"),
        st.integers(0, PARTITIONS - 1),
        st.one_of(st.just(100), st.integers(0, 100)),
        st.booleans(),
    ),
)


async def _run(history: list[tuple[object, ...]], live: Replica, rebuilt: Replica) -> None:
    progress = Progress(asyncio.get_running_loop())
    progress.now = Snapshot(serving=True, partitions=PARTITIONS, topic_id=IDENTITY.topic_id)
    kafka = ModelKafka(live)
    conditional = ConditionalWrites(kafka, live, progress)  # type: ignore[arg-type]
    kafka.conditional = conditional
    # The model applies every record as it is written, so a Delete's catch-up has nothing to wait for.
    caught_up = lambda parts: dict.fromkeys(parts, 0)  # noqa: E731
    store = Store(live, kafka, progress, Limits(), end_offsets=caught_up, conditional=conditional)
    model: dict[bytes, tuple[bytes, int]] = {}

    def expected(key: bytes, how: object) -> int:
        if how == "absent":
            return 0
        if how == "current":
            return model[key][1] if key in model else 0
        assert isinstance(how, int)
        return how

    for step in history:
        match step:
            case ("set", bytes(key), bytes(value)):
                token = await store.set(key, value, 1.0)
                model[key] = (value, token.offset + 1)
            case ("delete", bytes(key)):
                await store.delete(key, 1.0)
                model.pop(key, None)
            case ("set_if" | "delete_if", bytes(key), *rest):
                new = rest[0] if step[0] == "set_if" and isinstance(rest[0], bytes) else None
                want = expected(key, rest[-2])
                kafka.lose_tombstones = bool(rest[-1])  # the accepting replica dies before its clean-up
                result = await store.write_if(key, new, want, 1.0)
                kafka.lose_tombstones = False
                current = model[key][1] if key in model else 0
                assert result.applied == (current == want), f"verdict of {step} against {model}"
                if result.applied:
                    if new is not None:
                        model[key] = (new, result.revision)
                    else:
                        model.pop(key, None)
            case ("janitor", int(mask)):
                # In log order, not request-id order: ids are random, and the choice must replay.
                for i, side in enumerate(sorted(live.garbage(), key=kafka.offset_of)):
                    if mask >> (i % 8) & 1:
                        parsed = parse_side_key(side)
                        assert parsed is not None
                        kafka.tombstone(side, partition_for(parsed[1], PARTITIONS))
            case ("clean", int(partition), int(percent), bool(drop)):
                kafka.clean(partition, percent, drop)
            case _:
                raise AssertionError(f"unknown step {step}")

    for p in range(PARTITIONS):  # and finally the most Kafka may ever do: everything cleaned, twice
        kafka.clean(p, 100, drop_tombstones=False)
        kafka.clean(p, 100, drop_tombstones=True)
    live_state = {k: (e.value, e.revision) for k, e in live.items()}
    assert live_state == model, "the live replica disagrees with the acknowledged writes"
    rebuilt.reset(IDENTITY)
    for p in range(PARTITIONS):
        rebuilt.apply(kafka.surviving(p), {p: len(kafka.log[p])})
    rebuilt_state = {k: (e.value, e.revision) for k, e in rebuilt.items()}
    assert rebuilt_state == live_state, (
        "a replica rebuilt from the compacted log disagrees with the live one; log: "
        + repr({p: [(e.kafka_key, e.value, e.removed) for e in kafka.log[p]] for p in range(PARTITIONS)})
    )


# KVS2_PROPERTY_EXAMPLES=20000 for a long search; the suite runs 400 examples.
@settings(
    max_examples=int(os.environ.get("KVS2_PROPERTY_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(steps, min_size=1, max_size=30))
def test_every_compacted_log_replays_to_the_live_state(history: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        live = Replica(Path(tmp) / "live", map_size=1 << 24, sync=False)
        rebuilt = Replica(Path(tmp) / "rebuilt", map_size=1 << 24, sync=False)
        live.reset(IDENTITY)
        try:
            asyncio.run(_run(history, live, rebuilt))
        finally:
            live.close()
            rebuilt.close()


def test_conditional_records_a_foreign_tombstone_met_are_urgent_garbage(tmp_path: Path) -> None:
    """A plain tombstone written without the clean-up first (a foreign producer, or a conditional write
    racing a Delete) leaves conditional records that must be tombstoned before Kafka drops it."""
    replica = Replica(tmp_path / "db", map_size=1 << 22, sync=False)
    try:
        replica.reset(IDENTITY)
        applied_id, failed_id = b"\x01" * 16, b"\x02" * 16
        records = [
            Record(b"k", b"1", 0, 0, Conditional(applied_id, 0, False)),
            Record(b"k", b"2", 0, 1, Conditional(failed_id, 0, False)),  # fails: k exists
            Record(b"k", None, 0, 2),  # the plain tombstone, with nothing tombstoned before it
        ]
        replica.apply(records, {0: 3})
        expected = {side_key(applied_id, b"k"), side_key(failed_id, b"k")}
        assert set(replica.urgent_garbage()) == expected
        assert set(replica.garbage()) == expected
        assert set(replica.cleanup_before_delete(b"k")) == expected
        replica.apply([Record(b"k", None, 0, 3, Conditional(applied_id, 0, False, tombstone=True))], {0: 4})
        assert replica.urgent_garbage() == [side_key(failed_id, b"k")]
        assert replica.cleanup_before_delete(b"k") == [side_key(failed_id, b"k")]
    finally:
        replica.close()
