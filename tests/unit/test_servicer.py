"""The servicer over a real gRPC server on loopback (the `rig` in conftest.py): status codes,
messages and reply shapes of the seed RPCs and Delete, without Kafka."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from kvs2._proto import kvs2_pb2 as pb
from kvs2.progress import Snapshot

from tests.unit.conftest import Rig


async def test_set_get_multiget_delete(rig: Rig) -> None:
    reply = await rig.stub.Set(pb.SetRequest(key=b"a", value=b"1"))
    assert (reply.status, reply.partition, reply.offset) == (pb.PUBLISHED, 0, 0)
    await rig.stub.Set(pb.SetRequest(key=b"empty", value=b""))
    got = await rig.stub.Get(pb.GetRequest(key=b"a"))
    assert (got.status, got.data, got.revision) == (pb.OK, b"1", 1)
    empty = await rig.stub.Get(pb.GetRequest(key=b"empty"))
    assert (empty.status, empty.data) == (pb.OK, b"")
    multi = await rig.stub.MultiGet(pb.MultiGetRequest(keys=[b"a", b"nope", b"a"]))
    assert [(p.key, p.status, p.data) for p in multi.parts] == [
        (b"a", pb.OK, b"1"),
        (b"nope", pb.NOT_FOUND, b""),
        (b"a", pb.OK, b"1"),
    ]
    deleted = await rig.stub.Delete(pb.DeleteRequest(key=b"a"))
    assert deleted.offset == 2
    missing = await rig.stub.Get(pb.GetRequest(key=b"a"))
    assert (missing.status, missing.data, missing.revision) == (pb.NOT_FOUND, b"", 0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.Get(pb.GetRequest(key=b"")), "key must not be empty"),
        (lambda s: s.Set(pb.SetRequest(key=b"", value=b"v")), "key must not be empty"),
        (lambda s: s.Get(pb.GetRequest(key=b"k" * 600)), "keys are limited to 511 bytes"),
        (
            lambda s: s.Set(pb.SetRequest(key=b"k", value=b"v" * 2000)),
            "largest value the topic accepts is 999",
        ),
        (lambda s: s.MultiGet(pb.MultiGetRequest(keys=[b"a"] * 4)), "4 keys; the limit is 3"),
        (lambda s: s.MultiGet(pb.MultiGetRequest(keys=[b"a", b""])), "key must not be empty"),
    ],
)
async def test_bad_input_is_invalid_argument_with_the_limit(rig: Rig, call: object, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(rig.stub)  # type: ignore[operator]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")
    assert rig.writer.pending == []  # nothing reached Kafka


async def test_kafka_failure_is_unavailable(rig: Rig) -> None:
    rig.writer.fail = True
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.stub.Set(pb.SetRequest(key=b"k", value=b"v"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "brokers are down" in (info.value.details() or "")


async def test_unacknowledged_write_is_unavailable_within_the_deadline(rig: Rig) -> None:
    rig.writer.hang = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.stub.Set(pb.SetRequest(key=b"k", value=b"v"), timeout=1.0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # our answer, before the client gives up
    assert "may still be applied" in (info.value.details() or "")
    assert loop.time() - started < 1.5
    assert not rig.writer.pending[0].done() or rig.writer.pending[0].cancelled()


async def test_reads_refused_until_caught_up(rig: Rig) -> None:
    rig.progress.update(Snapshot())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.stub.Get(pb.GetRequest(key=b"a"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "catching up" in (info.value.details() or "")
