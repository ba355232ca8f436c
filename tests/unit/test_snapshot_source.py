"""The peer's side of a snapshot (kvs2.snapshot.SnapshotSource): only a serving replica of the asked
topic sends one, at most `max_streams` at a time, and what it sends installs as an equal store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kvs2.errors import FailedPrecondition, Unavailable
from kvs2.progress import Progress, Snapshot
from kvs2.snapshot import Header, Incoming, SnapshotSource, Trailer
from kvs2.storage import Record, Replica, TopicIdentity

IDENT = TopicIdentity("t", "id-1", 2)


def _source(
    tmp_path: Path, serving: bool = True, max_streams: int = 1, max_bytes_per_second: int = 0
) -> SnapshotSource:
    replica = Replica(tmp_path / "peer", map_size=1 << 22)
    replica.reset(IDENT)
    replica.apply([Record(b"a", b"1", 0, 0), Record(b"b", b"2", 1, 0)], {0: 1, 1: 1})
    # Several chunks' worth (kvs2.snapshot.CHUNK_BYTES), so the stream spans many pipe reads.
    bulk = [Record(b"bulk-%05d" % i, bytes([i % 251]) * 1000, 1, 1 + i) for i in range(5000)]
    replica.apply(bulk, {1: 5001})
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(serving=serving))
    return SnapshotSource(
        replica, progress, "t", max_streams=max_streams, max_bytes_per_second=max_bytes_per_second
    )


@pytest.mark.parametrize("throttle", [0, 1 << 30], ids=["streamed while copied", "copied to a file first"])
async def test_a_sent_snapshot_installs_as_an_equal_store(tmp_path: Path, throttle: int) -> None:
    source = _source(tmp_path, max_bytes_per_second=throttle)
    incoming = Incoming(tmp_path / "new")
    async for part in source.stream("t"):
        if isinstance(part, Header):
            incoming.begin(part)
        elif isinstance(part, Trailer):
            incoming.finish(part, IDENT, {})
        else:
            assert isinstance(part, bytes)  # no data channel asked for: data chunks only
            incoming.write(part)
    installed = Replica(tmp_path / "new", map_size=1 << 22)
    assert installed.items() == source.replica.items()
    assert installed.next_offsets() == {0: 1, 1: 5001}
    assert not [p for p in (tmp_path / "peer").iterdir() if p.name.startswith(".snapshot")]


async def test_refused_when_not_serving_or_another_topic(tmp_path: Path) -> None:
    with pytest.raises(Unavailable):
        async for _ in _source(tmp_path / "x", serving=False).stream("t"):
            pass
    with pytest.raises(FailedPrecondition):
        async for _ in _source(tmp_path / "y").stream("other"):
            pass


async def test_at_most_max_streams_at_once(tmp_path: Path) -> None:
    source = _source(tmp_path, max_streams=1)
    first = source.stream("t")
    assert isinstance(await anext(first), Header)  # the first stream is under way
    with pytest.raises(Unavailable, match="snapshot-max-streams"):
        await anext(source.stream("t"))
    await first.aclose()  # abandoned: its slot is free again
    assert isinstance(await anext(source.stream("t")), Header)
