"""`Client(timeout=T)` / `AsyncClient(timeout=T)`: T bounds a whole read, retries included.

Why: reads are retried on UNAVAILABLE with backoff; when each attempt got the full T, a read against a
replica that answers UNAVAILABLE only at the deadline took about (retries + 1) x T — four times what the
caller asked for. The clock here is a fake that each call advances by the time it was allowed (a
replica that keeps the caller waiting until the deadline, then refuses): no real time is measured.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from kvs2 import client as client_module
from kvs2._proto import kvs2_pb2 as pb
from kvs2.client import AsyncClient, Client


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def time(self) -> float:
        return self.now


class Unavailable(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "this replica is catching up with Kafka and not serving reads yet"


class SlowRefusingStub:
    """Every call waits out the deadline it was given, then answers UNAVAILABLE."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.timeouts: list[float] = []

    def Get(self, request: pb.GetRequest, timeout: float) -> Any:  # noqa: N802 - gRPC's method name
        assert timeout > 0
        self.timeouts.append(timeout)
        self.clock.now += timeout
        raise Unavailable()


class AsyncSlowRefusingStub(SlowRefusingStub):
    async def Get(self, request: pb.GetRequest, timeout: float) -> Any:  # noqa: N802
        return super().Get(request, timeout)


def test_a_retried_read_ends_by_the_clients_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(client_module, "time", clock)
    with Client("127.0.0.1:9", timeout=1.0, retries=3) as c:
        stub = SlowRefusingStub(clock)
        c._stub = stub  # type: ignore[assignment]
        start = clock.now
        with pytest.raises(grpc.RpcError) as raised:
            c.get(b"k")
    assert isinstance(raised.value, grpc.Call) and raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert clock.now - start <= 1.0, f"a read with timeout=1.0 ran {clock.now - start:.2f}s: {stub.timeouts}"
    assert len(stub.timeouts) >= 1


def test_an_async_retried_read_ends_by_the_clients_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(client_module, "time", clock)

    async def fake_sleep(seconds: float) -> None:
        clock.now += seconds

    async def main() -> tuple[float, list[float]]:
        c = AsyncClient("127.0.0.1:9", timeout=1.0, retries=3)
        stub = AsyncSlowRefusingStub(clock)
        c._stub = stub  # type: ignore[assignment]
        start = clock.now
        monkeypatch.setattr("kvs2.client.asyncio.sleep", fake_sleep)
        try:
            with pytest.raises(grpc.RpcError):
                await c.get(b"k")
        finally:
            monkeypatch.undo()
            await c.close()
        return clock.now - start, stub.timeouts

    took, timeouts = asyncio.run(main())
    assert took <= 1.0, f"a read with timeout=1.0 ran {took:.2f}s: {timeouts}"


def test_retries_still_happen_within_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal that comes at once leaves time to retry: the deadline is shared, not the retries cut."""
    clock = FakeClock()
    monkeypatch.setattr(client_module, "time", clock)
    calls: list[float] = []

    class QuickRefusingStub:
        def Get(self, request: pb.GetRequest, timeout: float) -> Any:  # noqa: N802
            calls.append(timeout)
            raise Unavailable()

    with Client("127.0.0.1:9", timeout=10.0, retries=3) as c:
        c._stub = QuickRefusingStub()  # type: ignore[assignment]
        with pytest.raises(grpc.RpcError):
            c.get(b"k")
    assert len(calls) == 4  # the first attempt and three retries
    assert calls == sorted(calls, reverse=True) and calls[0] <= 10.0  # each gets what is left
