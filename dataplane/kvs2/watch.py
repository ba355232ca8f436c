"""Watch: a replica's applied changes to a key, a prefix or a range, resumable from positions.

Changes come from the replica's change history (`storage.Replica.changes`), which the ingester writes
in the same transaction as the data. A watch keeps a next offset per partition; it sends every
matching change at or after it, in offset order per partition (so per key), then PROGRESS events
with its positions while idle. Sent back as `from`, those positions resume the watch without loss or
repetition, on this replica or any other one that still holds the history.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from kvs2.core import KeyRange, Store
from kvs2.errors import HistoryUnavailable, Unavailable
from kvs2.storage import Change

BATCH = 1000


@dataclass(frozen=True)
class Progressed:
    """Everything before `applied` (per partition) that matched has been sent."""

    applied: dict[int, int]
    topic_id: str = ""  # the topic the positions belong to


WatchItem = Change | Progressed


async def watch(
    store: Store,
    selector: KeyRange,
    start: Mapping[int, int] | None,
    progress_interval: float,
    start_topic_id: str = "",
) -> AsyncIterator[WatchItem]:
    store.check_serving()
    progress = store.progress
    topic_id = progress.now.topic_id
    if start and start_topic_id and start_topic_id != topic_id:
        raise HistoryUnavailable(
            f"the positions are of topic id {start_topic_id}; this replica follows topic id {topic_id} "
            "(the topic was deleted and recreated). Read a snapshot with Range and watch from its "
            "`applied` positions"
        )
    partitions = progress.now.partitions
    positions = dict(progress.now.applied)
    for p in range(partitions):
        positions.setdefault(p, 0)
    if start:
        for p, offset in start.items():
            if not 0 <= p < partitions:
                raise HistoryUnavailable(f"partition {p} does not exist (the topic has {partitions})")
            positions[p] = offset
    _check_history(store, positions)
    yield Progressed(dict(positions), topic_id)
    loop = asyncio.get_running_loop()
    next_progress = loop.time() + progress_interval
    while True:
        if progress.now.topic_id != topic_id:
            raise Unavailable(
                "the replica was rebuilt from a recreated topic; start again from a Range snapshot"
            )
        sent = False
        applied = progress.now.applied
        for p in range(partitions):
            until = applied.get(p, 0)
            while positions[p] < until:
                first, batch = store.replica.changes_since(p, positions[p], until, BATCH)
                if positions[p] < first:
                    raise HistoryUnavailable(_gone(p, first, positions[p]))
                for change in batch:
                    if change.key in selector:
                        yield change
                        sent = True
                positions[p] = batch[-1].offset + 1 if len(batch) == BATCH else until
        now = loop.time()
        if sent:
            next_progress = now + progress_interval
        elif now >= next_progress:
            yield Progressed(dict(positions), topic_id)
            next_progress = now + progress_interval
        await progress.wait_update(max(0.0, next_progress - loop.time()))


def _check_history(store: Store, positions: Mapping[int, int]) -> None:
    applied = store.progress.now.applied
    history = store.replica.history_start()
    for p, offset in positions.items():
        first = history.get(p, 0)
        if offset < first and offset < applied.get(p, 0):
            raise HistoryUnavailable(_gone(p, first, offset))


def _gone(partition: int, first: int, offset: int) -> str:
    return (
        f"partition {partition}: changes before offset {first} are no longer held (compacted in Kafka or "
        f"trimmed from this replica's history); asked from {offset}. Read a snapshot with Range "
        "and watch from its `applied` positions"
    )
