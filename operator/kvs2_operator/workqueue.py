"""One keyed work queue feeding `reconcile()`, as controller-runtime's workqueue does.

Why: kopf's create/update/resume handlers, the resync sweep and the child-change nudges used to start
passes on their own (a handler call, a gather per sweep, a task per nudge), with a lock per store to keep
them from interleaving. Now each of them only adds the store's key here; a queue keyed by store gives, in
one place:

- dedupe: a store queued ten times while waiting is passed once;
- no two passes of one store at once: a store queued while its pass runs is passed again right after;
- per-store back-off: a store whose pass failed (its Kafka is down) waits 1, 2, 4 … `max_delay` seconds
  before it is retried by the queue, and a success resets it;
- bounded workers: at most `workers` passes run at once, so one dead Kafka cluster (each pass spending a
  request timeout) holds one worker, not the sweep — healthy stores keep flowing through the others.

The one caller that is not a pass — kopf's delete handler, which scales the workload down and deletes the
topic — takes the key with `exclusive(key)`: it waits for a running pass to end and holds the key's passes
back until it lets go (an add meanwhile is passed afterwards). So there is no lock per store anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: `process(key)` -> True when the pass succeeded (or there is nothing to retry), False to back off.
Process = Callable[[Hashable], Awaitable[bool]]


@dataclass
class WorkQueue:
    process: Process
    workers: int = 8
    base_delay: float = 1.0
    max_delay: float = 30.0
    _queue: asyncio.Queue[Hashable] = field(default_factory=asyncio.Queue)
    _waiting: set[Hashable] = field(default_factory=set)
    _active: set[Hashable] = field(default_factory=set)
    _again: set[Hashable] = field(default_factory=set)
    _failures: dict[Hashable, int] = field(default_factory=dict)
    _timers: dict[Hashable, asyncio.TimerHandle] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: Keys an `exclusive()` caller holds: not passed until released.
    _held: set[Hashable] = field(default_factory=set)
    #: Set (and replaced) whenever a pass ends or a key is released: what `exclusive()` waits on.
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        """Queue `key` (now, or after `delay` seconds); a no-op if it is already waiting."""
        if delay > 0:
            if key not in self._timers and key not in self._waiting:
                loop = asyncio.get_running_loop()
                self._timers[key] = loop.call_later(delay, self._fire, key)
            return
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()  # queued now: the delayed add (a back-off, a coalescing pause) is moot
        if key in self._active or key in self._held:
            self._again.add(key)  # passed (again) once the running pass ends or the holder lets go
            return
        if key in self._waiting:
            return
        self._waiting.add(key)
        self._queue.put_nowait(key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: Hashable) -> None:
        """The store is gone: drop its back-off and any delayed retry."""
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def backoff(self, key: Hashable) -> float:
        return float(min(self.max_delay, self.base_delay * 2 ** min(self._failures.get(key, 0), 16)))

    def __len__(self) -> int:
        return len(self._waiting)

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._waiting.discard(key)
            if key in self._held:  # queued before the holder took it: passed once it lets go
                self._again.add(key)
                continue
            self._active.add(key)
            try:
                ok = await self.process(key)
            except Exception:  # a bug in one store's pass must not stop the worker
                log.exception("pass for %s failed unexpectedly", key)
                ok = False
            finally:
                self._active.discard(key)
                self._wake()
            if ok:
                self._failures.pop(key, None)
            else:
                delay = self.backoff(key)
                self._failures[key] = self._failures.get(key, 0) + 1
                self.add(key, delay)
            if key in self._again:
                self._again.discard(key)
                self.add(key)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def exclusive(self, key: Hashable) -> AsyncIterator[None]:
        """Hold `key`: wait until no pass of it runs (and no other holder has it), then keep its passes
        back until the block ends; a pass asked for meanwhile runs right after."""
        while key in self._active or key in self._held:
            await self._changed.wait()
        self._held.add(key)
        try:
            yield
        finally:
            self._held.discard(key)
            self._wake()
            if key in self._again:
                self._again.discard(key)
                self.add(key)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._worker(), name=f"kvs2-worker-{i}") for i in range(self.workers)
            ]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
