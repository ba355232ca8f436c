"""`kvs2.embedded`: a replica inside the application's own process — ingester + LMDB, no gRPC.

Why: a single gRPC call costs hundreds of microseconds of CPU; a read from a local LMDB a few. An
application that reads far more than it writes can hold the whole store itself (like LinkedIn Venice's
Da Vinci client or Kafka Streams' GlobalKTable) and still write through Kafka like any pod replica.

It is built from the same parts as a pod replica (`kvs2.assembly`), reads the same topic from Kafka, and
offers the read API of `kvs2.client.AsyncClient` — get, multi_get, range/scan/count, watch, with the same
consistency options — plus writes (set, delete, CAS, write_batch). With `read_your_writes=True` (the
default) every read waits until this replica has applied the writes made through it.

    async with EmbeddedReplica("127.0.0.1:9092", "my-store", "/var/lib/app/kvs2") as kv:
        await kv.wait_serving()
        value = await kv.get(b"user:42")          # microseconds, from the local LMDB
        value = kv.get_local(b"user:42")          # the same, without the event loop
        pairs = kv.multi_get_local([b"a", b"b"])  # one snapshot, without the event loop

Reads are refused (`kvs2.errors.Unavailable`) until the replica has caught up with Kafka, like a pod's.
Errors are `kvs2.errors` exceptions, not gRPC ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from kvs2.assembly import ReplicaParts, build_parts
from kvs2.client import (
    BatchWriteError,
    BatchWritten,
    CasResult,
    Consistency,
    Event,
    Item,
    ItemOutcome,
    Page,
    Value,
    WriteOp,
    Written,
)
from kvs2.conditional import ConditionalResult
from kvs2.config import Limits, ServeSettings
from kvs2.consistency import ReadOptions
from kvs2.core import ItemStatus, KeyRange, WriteItem
from kvs2.errors import Unavailable
from kvs2.ingest import Ingester
from kvs2.kafka_io import WriteToken
from kvs2.progress import Snapshot
from kvs2.storage import Entry, Outcome
from kvs2.watch import Progressed, watch

__all__ = ["EmbeddedReplica"]


# `Value` is a frozen slots dataclass: its __init__ goes through object.__setattr__ per field. Setting
# the slots through their descriptors makes the same object at about half the cost, which matters
# when a MultiGet makes one per key (bench/readpath.py).
_new_object = object.__new__
_set_data: Callable[[Value, bytes], None] = vars(Value)["data"].__set__
_set_revision: Callable[[Value, int], None] = vars(Value)["revision"].__set__


def _value(entry: Entry | None) -> Value | None:
    if entry is None:
        return None
    value: Value = _new_object(Value)
    _set_data(value, entry[0])
    _set_revision(value, entry[1])
    return value


class EmbeddedReplica:
    """An in-process replica of one store's topic. Use as an async context manager (or `start`/`close`)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        data_dir: str | Path,
        *,
        kafka_config: Mapping[str, str] | None = None,
        read_your_writes: bool = True,
        timeout: float = 10.0,
        map_size: int = 1 << 34,
        limits: Limits | None = None,
    ) -> None:
        self.settings = ServeSettings(
            bootstrap_servers=bootstrap_servers,
            topic=topic,
            data_dir=Path(data_dir),
            kafka_config=dict(kafka_config or {}),
            default_write_timeout=timeout,
            map_size=map_size,
            limits=limits or Limits(),
        )
        self.timeout = timeout
        self._ryw = read_your_writes
        self._written: dict[int, int] = {}
        self._parts: ReplicaParts | None = None
        self._ingester: Ingester | None = None
        self._stopping = asyncio.Event()
        self._janitor: asyncio.Task[None] | None = None

    # ----- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> EmbeddedReplica:
        loop = asyncio.get_running_loop()
        parts = build_parts(self.settings, loop)
        self._parts = parts

        def on_outcomes(outcomes: list[Outcome]) -> None:  # the ingester's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                loop.call_soon_threadsafe(parts.conditional.resolve, outcomes)

        def on_progress(snapshot: Snapshot) -> None:
            parts.progress.publish(snapshot)

        self._ingester = parts.ingester(on_progress, on_outcomes, parts.set_limit)
        self._ingester.start()
        self._janitor = loop.create_task(parts.conditional.janitor(self._stopping))
        return self

    async def close(self) -> None:
        """Flush the producer, stop the ingester, close LMDB (each step runs whatever the others did)."""
        parts, self._parts = self._parts, None
        if parts is None:
            return
        self._stopping.set()
        if self._janitor is not None:
            with contextlib.suppress(Exception):
                await self._janitor
        try:
            await asyncio.to_thread(parts.writer.close, self.settings.shutdown_grace)
        finally:
            try:
                if self._ingester is not None:
                    await asyncio.to_thread(self._ingester.stop)
            finally:
                parts.replica.close()

    async def __aenter__(self) -> EmbeddedReplica:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def _p(self) -> ReplicaParts:
        if self._parts is None:
            raise Unavailable("the embedded replica is not started (use `async with` or `await start()`)")
        return self._parts

    @property
    def serving(self) -> bool:
        return self._parts is not None and self._parts.progress.serving

    async def wait_serving(self, timeout: float = 60.0) -> None:
        """Until the replica has caught up with what Kafka held when it started (TimeoutError after)."""
        await self._p.progress.wait_for(lambda s: s.serving, timeout)

    @property
    def applied(self) -> dict[int, int]:
        """This replica's next offset per partition."""
        return dict(self._p.progress.applied)

    # ----- reads -------------------------------------------------------------------------------------
    def _options(
        self, consistency: Consistency, after: Iterable[Written], max_lag: int, max_staleness_ms: int
    ) -> ReadOptions:
        tokens = {(w.partition, w.offset) for w in after}
        if self._ryw:
            tokens.update(self._written.items())
        return ReadOptions(
            linearizable=consistency == "linearizable",
            after=tuple(WriteToken(p, o) for p, o in sorted(tokens)),
            max_lag_records=max_lag,
            max_staleness=max_staleness_ms / 1000,
        )

    def _eventual(
        self, consistency: Consistency, after: Iterable[Written], max_lag: int, max_staleness_ms: int
    ) -> bool:
        """Whether a read may be answered at once: eventual, and no write of ours to wait for."""
        return (
            consistency == "eventual"
            and not after
            and not max_lag
            and not max_staleness_ms
            and not (self._ryw and self._written)
        )

    def get_local(self, key: bytes) -> Value | None:
        """The fastest read: this replica's value as it is now (eventual), no event loop involved."""
        return _value(self._p.store.get_now(key))

    def multi_get_local(self, keys: Sequence[bytes]) -> list[tuple[bytes, Value | None]]:
        """`multi_get` as it is now (eventual), from one snapshot, no event loop involved."""
        entries = self._p.store.multi_get_now(keys)
        return list(zip(keys, map(_value, entries), strict=True))

    async def get(
        self,
        key: bytes,
        *,
        consistency: Consistency = "eventual",
        after: Iterable[Written] = (),
        max_lag: int = 0,
        max_staleness_ms: int = 0,
    ) -> Value | None:
        if self._eventual(consistency, after, max_lag, max_staleness_ms):
            return self.get_local(key)
        options = self._options(consistency, after, max_lag, max_staleness_ms)
        return _value(await self._p.store.get(key, options, self.timeout))

    async def multi_get(
        self,
        keys: Sequence[bytes],
        *,
        consistency: Consistency = "eventual",
        after: Iterable[Written] = (),
        max_lag: int = 0,
        max_staleness_ms: int = 0,
    ) -> list[tuple[bytes, Value | None]]:
        if self._eventual(consistency, after, max_lag, max_staleness_ms):
            return self.multi_get_local(keys)
        options = self._options(consistency, after, max_lag, max_staleness_ms)
        entries = await self._p.store.multi_get(keys, options, self.timeout)
        return list(zip(keys, map(_value, entries), strict=True))

    async def range(
        self,
        start: bytes = b"",
        end: bytes = b"",
        *,
        prefix: bytes = b"",
        limit: int = 0,
        keys_only: bool = False,
        page_token: bytes = b"",
        consistency: Consistency = "eventual",
        after: Iterable[Written] = (),
    ) -> Page:
        result = await self._p.store.range(
            KeyRange.of(start, end, prefix),
            limit=limit,
            keys_only=keys_only,
            page_token=page_token,
            options=self._options(consistency, after, 0, 0),
            timeout=self.timeout,
        )
        items = [
            Item(k, None if e is None else e.value, 0 if e is None else e.revision) for k, e in result.items
        ]
        return Page(items, result.next_page_token, dict(result.applied))

    async def scan(
        self, start: bytes = b"", end: bytes = b"", *, prefix: bytes = b"", keys_only: bool = False
    ) -> AsyncIterator[Item]:
        """Every key of the range, page by page (each page one consistent snapshot)."""
        token = b""
        while True:
            page = await self.range(start, end, prefix=prefix, keys_only=keys_only, page_token=token)
            for item in page.items:
                yield item
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def count(self, start: bytes = b"", end: bytes = b"", *, prefix: bytes = b"") -> int:
        result = await self._p.store.range(
            KeyRange.of(start, end, prefix), count_only=True, timeout=self.timeout
        )
        return result.count

    async def watch(
        self,
        *,
        key: bytes = b"",
        prefix: bytes = b"",
        start: bytes = b"",
        end: bytes = b"",
        from_: Mapping[int, int] | None = None,
        progress_interval_ms: int = 1000,
    ) -> AsyncIterator[Event]:
        """Changes in apply order per partition, as `AsyncClient.watch` (PROGRESS events included)."""
        selector = KeyRange(key, key + b"\x00") if key else KeyRange.of(start, end, prefix)
        async for item in watch(self._p.store, selector, from_, progress_interval_ms / 1000):
            if isinstance(item, Progressed):
                yield Event("progress", applied=dict(item.applied))
            elif item.value is None:
                yield Event("delete", item.key, None, 0, item.partition, item.offset)
            else:
                yield Event("put", item.key, item.value, item.offset + 1, item.partition, item.offset)

    # ----- writes (through Kafka, like any replica) --------------------------------------------------
    def _note(self, partition: int, offset: int) -> Written:
        if offset > self._written.get(partition, -1):
            self._written[partition] = offset
        return Written(partition, offset)

    async def set(self, key: bytes, value: bytes) -> Written:
        token = await self._p.store.set(key, value, self.timeout)
        return self._note(token.partition, token.offset)

    async def delete(self, key: bytes) -> Written:
        token = await self._p.store.delete(key, self.timeout)
        return self._note(token.partition, token.offset)

    def _cas(self, result: ConditionalResult) -> CasResult:
        return CasResult(result.applied, result.revision, self._note(result.partition, result.offset))

    async def set_if(self, key: bytes, value: bytes, revision: int) -> CasResult:
        return self._cas(await self._p.store.write_if(key, value, revision, self.timeout))

    async def delete_if(self, key: bytes, revision: int) -> CasResult:
        return self._cas(await self._p.store.write_if(key, None, revision, self.timeout))

    async def write_batch(self, ops: Iterable[WriteOp]) -> BatchWritten:
        """As `AsyncClient.write_batch`: NOT atomic across keys; one outcome per item."""
        items = [WriteItem(op.key, op.value, op.if_revision) for op in ops]
        result = await self._p.store.write_batch(items, self.timeout)
        outcomes = [
            ItemOutcome(
                r.status.value,  # the same five names
                Written(r.partition, r.offset)
                if r.status in (ItemStatus.PUBLISHED, ItemStatus.CONDITION_FAILED)
                else None,
                r.revision,
                r.error,
            )
            for r in result.items
        ]
        tokens = [self._note(p, o) for p, o in sorted(result.tokens.items())]
        return BatchWritten(outcomes, tokens)

    async def set_many(self, items: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> list[Written]:
        pairs = items.items() if isinstance(items, Mapping) else items
        result = await self.write_batch(WriteOp(k, v) for k, v in pairs)
        if not result.ok:
            raise BatchWriteError(result)
        return [r.written for r in result.results if r.written is not None]
