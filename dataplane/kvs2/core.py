"""The store's operations, independent of any transport.

The gRPC servicer (`kvs2.server`) only translates protobuf to these calls and `kvs2.errors` to status
codes; tests drive this class directly without a network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Protocol

from kvs2.config import Limits
from kvs2.errors import InvalidArgument, Unavailable, WriteOutcomeUnknown
from kvs2.kafka_io import WriteToken
from kvs2.progress import Progress
from kvs2.storage import Entry, Replica


class RecordWriter(Protocol):
    """What the store needs of the Kafka producer (`kvs2.kafka_io.Writer`)."""

    def max_record_bytes(self) -> int: ...

    def write(self, key: bytes, value: bytes | None) -> Future[WriteToken]: ...


class Store:
    def __init__(self, replica: Replica, writer: RecordWriter, progress: Progress, limits: Limits) -> None:
        self._replica = replica
        self._writer = writer
        self._progress = progress
        self._max_key = min(limits.max_key_bytes, replica.max_key_bytes)
        self._max_keys = limits.max_multiget_keys

    # ----- validation ------------------------------------------------------------------------------
    def _check_key(self, key: bytes) -> None:
        if not key:
            raise InvalidArgument("key must not be empty")
        if len(key) > self._max_key:
            raise InvalidArgument(f"key is {len(key)} bytes; keys are limited to {self._max_key} bytes")

    def _check_value(self, key: bytes, value: bytes) -> None:
        limit = self._writer.max_record_bytes() - len(key)
        if len(value) > limit:
            raise InvalidArgument(
                f"value is {len(value)} bytes; with this key the largest value the topic accepts is "
                f"{limit} bytes (the topic's max.message.bytes less the key and record overhead)"
            )

    def _check_serving(self) -> None:
        """Reads are refused until the replica has caught up with what Kafka held at start-up.

        Why: a restarted replica must never answer with data older than what it had already served.
        """
        if not self._progress.serving:
            raise Unavailable("this replica is catching up with Kafka and not serving reads yet")

    # ----- reads -----------------------------------------------------------------------------------
    def get(self, key: bytes) -> Entry | None:
        self._check_key(key)
        self._check_serving()
        return self._replica.get(key)

    def multi_get(self, keys: Sequence[bytes]) -> list[Entry | None]:
        """Values for `keys` in request order (duplicates repeat), from one consistent snapshot."""
        if len(keys) > self._max_keys:
            raise InvalidArgument(f"MultiGet asked for {len(keys)} keys; the limit is {self._max_keys}")
        for key in keys:
            self._check_key(key)
        self._check_serving()
        return self._replica.multi_get(keys)

    # ----- writes ----------------------------------------------------------------------------------
    async def set(self, key: bytes, value: bytes, timeout: float | None) -> WriteToken:
        self._check_key(key)
        self._check_value(key, value)
        return await self._await_ack(self._writer.write(key, value), timeout)

    async def delete(self, key: bytes, timeout: float | None) -> WriteToken:
        self._check_key(key)
        return await self._await_ack(self._writer.write(key, None), timeout)

    @staticmethod
    async def _await_ack(pending: Future[WriteToken], timeout: float | None) -> WriteToken:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(pending), timeout)
        except TimeoutError as exc:
            raise WriteOutcomeUnknown(
                f"Kafka did not acknowledge the write within {timeout:.1f}s; it may still be applied later"
            ) from exc
