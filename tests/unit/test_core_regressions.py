"""Regressions of issue 8's core defects that need no Kafka: the real Store, Replica and Watch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from kvs2.config import Limits
from kvs2.core import KeyRange, RecordWriter, Store
from kvs2.errors import HistoryUnavailable, Unavailable
from kvs2.progress import Progress, Snapshot
from kvs2.storage import Change, Record, Replica, TopicIdentity
from kvs2.watch import Progressed, watch

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
