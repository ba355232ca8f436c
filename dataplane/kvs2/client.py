"""Typed Python clients for kvs2: `Client` (blocking) and `AsyncClient` (asyncio).

They own the channel, give every call a deadline, return plain Python values, and carry the
consistency machinery for you:
  - `read_your_writes=True` remembers the position of every write this client made and sends them
    as tokens with each read, so a read through *any* replica sees this client's own writes;
  - `consistency="linearizable"` and `max_lag=` map to the request's ReadOptions;
  - reads are retried on UNAVAILABLE (a replica restarting or still catching up) with backoff, all
    within the client's `timeout` (a deadline for the whole read, not for each attempt);
    writes are never retried automatically (an unacknowledged write may still be applied);
  - `watch()` follows a key, prefix or range and reconnects after a disconnect from the positions it
    has covered, so the caller sees no gap and no repeat.
Both classes share the request builders and reply parsers below; only the calls differ.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvs2._proto import kvs2_pb2 as pb
from kvs2._proto import kvs2_pb2_grpc as pb_grpc
from kvs2.credentials import ClientTls

Consistency = Literal["eventual", "linearizable"]
T = TypeVar("T")
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE}
_CONSISTENCY = {"eventual": pb.ReadOptions.EVENTUAL, "linearizable": pb.ReadOptions.LINEARIZABLE}


@dataclass(frozen=True, slots=True)
class Value:
    data: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class Written:
    """Where a write landed; pass it as `after=[written]` to read it from any replica."""

    partition: int
    offset: int
    topic_id: str = ""  # the topic written to: a recreated topic's offsets never count for it


@dataclass(frozen=True, slots=True)
class CasResult:
    """A conditional write's verdict: every replica reached the same one."""

    applied: bool
    revision: int  # after the write when applied; the key's current revision (0: absent) when not
    written: Written

    def __bool__(self) -> bool:
        return self.applied


def _cas(reply: pb.SetReply | pb.DeleteReply) -> CasResult:
    return CasResult(
        reply.status == pb.PUBLISHED, reply.revision, Written(reply.partition, reply.offset, reply.topic_id)
    )


@dataclass(frozen=True, slots=True)
class Item:
    key: bytes
    value: bytes | None  # None with keys_only
    revision: int


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Item]
    next_page_token: bytes
    applied: dict[int, int]  # the replica's next offset per partition this page reflects
    topic_id: str = ""  # the topic `applied` belongs to: pass it to watch() with them


@dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["put", "delete", "progress"]
    key: bytes = b""
    value: bytes | None = None
    revision: int = 0
    partition: int = -1
    offset: int = -1
    applied: dict[int, int] = field(default_factory=dict)


# ----- shared: requests and replies ----------------------------------------------------------------
@dataclass
class _Session:
    """Positions of this client's own writes: the highest offset written per partition."""

    read_your_writes: bool
    written: dict[int, int] = field(default_factory=dict)
    topic_id: str = ""  # the topic of `written`

    def note(self, w: Written) -> Written:
        if w.topic_id != self.topic_id:  # the topic was recreated: older positions name nothing in it
            self.written.clear()
            self.topic_id = w.topic_id
        if w.offset > self.written.get(w.partition, -1):
            self.written[w.partition] = w.offset
        return w

    def options(
        self, consistency: Consistency, after: Iterable[Written], max_lag: int, max_staleness_ms: int = 0
    ) -> pb.ReadOptions:
        after = list(after)
        tokens = {(w.partition, w.offset) for w in after}
        topics = {w.topic_id for w in after if w.topic_id}
        if self.read_your_writes:
            tokens.update(self.written.items())
            if self.written and self.topic_id:
                topics.add(self.topic_id)
        if len(topics) > 1:
            raise ValueError(f"the tokens come from different topics (ids {sorted(topics)})")
        return pb.ReadOptions(
            consistency=pb.ReadOptions.LINEARIZABLE
            if consistency == "linearizable"
            else pb.ReadOptions.EVENTUAL,
            after=[pb.Position(partition=p, offset=o) for p, o in sorted(tokens)],
            max_lag_records=max_lag,
            max_staleness_ms=max_staleness_ms,
            topic_id=topics.pop() if topics else "",
        )


def _value(status: int, data: bytes, revision: int) -> Value | None:
    return Value(data, revision) if status == pb.OK else None


def _page(reply: pb.RangeReply, keys_only: bool) -> Page:
    items = [Item(i.key, None if keys_only else i.value, i.revision) for i in reply.items]
    applied = {p.partition: p.offset for p in reply.applied}
    return Page(items, reply.next_page_token, applied, reply.topic_id)


def _range_request(
    start: bytes, end: bytes, prefix: bytes, limit: int, keys_only: bool, count_only: bool, page_token: bytes
) -> pb.RangeRequest:
    return pb.RangeRequest(
        start=start,
        end=end,
        prefix=prefix,
        limit=limit,
        keys_only=keys_only,
        count_only=count_only,
        page_token=page_token,
    )


def watch_request(
    key: bytes,
    prefix: bytes,
    start: bytes,
    end: bytes,
    positions: Mapping[int, int],
    interval_ms: int,
    topic_id: str = "",
) -> pb.WatchRequest:
    request = pb.WatchRequest(
        key=key, prefix=prefix, start=start, end=end, progress_interval_ms=interval_ms, topic_id=topic_id
    )
    # `from` is a Python keyword, hence getattr.
    getattr(request, "from").extend(pb.Position(partition=p, offset=o) for p, o in sorted(positions.items()))
    return request


def _event(msg: pb.WatchEvent, positions: dict[int, int]) -> Event:
    """Convert one event and advance the resume positions past it."""
    if msg.type == pb.WatchEvent.PROGRESS:
        applied = {p.partition: p.offset for p in msg.applied}
        positions.update(applied)
        return Event("progress", applied=applied)
    positions[msg.position.partition] = msg.position.offset + 1
    return Event(
        "put" if msg.type == pb.WatchEvent.PUT else "delete",
        key=msg.key,
        value=msg.value if msg.type == pb.WatchEvent.PUT else None,
        revision=msg.revision,
        partition=msg.position.partition,
        offset=msg.position.offset,
    )


@dataclass
class _WatchCursor:
    """A watch's resume state, shared by the blocking and asyncio clients: where it has got to, and
    whether (and after how long) to reconnect after an error."""

    key: bytes
    prefix: bytes
    start: bytes
    end: bytes
    positions: dict[int, int]
    interval_ms: int
    reconnect: bool
    topic_id: str = ""  # the topic `positions` belong to
    attempt: int = 0

    def request(self) -> pb.WatchRequest:
        return watch_request(
            self.key, self.prefix, self.start, self.end, self.positions, self.interval_ms, self.topic_id
        )

    def advance(self, msg: pb.WatchEvent) -> Event:
        self.attempt = 0
        if msg.type == pb.WatchEvent.PROGRESS and msg.topic_id:
            self.topic_id = msg.topic_id
        return _event(msg, self.positions)

    def retry_delay(self, exc: grpc.RpcError) -> float:
        """Seconds to wait before resuming; re-raises what must not be retried."""
        if not self.reconnect or not _retryable(exc):
            raise exc
        self.attempt += 1
        return _backoff(self.attempt - 1)


def _retryable(exc: grpc.RpcError) -> bool:
    return isinstance(exc, grpc.Call) and exc.code() in _RETRYABLE


def _secure(
    tls: ClientTls | None, credentials: grpc.ChannelCredentials | None
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, str]]]:
    """Channel credentials and options: explicit `credentials` win; `tls` adds the server-name override."""
    if tls is None:
        return credentials, []
    return credentials or tls.credentials(), tls.options()


def _backoff(attempt: int) -> float:
    return float(min(0.1 * 2.0**attempt, 2.0))


# Why a floor: gRPC rejects a zero or negative timeout; the first attempt always gets the whole timeout.
_MIN_ATTEMPT = 0.001


def _out_of_time(deadline: float, pause: float) -> bool:
    """Whether a retry after `pause` would leave no time for the attempt: a read's `timeout` bounds
    the whole call, retries included, never each attempt (a read used to take (retries + 1) x timeout)."""
    return time.monotonic() + pause >= deadline


# ----- batched writes (issue 12) ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WriteOp:
    """One item of `write_batch`: a put (`value` given) or a delete (`value` None), optionally CAS."""

    key: bytes
    value: bytes | None
    if_revision: int | None = None


ItemStatus = Literal["published", "condition_failed", "invalid", "failed", "outcome_unknown"]
_ITEM_STATUS: dict[int, ItemStatus] = {
    pb.WriteItemResult.PUBLISHED: "published",
    pb.WriteItemResult.CONDITION_FAILED: "condition_failed",
    pb.WriteItemResult.INVALID: "invalid",
    pb.WriteItemResult.FAILED: "failed",
    pb.WriteItemResult.OUTCOME_UNKNOWN: "outcome_unknown",
}


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """One item's result. `outcome_unknown` means the write MAY STILL BE APPLIED; `failed` and
    `invalid` mean it is certainly not in the log."""

    status: ItemStatus
    written: Written | None  # where Kafka stored it (published, condition_failed)
    revision: int
    error: str

    @property
    def ok(self) -> bool:
        return self.status == "published"


@dataclass(frozen=True, slots=True)
class BatchWritten:
    """Per-item outcomes in request order, and the batch's read-your-writes tokens."""

    results: list[ItemOutcome]
    tokens: list[Written]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


class BatchWriteError(Exception):
    """`set_many`: some items were not published. `results` says which (and which may still apply)."""

    def __init__(self, results: BatchWritten) -> None:
        bad = [(i, r) for i, r in enumerate(results.results) if not r.ok]
        first = bad[0][1]
        super().__init__(f"{len(bad)} of {len(results.results)} items not published; first: {first.error}")
        self.results = results


def _write_request(ops: Iterable[WriteOp]) -> pb.WriteRequest:
    request = pb.WriteRequest()
    add = request.items.add
    for op in ops:
        if op.if_revision is None:
            add(key=op.key, value=op.value or b"", delete=op.value is None)
        else:
            add(key=op.key, value=op.value or b"", delete=op.value is None, if_revision=op.if_revision)
    return request


def _batch(reply: pb.WriteReply, session: _Session) -> BatchWritten:
    results = []
    for r in reply.results:
        status = _ITEM_STATUS[r.status]
        written = (
            Written(r.partition, r.offset, reply.topic_id)
            if status in ("published", "condition_failed")
            else None
        )
        results.append(ItemOutcome(status, written, r.revision, r.error))
    tokens = [session.note(Written(p.partition, p.offset, reply.topic_id)) for p in reply.tokens]
    return BatchWritten(results, tokens)


def _puts(items: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> list[WriteOp]:
    pairs = items.items() if isinstance(items, Mapping) else items
    return [WriteOp(k, v) for k, v in pairs]


def _all_published(result: BatchWritten) -> list[Written]:
    if not result.ok:
        raise BatchWriteError(result)
    return [r.written for r in result.results if r.written is not None]


# ----- load balancing over replicas (issue 12 item 5) ------------------------------------------------
# A channel to one address talks to one replica forever (HTTP/2 connections are long-lived; kube-proxy
# balances connections, not calls). A multi-address target — `dns:///store-headless.ns:50051` (every pod
# IP of a headless Service) or `ipv4:10.0.0.1:50051,10.0.0.2:50051` — with round_robin spreads the calls
# over every replica, and client-side health checking skips a replica whose gRPC health says NOT_SERVING
# (catching up, producer down) until it serves again.
HEALTH_SERVICE = "kvs2.Kvs2"
ROUND_ROBIN_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": HEALTH_SERVICE}}
)


def balanced(target: str) -> bool:
    """Whether `target` names several replicas (a resolver scheme), so calls should be spread."""
    return target.startswith(("dns:", "ipv4:", "ipv6:"))


def channel_options(target: str, round_robin: bool | None = None) -> list[tuple[str, str | int]]:
    """gRPC channel options: round_robin + health checking for multi-address targets (or when asked)."""
    if round_robin is None:
        round_robin = balanced(target)
    if not round_robin:
        return []
    return [("grpc.service_config", ROUND_ROBIN_CONFIG)]


# ----- blocking client -------------------------------------------------------------------------------
class Client:
    """`tls` (files, see kvs2.credentials.ClientTls) or ready `credentials` make the channel TLS."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        read_your_writes: bool = False,
        retries: int = 3,
        round_robin: bool | None = None,
        tls: ClientTls | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`target`: HOST:PORT of one replica, or `dns:///headless-service:50051` / `ipv4:A:P,B:P` for
        calls spread over replicas (`round_robin`: None = decide from the target; see `channel_options`)."""
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self._session = _Session(read_your_writes)
        creds, tls_options = _secure(tls, credentials)
        options = [*channel_options(target, round_robin), *tls_options]
        self._channel = (
            grpc.secure_channel(target, creds, options)
            if creds
            else grpc.insecure_channel(target, options=options)
        )
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

    def _read(self, call: Callable[[float], T]) -> T:
        """`call(timeout)` until it answers, retried on UNAVAILABLE; `self.timeout` bounds the whole."""
        deadline = time.monotonic() + self.timeout
        for attempt in range(self.retries + 1):
            try:
                return call(max(deadline - time.monotonic(), _MIN_ATTEMPT))
            except grpc.RpcError as exc:
                pause = _backoff(attempt)
                if attempt == self.retries or not _retryable(exc) or _out_of_time(deadline, pause):
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def get(
        self,
        key: bytes,
        *,
        consistency: Consistency = "eventual",
        after: Iterable[Written] = (),
        max_lag: int = 0,
        max_staleness_ms: int = 0,
    ) -> Value | None:
        request = pb.GetRequest(
            key=key, read=self._session.options(consistency, after, max_lag, max_staleness_ms)
        )
        reply = self._read(lambda t: self._stub.Get(request, timeout=t))
        return _value(reply.status, reply.data, reply.revision)

    def multi_get(
        self,
        keys: Sequence[bytes],
        *,
        consistency: Consistency = "eventual",
        after: Iterable[Written] = (),
        max_lag: int = 0,
        max_staleness_ms: int = 0,
    ) -> list[tuple[bytes, Value | None]]:
        read = self._session.options(consistency, after, max_lag, max_staleness_ms)
        request = pb.MultiGetRequest(keys=list(keys), read=read)
        reply = self._read(lambda t: self._stub.MultiGet(request, timeout=t))
        return [(p.key, _value(p.status, p.data, p.revision)) for p in reply.parts]

    def set(self, key: bytes, value: bytes) -> Written:
        reply = self._stub.Set(pb.SetRequest(key=key, value=value), timeout=self.timeout)
        return self._session.note(Written(reply.partition, reply.offset, reply.topic_id))

    def delete(self, key: bytes) -> Written:
        reply = self._stub.Delete(pb.DeleteRequest(key=key), timeout=self.timeout)
        return self._session.note(Written(reply.partition, reply.offset, reply.topic_id))

    def set_if(self, key: bytes, value: bytes, revision: int) -> CasResult:
        """Compare-and-set: write only if the key's revision is `revision` (0: must not exist)."""
        reply = self._stub.Set(
            pb.SetRequest(key=key, value=value, if_revision=revision), timeout=self.timeout
        )
        result = _cas(reply)
        self._session.note(result.written)
        return result

    def delete_if(self, key: bytes, revision: int) -> CasResult:
        request = pb.DeleteRequest(key=key, if_revision=revision)
        result = _cas(self._stub.Delete(request, timeout=self.timeout))
        self._session.note(result.written)
        return result

    def write_batch(self, ops: Iterable[WriteOp]) -> BatchWritten:
        """Many puts/deletes in one call. NOT atomic across keys: check each item's outcome.
        Never retried automatically (an unacknowledged item may still be applied)."""
        return _batch(self._stub.Write(_write_request(ops), timeout=self.timeout), self._session)

    def set_many(self, items: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> list[Written]:
        """Put many keys in one call; raises `BatchWriteError` (with every item's outcome) unless all
        were published."""
        return _all_published(self.write_batch(_puts(items)))

    def range(
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
        """One page; continue with `page_token=page.next_page_token` until it is empty."""
        request = _range_request(start, end, prefix, limit, keys_only, False, page_token)
        request.read.CopyFrom(self._session.options(consistency, after, 0))
        reply = self._read(lambda t: self._stub.Range(request, timeout=t))
        return _page(reply, keys_only)

    def scan(
        self, start: bytes = b"", end: bytes = b"", *, prefix: bytes = b"", limit: int = 0
    ) -> Iterator[Item]:
        """Every key in the range, page after page (each page its own snapshot)."""
        token = b""
        while True:
            page = self.range(start, end, prefix=prefix, limit=limit, page_token=token)
            yield from page.items
            if not page.next_page_token:
                return
            token = page.next_page_token

    def count(self, start: bytes = b"", end: bytes = b"", *, prefix: bytes = b"") -> int:
        request = _range_request(start, end, prefix, 0, False, True, b"")
        reply = self._read(lambda t: self._stub.Range(request, timeout=t))
        return int(reply.count)

    def watch(
        self,
        *,
        key: bytes = b"",
        prefix: bytes = b"",
        start: bytes = b"",
        end: bytes = b"",
        from_: Mapping[int, int] | None = None,
        progress_interval_ms: int = 1000,
        reconnect: bool = True,
        topic_id: str = "",
    ) -> Iterator[Event]:
        """Changes in apply order, forever; after a disconnect it resumes where it stopped.
        `topic_id` is the topic `from_` belongs to (a Page's), checked by the replica."""
        cursor = _WatchCursor(
            key, prefix, start, end, dict(from_ or {}), progress_interval_ms, reconnect, topic_id
        )
        while True:
            try:
                for msg in self._stub.Watch(cursor.request()):
                    yield cursor.advance(msg)
                return
            except grpc.RpcError as exc:
                time.sleep(cursor.retry_delay(exc))

    def health(self, service: str = "") -> str:
        """ "SERVING", "NOT_SERVING", … or "UNREACHABLE" when the server does not answer."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def replica_status(self) -> pb.ReplicaStatusReply:
        """The replica's applied offset, Kafka's end offset and lag per partition (`kvs2 status`)."""
        reply: pb.ReplicaStatusReply = self._stub.ReplicaStatus(
            pb.ReplicaStatusRequest(), timeout=self.timeout
        )
        return reply


# ----- asyncio client --------------------------------------------------------------------------------
class AsyncClient:
    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        read_your_writes: bool = False,
        retries: int = 3,
        round_robin: bool | None = None,
        tls: ClientTls | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`target`: HOST:PORT of one replica, or `dns:///headless-service:50051` / `ipv4:A:P,B:P` for
        calls spread over replicas (`round_robin`: None = decide from the target; see `channel_options`)."""
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self._session = _Session(read_your_writes)
        creds, tls_options = _secure(tls, credentials)
        options = [*channel_options(target, round_robin), *tls_options]
        self._channel = (
            grpc.aio.secure_channel(target, creds, options)
            if creds
            else grpc.aio.insecure_channel(target, options=options)
        )
        self._stub = pb_grpc.Kvs2Stub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def _read(self, call: Callable[[float], Awaitable[T]]) -> T:
        """`call(timeout)` until it answers, retried on UNAVAILABLE; `self.timeout` bounds the whole."""
        deadline = time.monotonic() + self.timeout
        for attempt in range(self.retries + 1):
            try:
                return await call(max(deadline - time.monotonic(), _MIN_ATTEMPT))
            except grpc.RpcError as exc:
                pause = _backoff(attempt)
                if attempt == self.retries or not _retryable(exc) or _out_of_time(deadline, pause):
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def get(
        self,
        key: bytes,
        *,
        consistency: Consistency = "eventual",
        after: Iterable[Written] = (),
        max_lag: int = 0,
        max_staleness_ms: int = 0,
    ) -> Value | None:
        request = pb.GetRequest(
            key=key, read=self._session.options(consistency, after, max_lag, max_staleness_ms)
        )
        reply = await self._read(lambda t: self._stub.Get(request, timeout=t))
        return _value(reply.status, reply.data, reply.revision)

    async def multi_get(
        self,
        keys: Sequence[bytes],
        *,
        consistency: Consistency = "eventual",
        after: Iterable[Written] = (),
        max_lag: int = 0,
        max_staleness_ms: int = 0,
    ) -> list[tuple[bytes, Value | None]]:
        read = self._session.options(consistency, after, max_lag, max_staleness_ms)
        request = pb.MultiGetRequest(keys=list(keys), read=read)
        reply = await self._read(lambda t: self._stub.MultiGet(request, timeout=t))
        return [(p.key, _value(p.status, p.data, p.revision)) for p in reply.parts]

    async def set(self, key: bytes, value: bytes) -> Written:
        reply = await self._stub.Set(pb.SetRequest(key=key, value=value), timeout=self.timeout)
        return self._session.note(Written(reply.partition, reply.offset, reply.topic_id))

    async def delete(self, key: bytes) -> Written:
        reply = await self._stub.Delete(pb.DeleteRequest(key=key), timeout=self.timeout)
        return self._session.note(Written(reply.partition, reply.offset, reply.topic_id))

    async def set_if(self, key: bytes, value: bytes, revision: int) -> CasResult:
        request = pb.SetRequest(key=key, value=value, if_revision=revision)
        result = _cas(await self._stub.Set(request, timeout=self.timeout))
        self._session.note(result.written)
        return result

    async def delete_if(self, key: bytes, revision: int) -> CasResult:
        request = pb.DeleteRequest(key=key, if_revision=revision)
        result = _cas(await self._stub.Delete(request, timeout=self.timeout))
        self._session.note(result.written)
        return result

    async def write_batch(self, ops: Iterable[WriteOp]) -> BatchWritten:
        """As `Client.write_batch`."""
        return _batch(await self._stub.Write(_write_request(ops), timeout=self.timeout), self._session)

    async def set_many(self, items: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> list[Written]:
        """As `Client.set_many`."""
        return _all_published(await self.write_batch(_puts(items)))

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
        request = _range_request(start, end, prefix, limit, keys_only, False, page_token)
        request.read.CopyFrom(self._session.options(consistency, after, 0))
        reply = await self._read(lambda t: self._stub.Range(request, timeout=t))
        return _page(reply, keys_only)

    async def watch(
        self,
        *,
        key: bytes = b"",
        prefix: bytes = b"",
        start: bytes = b"",
        end: bytes = b"",
        from_: Mapping[int, int] | None = None,
        progress_interval_ms: int = 1000,
        reconnect: bool = True,
        topic_id: str = "",
    ) -> AsyncIterator[Event]:
        cursor = _WatchCursor(
            key, prefix, start, end, dict(from_ or {}), progress_interval_ms, reconnect, topic_id
        )
        while True:
            try:
                async for msg in self._stub.Watch(cursor.request()):
                    yield cursor.advance(msg)
                return
            except grpc.RpcError as exc:
                await asyncio.sleep(cursor.retry_delay(exc))
