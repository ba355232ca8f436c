"""The store's operations, independent of any transport.

The gRPC servicer (`kvs2.server`) only translates protobuf to these calls and `kvs2.errors` to status
codes; tests drive this class directly without a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Protocol

from kvs2 import metrics
from kvs2.conditional import ConditionalResult, ConditionalWrites
from kvs2.config import Limits
from kvs2.consistency import EVENTUAL, EndOffsetLookup, EndOffsetOracle, ReadOptions, validate, wait_fresh
from kvs2.errors import DeadlineExceeded, InvalidArgument, Kvs2Error, Unavailable, WriteOutcomeUnknown
from kvs2.kafka_io import BatchDelivery, WriteToken
from kvs2.partitioner import partition_for
from kvs2.progress import Progress
from kvs2.storage import REQUEST_ID_BYTES, SIDE_MARKER, Entry, Replica

DEFAULT_PAGE = 1000
# What a conditional record adds to the key (side-key prefix) and headers: counts against the size limit.
CONDITIONAL_OVERHEAD = len(SIDE_MARKER) + REQUEST_ID_BYTES + 64
MAX_PAGE = 10_000


class RecordWriter(Protocol):
    """What the store needs of the Kafka producer (`kvs2.kafka_io.Writer`)."""

    def max_record_bytes(self) -> int: ...

    def write(self, key: bytes, value: bytes | None) -> Future[WriteToken]: ...

    def tombstone(self, side: bytes, partition: int) -> Future[WriteToken]: ...


@dataclass(frozen=True)
class KeyRange:
    """[start, end) over raw key bytes; `end is None` means past the last key."""

    start: bytes
    end: bytes | None

    @staticmethod
    def of(start: bytes = b"", end: bytes = b"", prefix: bytes = b"") -> KeyRange:
        if prefix and (start or end):
            raise InvalidArgument("give either a prefix or start/end, not both")
        if prefix:
            return KeyRange(prefix, prefix_end(prefix))
        if end and start >= end:
            raise InvalidArgument("start must sort before end")
        return KeyRange(start, end or None)

    def __contains__(self, key: object) -> bool:
        assert isinstance(key, bytes)
        return key >= self.start and (self.end is None or key < self.end)


def prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key with `prefix` (None when the prefix is all 0xff bytes)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


@dataclass(frozen=True)
class RangeResult:
    items: list[tuple[bytes, Entry | None]]
    count: int
    next_page_token: bytes
    applied: dict[int, int]
    topic_id: str = ""  # the topic `applied` belongs to


class Store:
    def __init__(
        self,
        replica: Replica,
        writer: RecordWriter,
        progress: Progress,
        limits: Limits,
        end_offsets: EndOffsetLookup | None = None,
        conditional: ConditionalWrites | None = None,
        topic_now: Callable[[], str] | None = None,
    ) -> None:
        self._replica = replica
        self._writer = writer
        self._progress = progress
        self._end_offsets: EndOffsetLookup = end_offsets or (lambda _partitions: {})
        self._topic_now = topic_now
        self._oracle = EndOffsetOracle(self._end_offsets_of_followed_topic)
        self._max_key = min(limits.max_key_bytes, replica.max_key_bytes)
        self._max_keys = limits.max_multiget_keys
        self._conditional = conditional

    @property
    def replica(self) -> Replica:
        return self._replica

    @property
    def progress(self) -> Progress:
        return self._progress

    # ----- validation ------------------------------------------------------------------------------
    def _check_key(self, key: bytes) -> None:
        if not key:
            raise InvalidArgument("key must not be empty")
        if len(key) > self._max_key:
            raise InvalidArgument(f"key is {len(key)} bytes; keys are limited to {self._max_key} bytes")
        if key.startswith(SIDE_MARKER):
            raise InvalidArgument(f"keys starting with {SIDE_MARKER!r} are reserved for kvs2's own records")

    def _check_value(self, key: bytes, value: bytes, overhead: int = 0) -> None:
        limit = self._writer.max_record_bytes() - len(key) - overhead
        if len(value) > limit:
            raise InvalidArgument(
                f"value is {len(value)} bytes; with this key the largest value the topic accepts is "
                f"{limit} bytes (the topic's max.message.bytes less the key and record overhead)"
            )

    def check_serving(self) -> None:
        """Reads are refused until the replica has caught up with what Kafka held at start-up.

        Why: a restarted replica must never answer with data older than what it had already served.
        """
        if not self._progress.serving:
            if self._progress.now.problem:
                raise Unavailable(f"this replica is not serving reads: {self._progress.now.problem}")
            raise Unavailable("this replica is catching up with Kafka and not serving reads yet")

    def _built_from(self) -> str | None:
        """The topic id the replica must still be built from for a read to use it (None: unknown)."""
        return self._progress.now.topic_id or None

    def _end_offsets_of_followed_topic(self, partitions: Collection[int]) -> Mapping[int, int | Kvs2Error]:
        """Kafka's end offsets, proven to be those of the topic the replica follows (runs in a thread).

        Why: a topic deleted and recreated under the same name starts again at offset 0, and ListOffsets
        does not say which topic it answered for. The replica saw its topic id before this look-up
        started; if the topic still has that id after it, the topic had it throughout (ids never come
        back), so the offsets are that topic's.
        """
        expected = self._progress.now.topic_id
        ends = self._end_offsets(partitions)
        if self._topic_now is not None:
            now = self._topic_now()
            if now != expected:
                raise Unavailable(
                    f"the topic now has id {now}, this replica follows id {expected}: it was deleted and "
                    "recreated, and this replica is rebuilding from it; retry shortly"
                )
        return ends

    async def _fresh(self, options: ReadOptions, keys: Sequence[bytes] | None, timeout: float | None) -> None:
        self.check_serving()
        if options.eventual:
            return
        if options.linearizable and not options.topic_id:
            options = replace(options, topic_id=self._progress.now.topic_id)
        partitions = self._progress.now.partitions
        validate(options, partitions)
        touched = range(partitions) if keys is None else {partition_for(k, partitions) for k in keys}
        with metrics.read_wait(options):
            await wait_fresh(self._progress, self._oracle, options, touched, timeout)

    # ----- reads -----------------------------------------------------------------------------------
    def get_now(self, key: bytes) -> Entry | None:
        """An eventual Get, answered at once without the event loop (no wait can apply to it).

        Why a plain method: an eventual read is ~2 µs of LMDB; a coroutine round trip per read costs
        about as much again (bench/readpath.py). Used by `get`, the servicer and `kvs2.embedded`.
        """
        self._check_key(key)
        self.check_serving()
        return self._replica.get(key, self._progress.now.topic_id or None)

    def multi_get_now(self, keys: Sequence[bytes]) -> list[Entry | None]:
        """An eventual MultiGet, answered at once (see `get_now`)."""
        self._check_keys(keys)
        self.check_serving()
        return self._replica.multi_get(keys, self._progress.now.topic_id or None)

    def _check_keys(self, keys: Sequence[bytes]) -> None:
        if len(keys) > self._max_keys:
            raise InvalidArgument(f"MultiGet asked for {len(keys)} keys; the limit is {self._max_keys}")
        check = self._check_key
        for key in keys:
            check(key)

    async def get(
        self, key: bytes, options: ReadOptions = EVENTUAL, timeout: float | None = None
    ) -> Entry | None:
        if options.eventual:
            return self.get_now(key)
        self._check_key(key)
        await self._fresh(options, [key], timeout)
        return self._replica.get(key, self._built_from())

    async def multi_get(
        self, keys: Sequence[bytes], options: ReadOptions = EVENTUAL, timeout: float | None = None
    ) -> list[Entry | None]:
        """Values for `keys` in request order (duplicates repeat), from one consistent snapshot."""
        if options.eventual:
            return self.multi_get_now(keys)
        self._check_keys(keys)
        await self._fresh(options, keys, timeout)
        return self._replica.multi_get(keys, self._built_from())

    async def range(
        self,
        key_range: KeyRange,
        *,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        page_token: bytes = b"",
        options: ReadOptions = EVENTUAL,
        timeout: float | None = None,
    ) -> RangeResult:
        """One page of keys in order, from one read transaction, with the offsets it reflects."""
        if limit > MAX_PAGE:
            raise InvalidArgument(f"limit is {limit}; a page holds at most {MAX_PAGE} keys")
        start = key_range.start
        if page_token:
            if page_token not in key_range:
                raise InvalidArgument("page_token does not belong to this range")
            start = page_token
        await self._fresh(options, None, timeout)
        topic_id = self._built_from()
        # A count walks every key of the range and a large page thousands: in a worker thread, so the
        # loop serves other calls meanwhile (reads from several threads are safe: kvs2.storage). A
        # default page stays here: a thread hand-off costs more than reading it.
        if count_only:
            n, applied = await asyncio.to_thread(self._replica.count, start, key_range.end, topic_id)
            return RangeResult([], n, b"", applied, topic_id or "")
        limit = limit or DEFAULT_PAGE
        if limit > DEFAULT_PAGE:
            page = await asyncio.to_thread(
                functools.partial(
                    self._replica.scan, start, key_range.end, limit, keys_only=keys_only, topic_id=topic_id
                )
            )
        else:
            page = self._replica.scan(start, key_range.end, limit, keys_only=keys_only, topic_id=topic_id)
        return RangeResult(page.items, len(page.items), page.next_key or b"", page.applied, topic_id or "")

    # ----- writes ----------------------------------------------------------------------------------
    async def set(self, key: bytes, value: bytes, timeout: float | None) -> WriteToken:
        self._check_key(key)
        self._check_value(key, value)
        return await self._await_ack(self._writer.write(key, value), timeout)

    async def delete(self, key: bytes, timeout: float | None) -> WriteToken:
        """A plain tombstone, preceded by clean-up tombstones of the key's conditional records.

        Why first, in the key's partition: Kafka may drop this tombstone after delete.retention.ms, and a
        conditional record before it that outlived it would come back to life on replay. Records
        tombstoned before it are gone from the log by the time Kafka may drop it (kvs2.conditional).
        The replica must know the key's conditional records: it must be serving (else UNAVAILABLE), and it
        first applies the key's partition up to Kafka's end offset, as a linearizable read would, so
        that every conditional write acknowledged before this Delete began — through any replica — is
        among them. Only a conditional write concurrent with the Delete can escape (see README).
        """
        self._check_key(key)
        self.check_serving()
        partition = partition_for(key, self._progress.now.partitions)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self._fresh(ReadOptions(linearizable=True), [key], timeout)
        except DeadlineExceeded as exc:
            raise Unavailable(f"the Delete was not sent: {exc}") from exc
        if timeout is not None:
            timeout = max(0.0, timeout - (loop.time() - started))
        sides = self._replica.cleanup_before_delete(key)
        for side in sides:
            self._writer.tombstone(side, partition)
        return await self._await_ack(self._writer.write(key, None), timeout)

    async def write_if(
        self, key: bytes, value: bytes | None, expected_revision: int, timeout: float
    ) -> ConditionalResult:
        """Set (or, with value None, delete) only if the key's revision is `expected_revision`."""
        self._check_key(key)
        if value is not None:
            self._check_value(key, value, CONDITIONAL_OVERHEAD)
        if expected_revision < 0:
            raise InvalidArgument("if_revision must be 0 (the key must not exist) or a revision")
        if self._conditional is None:
            raise Unavailable("conditional writes are not available on this replica")
        # The verdict comes from this replica's own apply: one still catching up would keep the caller
        # waiting with an unknown outcome. Refuse before sending anything.
        self.check_serving()
        return await self._conditional.write(key, value, expected_revision, timeout)

    async def write_batch(self, items: Sequence[WriteItem], timeout: float) -> BatchResult:
        """Write many items; NOT atomic across keys: every item succeeds or fails on its own.

        Plain items are validated in one pass and handed to the producer in one call (off the event loop),
        then awaited together; conditional items run concurrently through the CAS machinery (each
        produced at once). Items still unacknowledged when `timeout` runs out are OUTCOME_UNKNOWN: they
        may still be applied. Why this shape: Python work per item is what limits a batch's throughput
        (bench/RESULTS.md, Write rows), so the common item — a valid plain put — costs one test of its
        sizes, a key and a value in two lists, and its answer read from the delivery's columns.
        """
        if len(items) > MAX_WRITE_ITEMS:
            raise InvalidArgument(f"Write carries {len(items)} items; the limit is {MAX_WRITE_ITEMS}")
        results: list[ItemResult | None] = [None] * len(items)
        plain: list[int] = []
        keys: list[bytes] = []
        values: list[bytes | None] = []
        conditional: list[int] = []
        max_key = self._max_key
        limit = self._writer.max_record_bytes()
        for i, item in enumerate(items):
            key, value = item.key, item.value
            if (
                item.if_revision is None
                and 0 < len(key) <= max_key
                and (value is None or len(key) + len(value) <= limit)
                and not key.startswith(SIDE_MARKER)
            ):
                plain.append(i)
                keys.append(key)
                values.append(value)
                continue
            try:  # the rare item: conditional, or wrong (the checks say what is wrong)
                self._check_key(key)
                if item.if_revision is None:
                    if value is not None:
                        self._check_value(key, value)
                    plain.append(i)
                    keys.append(key)
                    values.append(value)
                    continue
                if value is not None:
                    self._check_value(key, value, CONDITIONAL_OVERHEAD)
                if item.if_revision < 0:
                    raise InvalidArgument("if_revision must be 0 (the key must not exist) or a revision")
                conditional.append(i)
            except InvalidArgument as exc:
                results[i] = _failure(exc)

        async def one_conditional(i: int) -> None:
            item = items[i]
            try:
                assert item.if_revision is not None
                r = await self.write_if(item.key, item.value, item.if_revision, timeout)
            except Kvs2Error as exc:
                results[i] = _failure(exc)
                return
            status = ItemStatus.PUBLISHED if r.applied else ItemStatus.CONDITION_FAILED
            results[i] = ItemResult(status, r.partition, r.offset, r.revision)

        # Started first: each task produces its record as soon as it runs (before any await).
        cas_tasks = [asyncio.ensure_future(one_conditional(i)) for i in conditional]
        if plain:
            batch = await asyncio.to_thread(_produce_all, self._writer, keys, values)
            with contextlib.suppress(TimeoutError):
                # shield: a timeout must not cancel the shared future the poll thread still settles
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(batch.done)), timeout)
            self._collect(batch, plain, values, results, timeout)
        if cas_tasks:
            await asyncio.gather(*cas_tasks)
        never = ItemResult(ItemStatus.FAILED, error="not attempted")
        final = [never if r is None else r for r in results]
        tokens: dict[int, int] = {}
        for r in final:
            if r.offset > tokens.get(r.partition, -1) and r.status in _WRITTEN:
                tokens[r.partition] = r.offset
        return BatchResult(final, tokens)

    @staticmethod
    def _collect(
        batch: BatchDelivery,
        plain: Sequence[int],
        values: Sequence[bytes | None],
        results: list[ItemResult | None],
        timeout: float,
    ) -> None:
        """Each plain item's answer, from the delivery's columns (an offset of -1: no answer in time)."""
        partitions, offsets, errors = batch.partitions, batch.offsets, dict(batch.errors)
        published = ItemStatus.PUBLISHED
        unknown: ItemResult | None = None
        for j, i in enumerate(plain):
            offset = offsets[j]
            if offset >= 0:
                revision = offset + 1 if values[j] is not None else 0
                results[i] = ItemResult(published, partitions[j], offset, revision)
            elif j in errors:
                results[i] = _failure(errors[j])
            else:
                unknown = unknown or ItemResult(
                    ItemStatus.OUTCOME_UNKNOWN,
                    error=f"Kafka did not acknowledge the write within {timeout:.1f}s; "
                    "it may still be applied later",
                )
                results[i] = unknown

    @staticmethod
    async def _await_ack(pending: Future[WriteToken], timeout: float | None) -> WriteToken:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(pending), timeout)
        except TimeoutError as exc:
            raise WriteOutcomeUnknown(
                f"Kafka did not acknowledge the write within {timeout:.1f}s; it may still be applied later"
            ) from exc


# ----- batched writes (issue 12) -------------------------------------------------------------------
# Items per Write call. Why a bound: the reply and the pending futures of one call must fit in memory
# and in one gRPC message.
MAX_WRITE_ITEMS = 10_000
# How long a batch may wait in total for room in the producer's local queue before giving up on the
# rest of its items (they are then reported FAILED: certainly not in the log).
QUEUE_WAIT = 5.0


class ItemStatus(enum.Enum):
    PUBLISHED = "published"  # acknowledged by Kafka (conditional: the condition held, applied)
    CONDITION_FAILED = "condition_failed"  # conditional only: nothing changed
    INVALID = "invalid"  # the item itself is wrong; nothing was sent
    FAILED = "failed"  # certainly not in the log
    OUTCOME_UNKNOWN = "outcome_unknown"  # handed to Kafka, not acknowledged in time: may still apply


# WriteItem and ItemResult are made once per item of a batch: plain slotted dataclasses, because a frozen
# dataclass's __init__ (object.__setattr__ per field) costs three times as much. Treat them as values.
@dataclass(slots=True)
class WriteItem:
    """One put (`value` given) or delete (`value` None) of a batch; `if_revision` makes it conditional."""

    key: bytes
    value: bytes | None
    if_revision: int | None = None


@dataclass(slots=True)
class ItemResult:
    status: ItemStatus
    partition: int = -1
    offset: int = -1
    revision: int = 0
    error: str = ""


@dataclass(frozen=True)
class BatchResult:
    """Per-item results in request order, and the highest offset written per partition (the
    read-your-writes tokens of the whole batch)."""

    items: list[ItemResult]
    tokens: dict[int, int]


def _failure(exc: BaseException) -> ItemResult:
    if isinstance(exc, InvalidArgument):
        return ItemResult(ItemStatus.INVALID, error=str(exc))
    if isinstance(exc, WriteOutcomeUnknown):
        return ItemResult(ItemStatus.OUTCOME_UNKNOWN, error=str(exc))
    return ItemResult(ItemStatus.FAILED, error=str(exc))


_WRITTEN = (ItemStatus.PUBLISHED, ItemStatus.CONDITION_FAILED)


def _produce_all(
    writer: RecordWriter, keys: Sequence[bytes], values: Sequence[bytes | None]
) -> BatchDelivery:
    """The producer's batch call when it has one (`kvs2.kafka_io.Writer.write_many`), else one by one."""
    many = getattr(writer, "write_many", None)
    if many is not None:
        out: BatchDelivery = many(keys, values, QUEUE_WAIT)
        return out
    batch = BatchDelivery(keys)
    for index, (key, value) in enumerate(zip(keys, values, strict=True)):
        try:
            sent = writer.write(key, value)
        except Kvs2Error as exc:
            batch.settle(index, exc)
            continue
        sent.add_done_callback(functools.partial(_settle_from, batch, index))
    return batch


def _settle_from(batch: BatchDelivery, index: int, sent: Future[WriteToken]) -> None:
    error = sent.exception()
    if error is None:
        batch.settle(index, sent.result())
    else:
        batch.settle(index, error if isinstance(error, Kvs2Error) else Unavailable(str(error)))
