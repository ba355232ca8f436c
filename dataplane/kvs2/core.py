"""The store's operations, independent of any transport.

The gRPC servicer (`kvs2.server`) only translates protobuf to these calls and `kvs2.errors` to status
codes; tests drive this class directly without a network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from kvs2 import metrics
from kvs2.conditional import ConditionalResult, ConditionalWrites
from kvs2.config import Limits
from kvs2.consistency import EVENTUAL, EndOffsetOracle, ReadOptions, validate, wait_fresh
from kvs2.errors import InvalidArgument, Unavailable, WriteOutcomeUnknown
from kvs2.kafka_io import WriteToken
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


class Store:
    def __init__(
        self,
        replica: Replica,
        writer: RecordWriter,
        progress: Progress,
        limits: Limits,
        end_offsets: Callable[[], Mapping[int, int]] | None = None,
        conditional: ConditionalWrites | None = None,
    ) -> None:
        self._replica = replica
        self._writer = writer
        self._progress = progress
        self._oracle = EndOffsetOracle(end_offsets or (lambda: {}))
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
            raise Unavailable("this replica is catching up with Kafka and not serving reads yet")

    async def _fresh(self, options: ReadOptions, keys: Sequence[bytes] | None, timeout: float | None) -> None:
        self.check_serving()
        if options.eventual:
            return
        partitions = self._progress.now.partitions
        validate(options, partitions)
        touched = range(partitions) if keys is None else {partition_for(k, partitions) for k in keys}
        with metrics.read_wait(options):
            await wait_fresh(self._progress, self._oracle, options, touched, timeout)

    # ----- reads -----------------------------------------------------------------------------------
    async def get(
        self, key: bytes, options: ReadOptions = EVENTUAL, timeout: float | None = None
    ) -> Entry | None:
        self._check_key(key)
        await self._fresh(options, [key], timeout)
        return self._replica.get(key)

    async def multi_get(
        self, keys: Sequence[bytes], options: ReadOptions = EVENTUAL, timeout: float | None = None
    ) -> list[Entry | None]:
        """Values for `keys` in request order (duplicates repeat), from one consistent snapshot."""
        if len(keys) > self._max_keys:
            raise InvalidArgument(f"MultiGet asked for {len(keys)} keys; the limit is {self._max_keys}")
        for key in keys:
            self._check_key(key)
        await self._fresh(options, keys, timeout)
        return self._replica.multi_get(keys)

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
        if count_only:
            n, applied = self._replica.count(start, key_range.end)
            return RangeResult([], n, b"", applied)
        page = self._replica.scan(start, key_range.end, limit or DEFAULT_PAGE, keys_only=keys_only)
        return RangeResult(page.items, len(page.items), page.next_key or b"", page.applied)

    # ----- writes ----------------------------------------------------------------------------------
    async def set(self, key: bytes, value: bytes, timeout: float | None) -> WriteToken:
        self._check_key(key)
        self._check_value(key, value)
        return await self._await_ack(self._writer.write(key, value), timeout)

    async def delete(self, key: bytes, timeout: float | None) -> WriteToken:
        self._check_key(key)
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

    @staticmethod
    async def _await_ack(pending: Future[WriteToken], timeout: float | None) -> WriteToken:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(pending), timeout)
        except TimeoutError as exc:
            raise WriteOutcomeUnknown(
                f"Kafka did not acknowledge the write within {timeout:.1f}s; it may still be applied later"
            ) from exc
