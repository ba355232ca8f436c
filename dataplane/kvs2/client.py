"""A small synchronous client over the generated stubs, used by the CLI and the tests.

Why a wrapper at all: it owns the channel, applies a default deadline to every call, and returns
plain Python values instead of protobuf messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvs2._proto import kvs2_pb2 as pb
from kvs2._proto import kvs2_pb2_grpc as pb_grpc


@dataclass(frozen=True, slots=True)
class Value:
    data: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class Written:
    partition: int
    offset: int


class Client:
    def __init__(self, target: str, *, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.Kvs2Stub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def get(self, key: bytes) -> Value | None:
        reply = self._stub.Get(pb.GetRequest(key=key), timeout=self.timeout)
        return Value(reply.data, reply.revision) if reply.status == pb.OK else None

    def multi_get(self, keys: Sequence[bytes]) -> list[tuple[bytes, Value | None]]:
        reply = self._stub.MultiGet(pb.MultiGetRequest(keys=list(keys)), timeout=self.timeout)
        return [(p.key, Value(p.data, p.revision) if p.status == pb.OK else None) for p in reply.parts]

    def set(self, key: bytes, value: bytes) -> Written:
        reply = self._stub.Set(pb.SetRequest(key=key, value=value), timeout=self.timeout)
        return Written(reply.partition, reply.offset)

    def delete(self, key: bytes) -> Written:
        reply = self._stub.Delete(pb.DeleteRequest(key=key), timeout=self.timeout)
        return Written(reply.partition, reply.offset)

    def health(self, service: str = "") -> str:
        """ "SERVING", "NOT_SERVING", … or "UNREACHABLE" when the server does not answer."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
