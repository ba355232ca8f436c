"""The embedded replica's eventual reads answer at once, from LMDB, with the client's `Value` type
(issue 12). The replica is real (LMDB); Kafka is not needed for these reads, so the parts below the
store are stand-ins (tests/integration/dataplane/test_embedded.py runs it against Kafka)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kvs2.client import Value
from kvs2.config import Limits
from kvs2.core import Store
from kvs2.embedded import EmbeddedReplica
from kvs2.errors import InvalidArgument, Unavailable
from kvs2.progress import Progress, Snapshot
from kvs2.storage import Record, Replica, TopicIdentity


@pytest.fixture
async def embedded(tmp_path: Path) -> Any:
    replica = Replica(tmp_path / "db", map_size=1 << 22)
    replica.reset(TopicIdentity("t", "id", 1))
    replica.apply([Record(b"a", b"1", 0, 0), Record(b"b", b"", 0, 1)], {0: 2})
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(serving=True, partitions=1, topic_id="id", applied={0: 2}))
    writer: Any = SimpleNamespace()
    store = Store(replica, writer, progress, Limits(max_multiget_keys=3))
    kv = EmbeddedReplica("127.0.0.1:9", "t", tmp_path / "unused")
    kv._parts = SimpleNamespace(store=store, replica=replica, progress=progress)  # type: ignore[assignment]
    yield kv, progress
    replica.close()


async def test_local_reads_return_values_like_the_client(embedded: Any) -> None:
    kv, _ = embedded
    got = kv.get_local(b"a")
    assert got == Value(b"1", 1) and type(got) is Value
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.data = b"2"  # type: ignore[misc]
    assert kv.get_local(b"b") == Value(b"", 2)  # an empty value is a value
    assert kv.get_local(b"missing") is None
    assert kv.multi_get_local([b"a", b"missing", b"a"]) == [
        (b"a", Value(b"1", 1)),
        (b"missing", None),
        (b"a", Value(b"1", 1)),
    ]
    assert await kv.get(b"a") == Value(b"1", 1)
    assert await kv.multi_get([b"b", b"a"]) == [(b"b", Value(b"", 2)), (b"a", Value(b"1", 1))]


async def test_local_reads_check_keys_limits_and_serving(embedded: Any) -> None:
    kv, progress = embedded
    with pytest.raises(InvalidArgument, match="empty"):
        kv.get_local(b"")
    with pytest.raises(InvalidArgument, match="the limit is 3"):
        kv.multi_get_local([b"a"] * 4)
    with pytest.raises(InvalidArgument, match="empty"):
        await kv.multi_get([b"a", b""])
    progress.update(Snapshot(serving=False, partitions=1, topic_id="id"))
    with pytest.raises(Unavailable):
        kv.get_local(b"a")
    with pytest.raises(Unavailable):
        await kv.get(b"a")
    with pytest.raises(Unavailable):
        kv.multi_get_local([b"a"])


async def test_local_reads_refuse_a_replica_rebuilding_from_another_topic(embedded: Any) -> None:
    kv, progress = embedded
    progress.update(Snapshot(serving=True, partitions=1, topic_id="a-recreated-topic"))
    with pytest.raises(Unavailable, match="rebuilding"):
        kv.get_local(b"a")
    with pytest.raises(Unavailable, match="rebuilding"):
        kv.multi_get_local([b"a"])
