"""Consistency options, Range and Watch through the real servicer (the `rig`), without Kafka."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import grpc
import pytest
from kvs2._proto import kvs2_pb2 as pb
from kvs2.core import prefix_end

from tests.unit.conftest import Rig

LIN = pb.ReadOptions(consistency=pb.ReadOptions.LINEARIZABLE)


def test_prefix_end() -> None:
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") is None


async def test_token_read_waits_until_applied(rig: Rig) -> None:
    future = pb.Position(partition=0, offset=0)  # not written yet
    read = asyncio.ensure_future(
        rig.stub.Get(pb.GetRequest(key=b"k", read=pb.ReadOptions(after=[future])), timeout=5)
    )
    await asyncio.sleep(0.2)
    assert not read.done()  # it waits for the write
    rig.apply_behind_the_scenes(b"k", b"v")
    reply = await read
    assert (reply.status, reply.data) == (pb.OK, b"v")


async def test_token_never_applied_is_deadline_exceeded_with_numbers(rig: Rig) -> None:
    token = pb.Position(partition=0, offset=41)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.stub.Get(pb.GetRequest(key=b"k", read=pb.ReadOptions(after=[token])), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "partition 0 needs offset 41 applied, replica is at 0" in (info.value.details() or "")


async def test_token_for_a_partition_that_does_not_exist(rig: Rig) -> None:
    token = pb.Position(partition=7, offset=0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.stub.Get(pb.GetRequest(key=b"k", read=pb.ReadOptions(after=[token])), timeout=1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "partitions 0..0" in (info.value.details() or "")


async def test_linearizable_read_waits_for_kafkas_end_offset(rig: Rig) -> None:
    rig.apply_behind_the_scenes(b"k", b"1")
    rig.end_offsets[0] = 2  # Kafka holds one more record than the replica applied
    read = asyncio.ensure_future(rig.stub.Get(pb.GetRequest(key=b"k", read=LIN), timeout=5))
    await asyncio.sleep(0.2)
    assert not read.done()
    rig.apply_behind_the_scenes(b"k", b"2")
    assert (await read).data == b"2"
    rig.end_offsets[0] = 2
    assert (await rig.stub.Get(pb.GetRequest(key=b"k", read=LIN), timeout=5)).data == b"2"  # no wait


async def test_bounded_lag(rig: Rig) -> None:
    # End offsets Kafka confirmed just now (kvs2.consistency.EndOffsetProbe).
    rig.progress.update(
        replace(rig.progress.now, high_watermarks={0: 5}, ends_proven_at={0: time.monotonic()})
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        # 1.5 s: room for the server's own answer under load, within the 2 s the proof above stays fresh.
        await rig.stub.Get(pb.GetRequest(key=b"k", read=pb.ReadOptions(max_lag_records=2)), timeout=1.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "lags 5 records" in (info.value.details() or "")
    reply = await rig.stub.Get(pb.GetRequest(key=b"k", read=pb.ReadOptions(max_lag_records=5)), timeout=1)
    assert reply.status == pb.NOT_FOUND


async def test_range_pages_prefix_count_and_applied(rig: Rig) -> None:
    for key in [b"a1", b"a2", b"a3", b"b1", b"a0"]:
        rig.apply_behind_the_scenes(key, b"v-" + key)
    page = await rig.stub.Range(pb.RangeRequest(prefix=b"a", limit=2))
    assert [i.key for i in page.items] == [b"a0", b"a1"]
    assert page.items[0].value == b"v-a0"
    assert page.items[0].revision == 5
    assert [(p.partition, p.offset) for p in page.applied] == [(0, 5)]
    page2 = await rig.stub.Range(pb.RangeRequest(prefix=b"a", limit=2, page_token=page.next_page_token))
    assert [i.key for i in page2.items] == [b"a2", b"a3"]
    assert page2.next_page_token == b""
    keys = await rig.stub.Range(pb.RangeRequest(start=b"a2", end=b"b1", keys_only=True))
    assert [(i.key, i.value) for i in keys.items] == [(b"a2", b""), (b"a3", b"")]
    count = await rig.stub.Range(pb.RangeRequest(prefix=b"a", count_only=True))
    assert (count.count, list(count.items)) == (4, [])


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.RangeRequest(prefix=b"a", start=b"a"), "either a prefix or start/end"),
        (pb.RangeRequest(start=b"b", end=b"a"), "start must sort before end"),
        (pb.RangeRequest(limit=20_000), "at most 10000"),
        (pb.RangeRequest(prefix=b"a", page_token=b"zz"), "page_token does not belong"),
    ],
)
async def test_bad_ranges(rig: Rig, request_: pb.RangeRequest, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.stub.Range(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


Stream = grpc.aio.UnaryStreamCall[pb.WatchRequest, pb.WatchEvent]


async def _next(stream: Stream, timeout: float = 3.0) -> pb.WatchEvent:
    event = await asyncio.wait_for(stream.read(), timeout)
    assert isinstance(event, pb.WatchEvent)
    return event


def _watch_from(offset: int, **fields: object) -> pb.WatchRequest:
    request = pb.WatchRequest(**fields)  # type: ignore[arg-type]
    getattr(request, "from").append(pb.Position(partition=0, offset=offset))  # `from` is a Python keyword
    return request


async def test_watch_prefix_then_resume_without_loss_or_repeats(rig: Rig) -> None:
    stream = rig.stub.Watch(pb.WatchRequest(prefix=b"w/", progress_interval_ms=100))
    first = await _next(stream)
    assert first.type == pb.WatchEvent.PROGRESS
    rig.apply_behind_the_scenes(b"w/1", b"a")
    rig.apply_behind_the_scenes(b"other", b"x")
    rig.apply_behind_the_scenes(b"w/1", None)
    put = await _next(stream)
    assert (put.type, put.key, put.value, put.revision) == (pb.WatchEvent.PUT, b"w/1", b"a", 1)
    deleted = await _next(stream)
    assert (deleted.type, deleted.key, deleted.position.offset) == (pb.WatchEvent.DELETE, b"w/1", 2)
    stream.cancel()
    # Resume from the last event: only what came after it.
    rig.apply_behind_the_scenes(b"w/2", b"b")
    resumed = rig.stub.Watch(_watch_from(3, prefix=b"w/", progress_interval_ms=100))
    assert (await _next(resumed)).type == pb.WatchEvent.PROGRESS
    again = await _next(resumed)
    assert (again.key, again.position.offset) == (b"w/2", 3)
    idle = await _next(resumed)
    assert idle.type == pb.WatchEvent.PROGRESS
    assert [(p.partition, p.offset) for p in idle.applied] == [(0, 4)]
    resumed.cancel()


async def test_watch_from_before_the_history_is_out_of_range(rig: Rig) -> None:
    rig.replica.history = 2
    for i in range(5):
        rig.apply_behind_the_scenes(f"k{i}".encode(), b"v")
    stream = rig.stub.Watch(_watch_from(0))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _next(stream)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "Read a snapshot with Range" in (info.value.details() or "")


async def test_bounded_staleness_in_time(rig: Rig) -> None:
    long_ago = time.monotonic() - 5.0
    rig.progress.update(replace(rig.progress.now, caught_up_at={0: long_ago}))
    stale = pb.ReadOptions(max_staleness_ms=1000)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.stub.Get(pb.GetRequest(key=b"k", read=stale), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "was last caught up" in (info.value.details() or "")
    rig.progress.update(replace(rig.progress.now, caught_up_at={0: time.monotonic()}))
    reply = await rig.stub.Get(pb.GetRequest(key=b"k", read=stale), timeout=1)
    assert reply.status == pb.NOT_FOUND
