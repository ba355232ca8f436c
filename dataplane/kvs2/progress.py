"""What the replica has applied, shared between the ingester thread and the asyncio server.

The ingester (a thread) publishes next offsets and whether the replica is caught up; the server's
event loop holds the current picture, flips gRPC health, and wakes coroutines waiting for an
offset to be applied (read-your-writes). Why through the loop: asyncio futures may only be touched
from their loop's thread, and the ingester must never block on a slow reader.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass
class _Waiter:
    partition: int
    offset: int
    future: asyncio.Future[None]


@dataclass
class Progress:
    loop: asyncio.AbstractEventLoop
    applied: dict[int, int] = field(default_factory=dict)
    serving: bool = False
    _waiters: list[_Waiter] = field(default_factory=list)
    _on_serving: list[Callable[[bool], None]] = field(default_factory=list)

    # ----- the ingester's side (any thread) ---------------------------------------------------------
    def publish(self, next_offsets: Mapping[int, int], serving: bool) -> None:
        snapshot = dict(next_offsets)
        # RuntimeError: the loop is closed, the process is shutting down.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._update, snapshot, serving)

    # ----- the loop's side ---------------------------------------------------------------------------
    def on_serving_change(self, callback: Callable[[bool], None]) -> None:
        self._on_serving.append(callback)
        callback(self.serving)

    def _update(self, next_offsets: dict[int, int], serving: bool) -> None:
        self.applied = next_offsets
        if serving != self.serving:
            self.serving = serving
            for callback in self._on_serving:
                callback(serving)
        if self._waiters:
            still: list[_Waiter] = []
            for w in self._waiters:
                if w.future.done():
                    continue
                if self.applied.get(w.partition, 0) > w.offset:
                    w.future.set_result(None)
                else:
                    still.append(w)
            self._waiters = still

    def has_applied(self, partition: int, offset: int) -> bool:
        return self.applied.get(partition, 0) > offset

    async def wait_applied(self, partition: int, offset: int, timeout: float | None) -> None:
        """Return once the record at (partition, offset) is applied; TimeoutError after `timeout`."""
        if self.has_applied(partition, offset):
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append(_Waiter(partition, offset, fut))
        await asyncio.wait_for(fut, timeout)
