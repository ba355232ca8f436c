"""Regressions of issue 8's core defects that need no Kafka: the real Store, Replica and Watch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from kvs2._proto import kvs2_pb2 as pb
from kvs2.config import Limits
from kvs2.consistency import ReadOptions
from kvs2.core import KeyRange, RecordWriter, Store
from kvs2.errors import DeadlineExceeded, HistoryUnavailable, Unavailable
from kvs2.kafka_io import WriteToken
from kvs2.progress import Progress, Snapshot
from kvs2.storage import Change, Conditional, Record, Replica, TopicIdentity, side_key
from kvs2.watch import Progressed, watch

from tests.unit.conftest import Rig

IDENTITY = TopicIdentity("t", "topic-id", 1)


async def test_watch_never_skips_changes_trimmed_between_its_history_check_and_its_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingester trims the change history while a Watch reads it. The check "is my position still
    in the history?" and the read of the changes must be one snapshot: before the fix, a trim between
    them made the Watch skip the trimmed changes silently instead of answering OUT_OF_RANGE."""
    replica = Replica(tmp_path / "db", map_size=1 << 22, sync=False, history=5)
    replica.reset(IDENTITY)
    replica.apply([Record(b"k%d" % i, b"v", 0, i) for i in range(3)], {0: 3})
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(applied={0: 3}, serving=True, partitions=1, topic_id=IDENTITY.topic_id))
    store = Store(replica, cast(RecordWriter, None), progress, Limits())
    trimmed: list[bool] = []

    def trim_first(read: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not trimmed:  # the ingester applies 17 more records between check and read
                trimmed.append(True)
                replica.apply([Record(b"x%d" % i, b"v", 0, i) for i in range(3, 20)], {0: 20})
            return read(*args, **kwargs)

        return wrapped

    for name in ("changes", "changes_since"):
        if hasattr(replica, name):
            monkeypatch.setattr(replica, name, trim_first(getattr(replica, name)))
    delivered: list[int] = []
    try:
        async with asyncio.timeout(30):
            async for item in watch(store, KeyRange(b"", None), {0: 0}, 0.01):
                if isinstance(item, Change):
                    delivered.append(item.offset)
                elif isinstance(item, Progressed) and trimmed:
                    break
    except HistoryUnavailable:
        pass  # the right answer: the watch asked for changes no longer held
    else:
        assert delivered == [0, 1, 2], f"the watch skipped changes: delivered offsets {delivered}"
    finally:
        replica.close()
    assert trimmed


async def test_no_read_sees_a_discarded_replica_even_before_not_serving_arrives(tmp_path: Path) -> None:
    """The ingester discards a stale replica right after publishing NOT_SERVING, which reaches the
    event loop a little later: a read in between must be refused, never answered from emptied data."""
    replica = Replica(tmp_path / "db", map_size=1 << 22, sync=False)
    replica.reset(IDENTITY)
    replica.apply([Record(b"k", b"v", 0, 0)], {0: 1})
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(applied={0: 1}, serving=True, partitions=1, topic_id=IDENTITY.topic_id))
    store = Store(replica, cast(RecordWriter, None), progress, Limits())
    try:
        entry = await store.get(b"k")
        assert entry is not None
        replica.invalidate()  # still SERVING as far as the loop knows
        for read in (
            store.get(b"k"),
            store.multi_get([b"k"]),
            store.range(KeyRange(b"", None)),
            store.range(KeyRange(b"", None), count_only=True),
        ):
            with pytest.raises(Unavailable):
                await read
        replica.reset(TopicIdentity("t", "another-id", 1))  # rebuilding from a recreated topic
        with pytest.raises(Unavailable):
            await store.get(b"k")
    finally:
        replica.close()


async def _store_on_old_topic(tmp_path: Path, **kwargs: Any) -> tuple[Store, Replica]:
    """A replica still following topic id `topic-id` at offset 100, as one does for up to a second
    after its topic was deleted and recreated (new id `new-id`, offsets from 0 again)."""
    replica = Replica(tmp_path / "db", map_size=1 << 22, sync=False)
    replica.reset(IDENTITY)
    replica.apply([Record(b"k", b"old", 0, 99)], {0: 100})
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(applied={0: 100}, serving=True, partitions=1, topic_id=IDENTITY.topic_id))
    return Store(replica, cast(RecordWriter, None), progress, Limits(), **kwargs), replica


async def test_a_token_of_a_recreated_topic_is_not_satisfied_by_the_old_topic(tmp_path: Path) -> None:
    store, replica = await _store_on_old_topic(tmp_path)
    try:
        new_topic_write = ReadOptions(after=(WriteToken(0, 5),), topic_id="new-id")
        with pytest.raises(DeadlineExceeded, match="new-id"):
            await store.get(b"k", new_topic_write, timeout=0.3)
        same_topic_write = ReadOptions(after=(WriteToken(0, 5),), topic_id=IDENTITY.topic_id)
        entry = await store.get(b"k", same_topic_write, timeout=5)
        assert entry is not None
        assert entry.value == b"old"
    finally:
        replica.close()


async def test_a_linearizable_read_never_takes_end_offsets_of_another_topic(tmp_path: Path) -> None:
    """Kafka's end offsets now are those of the recreated topic (1); the replica has applied 100 of the
    old one. The read must not take 100 ≥ 1 as "caught up": it fails or waits, never answers."""
    store, replica = await _store_on_old_topic(
        tmp_path, end_offsets=lambda: {0: 1}, topic_now=lambda: "new-id"
    )
    try:
        with pytest.raises((Unavailable, DeadlineExceeded)):
            await store.get(b"k", ReadOptions(linearizable=True), timeout=0.5)
    finally:
        replica.close()


async def test_write_replies_carry_the_topic_id_and_reads_check_it(rig: Rig) -> None:
    written = await rig.stub.Set(pb.SetRequest(key=b"k", value=b"v"))
    assert written.topic_id == "id"
    deleted = await rig.stub.Delete(pb.DeleteRequest(key=b"gone"))
    assert deleted.topic_id == "id"
    token = pb.Position(partition=written.partition, offset=written.offset)
    read = await rig.stub.Get(pb.GetRequest(key=b"k", read=pb.ReadOptions(after=[token], topic_id="id")))
    assert read.data == b"v"
    with pytest.raises(grpc.aio.AioRpcError) as other_topic:
        await rig.stub.Get(
            pb.GetRequest(key=b"k", read=pb.ReadOptions(after=[token], topic_id="other")), timeout=0.5
        )
    assert other_topic.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    page = await rig.stub.Range(pb.RangeRequest())
    assert page.topic_id == "id"


async def test_a_watch_from_positions_of_another_topic_is_out_of_range(tmp_path: Path) -> None:
    store, replica = await _store_on_old_topic(tmp_path)
    try:
        elsewhere = watch(store, KeyRange(b"", None), {0: 5}, 0.1, "new-id")
        with pytest.raises(HistoryUnavailable, match="new-id"):
            await anext(elsewhere)
        here = watch(store, KeyRange(b"", None), {0: 99}, 0.1, IDENTITY.topic_id)
        first = await anext(here)
        assert first == Progressed({0: 99}, IDENTITY.topic_id)
        change = await anext(here)
        assert isinstance(change, Change)
        assert change.value == b"old"
    finally:
        replica.close()


@dataclass
class _RecordingWriter:
    """Acknowledges every record at once and remembers them in order."""

    sent: list[tuple[bytes, bytes | None]] = field(default_factory=list)

    def max_record_bytes(self) -> int:
        return 1 << 20

    def _ack(self, key: bytes, value: bytes | None) -> Future[WriteToken]:
        self.sent.append((key, value))
        done: Future[WriteToken] = Future()
        done.set_result(WriteToken(0, 100 + len(self.sent)))
        return done

    def write(self, key: bytes, value: bytes | None) -> Future[WriteToken]:
        return self._ack(key, value)

    def tombstone(self, side: bytes, partition: int) -> Future[WriteToken]:
        return self._ack(side, None)


async def test_a_delete_first_catches_up_with_conditional_writes_acknowledged_elsewhere(
    tmp_path: Path,
) -> None:
    """A conditional write acknowledged through another replica, not yet applied here, must still be
    tombstoned before this Delete's tombstone (the invariant of kvs2.conditional): the Delete first
    waits until this replica has applied the key's partition up to Kafka's end offset."""
    replica = Replica(tmp_path / "db", map_size=1 << 22, sync=False)
    replica.reset(IDENTITY)
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(applied={0: 0}, serving=True, partitions=1, topic_id=IDENTITY.topic_id))
    writer = _RecordingWriter()
    store = Store(replica, writer, progress, Limits(), end_offsets=lambda parts: {p: 1 for p in parts})
    request_id = b"\x07" * 16
    try:
        deleting = asyncio.create_task(store.delete(b"k", 10))
        await asyncio.sleep(0.2)  # the Delete has started; then the other replica's record arrives here
        replica.apply([Record(b"k", b"v", 0, 0, Conditional(request_id, 0, False))], {0: 1})
        progress.update(replace(progress.now, applied={0: 1}))
        await deleting
        assert writer.sent == [(side_key(request_id, b"k"), None), (b"k", None)]
    finally:
        replica.close()
