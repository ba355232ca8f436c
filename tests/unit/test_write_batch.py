"""`Write` when Kafka fails: each item says whether it may still be applied (issue 12 item 1)."""

from __future__ import annotations

import grpc
import pytest
from kvs2._proto import kvs2_pb2 as pb

from tests.unit.conftest import Rig

R = pb.WriteItemResult


async def test_unacknowledged_items_are_reported_as_possibly_applied(rig: Rig) -> None:
    rig.writer.hang = True
    reply = await rig.stub.Write(
        pb.WriteRequest(items=[pb.WriteItem(key=b"a", value=b"1"), pb.WriteItem(key=b"", value=b"x")]),
        timeout=1.0,
    )
    assert [r.status for r in reply.results] == [R.OUTCOME_UNKNOWN, R.INVALID]
    assert "may still be applied" in reply.results[0].error
    assert not reply.tokens


async def test_items_kafka_refused_are_reported_as_not_written(rig: Rig) -> None:
    rig.writer.fail = True
    reply = await rig.stub.Write(pb.WriteRequest(items=[pb.WriteItem(key=b"a", value=b"1")]), timeout=5)
    assert [r.status for r in reply.results] == [R.FAILED]
    assert "brokers are down" in reply.results[0].error


async def test_published_items_carry_positions_and_the_batch_its_tokens(rig: Rig) -> None:
    items = [pb.WriteItem(key=b"a", value=b"1"), pb.WriteItem(key=b"b", delete=True)]
    reply = await rig.stub.Write(pb.WriteRequest(items=items), timeout=5)
    assert [(r.status, r.partition, r.offset, r.revision) for r in reply.results] == [
        (R.PUBLISHED, 0, 0, 1),
        (R.PUBLISHED, 0, 1, 0),
    ]
    assert [(t.partition, t.offset) for t in reply.tokens] == [(0, 1)]


async def test_too_many_items_is_refused_whole(rig: Rig) -> None:
    items = [pb.WriteItem(key=b"k", value=b"v")] * 10_001
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.stub.Write(pb.WriteRequest(items=items), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 10000" in (info.value.details() or "")
