"""A data-plane test rig: the real servicer over a real gRPC server on loopback, a real LMDB replica,
and a fake producer that "acknowledges" a write by applying it at the next offset of partition 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from kvs2._proto import kvs2_pb2_grpc as pb_grpc
from kvs2.config import Limits
from kvs2.core import Store
from kvs2.errors import KafkaUnavailable
from kvs2.kafka_io import WriteToken
from kvs2.progress import Progress, Snapshot
from kvs2.server import Kvs2Servicer
from kvs2.storage import Record, Replica, TopicIdentity

if TYPE_CHECKING:
    from kvs2._proto.kvs2_pb2_grpc import Kvs2AsyncStub


@dataclass
class FakeWriter:
    """Acknowledges writes by applying them to the replica, like a one-partition Kafka would."""

    replica: Replica
    progress: Progress
    limit: int = 1000
    hang: bool = False
    fail: bool = False
    offset: int = 0
    pending: list[Future[WriteToken]] = field(default_factory=list)

    def max_record_bytes(self) -> int:
        return self.limit

    def write(self, key: bytes, value: bytes | None) -> Future[WriteToken]:
        fut: Future[WriteToken] = Future()
        self.pending.append(fut)
        if self.fail:
            fut.set_exception(KafkaUnavailable("writing to Kafka: all brokers are down"))
        elif not self.hang:
            self.replica.apply([Record(key, value, 0, self.offset)], {0: self.offset + 1})
            fut.set_result(WriteToken(0, self.offset))
            self.offset += 1
            self.progress.update(replace(self.progress.now, applied={0: self.offset}))
        return fut

    def tombstone(self, side: bytes, partition: int) -> Future[WriteToken]:
        """Clean-up tombstones of conditional records: the rig has none to apply."""
        fut: Future[WriteToken] = Future()
        fut.set_result(WriteToken(partition, -1))
        return fut


@dataclass
class Rig:
    stub: Kvs2AsyncStub
    writer: FakeWriter
    progress: Progress
    replica: Replica
    end_offsets: dict[int, int] = field(default_factory=dict)

    def apply_behind_the_scenes(self, key: bytes, value: bytes | None) -> WriteToken:
        """A write that reaches the replica without the fake producer (another pod's write)."""
        token = WriteToken(0, self.writer.offset)
        self.writer.offset += 1
        self.replica.apply([Record(key, value, 0, token.offset)], {0: self.writer.offset})
        self.progress.update(replace(self.progress.now, applied={0: self.writer.offset}))
        return token


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    replica = Replica(tmp_path / "db", map_size=1 << 22)
    replica.reset(TopicIdentity("t", "id", 1))
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(serving=True, partitions=1, topic_id="id"))
    writer = FakeWriter(replica, progress)
    end_offsets: dict[int, int] = {}
    store = Store(
        replica,
        writer,
        progress,
        Limits(max_multiget_keys=3),
        end_offsets=lambda parts: {p: end_offsets.get(p, 0) for p in parts},
    )
    server = grpc.aio.server()
    pb_grpc.add_Kvs2Servicer_to_server(Kvs2Servicer(store, default_timeout=5), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Rig(
            pb_grpc.Kvs2Stub(channel),  # an aio channel makes an async stub
            writer,
            progress,
            replica,
            end_offsets,
        )
    await server.stop(None)
    replica.close()
