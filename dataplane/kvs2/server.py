"""The gRPC face of a replica: the Kvs2 servicer, health, reflection, and the process's lifecycle.

The servicer only translates protobuf ⇄ `kvs2.core.Store` calls and `kvs2.errors` ⇄ status codes
(`STATUS_OF`, the one table). Everything that knows Kafka or LMDB lives below the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from kvs2 import errors, eventloop, metrics
from kvs2._proto import kvs2_pb2 as pb
from kvs2._proto import kvs2_pb2_grpc as pb_grpc
from kvs2.assembly import build_parts
from kvs2.authz import AuthorizationInterceptor
from kvs2.bootstrap import bootstrap_in_child
from kvs2.config import ServeSettings
from kvs2.consistency import EVENTUAL, ReadOptions
from kvs2.core import ItemStatus, KeyRange, Store, WriteItem
from kvs2.credentials import add_port
from kvs2.datachannel import DataListener
from kvs2.guard import COUNTERS
from kvs2.health_port import start_health_server
from kvs2.ingest import Ingester
from kvs2.interceptors import MetricsInterceptor
from kvs2.kafka_io import WriteToken
from kvs2.observe import Observer
from kvs2.progress import Progress, Snapshot
from kvs2.redis_server import start_redis
from kvs2.restart import RestartToRebuild, take_carried
from kvs2.snapshot import DataOffer, Header, SnapshotSource, Trailer
from kvs2.storage import Outcome
from kvs2.watch import Progressed, watch
from kvs2.workers import FanIn, Fanout, exited, fork_followers

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Kvs2"].full_name  # "kvs2.Kvs2"

# The one table from core errors to gRPC status codes; the most specific class wins (MRO order).
STATUS_OF: dict[type[errors.Kvs2Error], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.HistoryUnavailable: grpc.StatusCode.OUT_OF_RANGE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Kvs2Error: grpc.StatusCode.INTERNAL,
}

# Leave this much of the client's deadline to carry our answer back (UNAVAILABLE beats a bare timeout).
_DEADLINE_MARGIN = 0.05

T = TypeVar("T")


def status_of(exc: errors.Kvs2Error) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


Context = grpc.aio.ServicerContext[object, object]


async def _translate(context: Context, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except errors.Kvs2Error as exc:
        await context.abort(status_of(exc), str(exc))
        raise AssertionError("unreachable") from exc  # abort() raises


def _read_options(msg: pb.ReadOptions) -> ReadOptions:
    if not msg.ByteSize():  # absent or all defaults: the common eventual read, without building one
        return EVENTUAL
    return ReadOptions(
        linearizable=msg.consistency == pb.ReadOptions.LINEARIZABLE,
        after=tuple(WriteToken(p.partition, p.offset) for p in msg.after),
        max_lag_records=msg.max_lag_records,
        max_staleness=msg.max_staleness_ms / 1000,
        topic_id=msg.topic_id,
    )


def _positions(offsets: Mapping[int, int]) -> list[pb.Position]:
    return [pb.Position(partition=p, offset=o) for p, o in sorted(offsets.items())]


class Kvs2Servicer(pb_grpc.Kvs2Servicer):
    def __init__(
        self,
        store: Store,
        default_timeout: float,
        snapshots: SnapshotSource | None = None,
        *,
        topic: str = "",
    ) -> None:
        self._store = store
        self._default_timeout = default_timeout
        self._snapshots = snapshots
        self._topic = topic

    def _timeout(self, context: Context) -> float:
        """Time left: the client's deadline less a margin to carry our answer back, else the default."""
        remaining = context.time_remaining()
        if remaining is None:
            return self._default_timeout
        return max(0.0, min(remaining - _DEADLINE_MARGIN, self._default_timeout))

    async def Get(self, request: pb.GetRequest, context: Context) -> pb.GetReply:  # noqa: N802 - gRPC name
        # No closure, no `_translate` and no deadline look-up for an eventual read: each costs about as
        # much as the LMDB read itself (bench/readpath.py).
        try:
            options = _read_options(request.read)
            if options.eventual:
                entry = self._store.get_now(request.key)
            else:
                entry = await self._store.get(request.key, options, self._timeout(context))
        except errors.Kvs2Error as exc:
            await context.abort(status_of(exc), str(exc))
            raise AssertionError("unreachable") from exc  # abort() raises
        if entry is None:
            return pb.GetReply(status=pb.NOT_FOUND)
        return pb.GetReply(status=pb.OK, data=entry.value, revision=entry.revision)

    async def MultiGet(self, request: pb.MultiGetRequest, context: Context) -> pb.MultiGetReply:  # noqa: N802
        keys = list(request.keys)
        try:
            options = _read_options(request.read)
            if options.eventual:
                entries = self._store.multi_get_now(keys)
            else:
                entries = await self._store.multi_get(keys, options, self._timeout(context))
        except errors.Kvs2Error as exc:
            await context.abort(status_of(exc), str(exc))
            raise AssertionError("unreachable") from exc  # abort() raises
        reply = pb.MultiGetReply()
        # `parts.add(...)` per key is the cheapest way measured (a list of part messages costs 1.5-3x;
        # positional access to the entries or decoding raw LMDB values here saved under 15 %).
        add = reply.parts.add
        not_found = pb.NOT_FOUND
        for key, entry in zip(keys, entries, strict=True):
            if entry is None:
                add(key=key, status=not_found)
            else:
                add(key=key, data=entry.value, revision=entry.revision)
        return reply

    async def Set(self, request: pb.SetRequest, context: Context) -> pb.SetReply:  # noqa: N802
        async def call() -> pb.SetReply:
            topic_id = self._store.progress.now.topic_id  # the topic this write goes to
            if request.HasField("if_revision"):
                result = await self._store.write_if(
                    request.key, request.value, request.if_revision, self._timeout(context)
                )
                return pb.SetReply(
                    status=pb.PUBLISHED if result.applied else pb.CONDITION_FAILED,
                    partition=result.partition,
                    offset=result.offset,
                    revision=result.revision,
                    topic_id=topic_id,
                )
            token = await self._store.set(request.key, request.value, self._timeout(context))
            return pb.SetReply(
                status=pb.PUBLISHED,
                partition=token.partition,
                offset=token.offset,
                revision=token.offset + 1,
                topic_id=topic_id,
            )

        return await _translate(context, call)

    async def Delete(self, request: pb.DeleteRequest, context: Context) -> pb.DeleteReply:  # noqa: N802
        async def call() -> pb.DeleteReply:
            topic_id = self._store.progress.now.topic_id  # the topic this write goes to
            if request.HasField("if_revision"):
                result = await self._store.write_if(
                    request.key, None, request.if_revision, self._timeout(context)
                )
                return pb.DeleteReply(
                    status=pb.PUBLISHED if result.applied else pb.CONDITION_FAILED,
                    partition=result.partition,
                    offset=result.offset,
                    revision=result.revision,
                    topic_id=topic_id,
                )
            token = await self._store.delete(request.key, self._timeout(context))
            return pb.DeleteReply(partition=token.partition, offset=token.offset, topic_id=topic_id)

        return await _translate(context, call)

    async def Range(self, request: pb.RangeRequest, context: Context) -> pb.RangeReply:  # noqa: N802
        async def call() -> pb.RangeReply:
            result = await self._store.range(
                KeyRange.of(request.start, request.end, request.prefix),
                limit=request.limit,
                keys_only=request.keys_only,
                count_only=request.count_only,
                page_token=request.page_token,
                options=_read_options(request.read),
                timeout=self._timeout(context),
            )
            reply = pb.RangeReply(
                count=result.count,
                next_page_token=result.next_page_token,
                applied=_positions(result.applied),
                topic_id=result.topic_id,
            )
            add = reply.items.add  # cheaper than a list of KeyValue messages (as in MultiGet)
            for k, e in result.items:
                if e is None:
                    add(key=k)
                else:
                    add(key=k, value=e.value, revision=e.revision)
            return reply

        return await _translate(context, call)

    async def Watch(  # noqa: N802
        self, request: pb.WatchRequest, context: Context
    ) -> AsyncIterator[pb.WatchEvent]:
        try:
            selector = (
                KeyRange(request.key, request.key + b"\x00")
                if request.key
                else KeyRange.of(request.start, request.end, request.prefix)
            )
            start = {p.partition: p.offset for p in getattr(request, "from")}
            interval = (request.progress_interval_ms or 1000) / 1000
            async for item in watch(self._store, selector, start or None, interval, request.topic_id):
                if isinstance(item, Progressed):
                    yield pb.WatchEvent(
                        type=pb.WatchEvent.PROGRESS, applied=_positions(item.applied), topic_id=item.topic_id
                    )
                else:
                    yield pb.WatchEvent(
                        type=pb.WatchEvent.PUT if item.value is not None else pb.WatchEvent.DELETE,
                        key=item.key,
                        value=item.value or b"",
                        revision=item.offset + 1 if item.value is not None else 0,
                        position=pb.Position(partition=item.partition, offset=item.offset),
                    )
        except errors.Kvs2Error as exc:
            await context.abort(status_of(exc), str(exc))

    async def Snapshot(  # noqa: N802
        self, request: pb.SnapshotRequest, context: Context
    ) -> AsyncIterator[pb.SnapshotChunk]:
        try:
            if self._snapshots is None:
                raise errors.Unavailable("this replica process does not send snapshots")
            async for part in self._snapshots.stream(request.topic, request.data_channel):
                if isinstance(part, Header):
                    yield pb.SnapshotChunk(
                        header=pb.SnapshotHeader(
                            topic=part.identity.topic,
                            topic_id=part.identity.topic_id,
                            partitions=part.identity.partitions,
                            positions=_positions(part.positions),
                            size=part.size,
                        )
                    )
                elif isinstance(part, Trailer):
                    yield pb.SnapshotChunk(
                        trailer=pb.SnapshotTrailer(xxh3_128=part.digest, size=part.size or 0)
                    )
                elif isinstance(part, DataOffer):
                    yield pb.SnapshotChunk(
                        data_channel=pb.SnapshotDataChannel(port=part.port, token=part.token)
                    )
                else:
                    yield pb.SnapshotChunk(data=part)
        except errors.Kvs2Error as exc:
            await context.abort(status_of(exc), str(exc))

    async def Write(self, request: pb.WriteRequest, context: Context) -> pb.WriteReply:  # noqa: N802
        async def call() -> pb.WriteReply:
            items = [
                WriteItem(
                    i.key,
                    None if i.delete else i.value,
                    i.if_revision if i.HasField("if_revision") else None,
                )
                for i in request.items
            ]
            topic_id = self._store.progress.now.topic_id  # the topic this batch goes to
            result = await self._store.write_batch(items, self._timeout(context))
            reply = pb.WriteReply(tokens=_positions(result.tokens), topic_id=topic_id)
            add = reply.results.add
            for r in result.items:
                add(
                    status=_ITEM_STATUS[r.status],
                    partition=r.partition,
                    offset=r.offset,
                    revision=r.revision,
                    error=r.error,
                )
            return reply

        return await _translate(context, call)

    async def ReplicaStatus(  # noqa: N802
        self, request: pb.ReplicaStatusRequest, context: Context
    ) -> pb.ReplicaStatusReply:
        s = self._store.progress.now
        now = time.monotonic()
        return pb.ReplicaStatusReply(
            serving=s.serving,
            topic=self._topic,
            partitions=[
                pb.PartitionStatus(
                    partition=p,
                    applied=s.applied.get(p, 0),
                    end_offset=s.high_watermarks.get(p, 0),
                    lag=s.lag(p),
                    seconds_since_caught_up=-1.0 if p not in s.caught_up_at else s.staleness(p, now),
                )
                for p in range(s.partitions)
            ],
            phase=pb.PHASE_SERVING if s.serving else pb.PHASE_CATCHING_UP,
            guard_rebuilds=s.guard_rebuilds,
            guard_last_reason=s.guard_last_reason,
        )


_ITEM_STATUS = {
    ItemStatus.PUBLISHED: pb.WriteItemResult.PUBLISHED,
    ItemStatus.CONDITION_FAILED: pb.WriteItemResult.CONDITION_FAILED,
    ItemStatus.INVALID: pb.WriteItemResult.INVALID,
    ItemStatus.FAILED: pb.WriteItemResult.FAILED,
    ItemStatus.OUTCOME_UNKNOWN: pb.WriteItemResult.OUTCOME_UNKNOWN,
}


# ----- the process ---------------------------------------------------------------------------------
class HealthGate:
    """gRPC health is SERVING only while every part of the replica can serve: caught up with Kafka
    ("replica"), a usable producer ("producer"), a live ingester ("ingester"). Calls `apply` on changes.

    Why one gate: each part is reported from a different place (the ingester's snapshots, the
    producer's error callback, the supervisor); none of them may flip health back to SERVING alone.
    """

    def __init__(self, apply: Callable[[bool], None], parts: Mapping[str, bool]) -> None:
        self._apply = apply
        self._parts = dict(parts)
        self._state = all(self._parts.values())
        apply(self._state)

    def set(self, part: str, ok: bool) -> None:
        self._parts[part] = ok
        state = all(self._parts.values())
        if state != self._state:
            self._state = state
            self._apply(state)

    @property
    def serving(self) -> bool:
        return self._state


GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


@dataclass
class Role:
    """Which process of a replica this is (see kvs2.workers): the leader runs the ingester and the
    janitor and fans their news out; a follower only serves, fed by the leader over `fanin_fd`."""

    fanout: Fanout | None = None
    fanin_fd: int | None = None
    followers: list[int] = field(default_factory=list)
    # This process replaced one that restarted to rebuild (kvs2.restart): no second restart before serving.
    restarted: bool = False

    @property
    def leader(self) -> bool:
        return self.fanin_fd is None


@contextlib.asynccontextmanager
async def running_replica(
    settings: ServeSettings,
    role: Role | None = None,
    stop: asyncio.Event | None = None,
    on_fatal: Callable[[str], None] | None = None,
    on_restart: Callable[[str], None] | None = None,
) -> AsyncIterator[tuple[grpc.aio.Server, int, Progress]]:
    """Start everything a replica (process) is; on exit shut it down in order (see `serve`).

    `on_fatal(why)` is called when the replica can no longer work (its ingester thread died); by
    default it sets `stop`. `on_restart(why)` (in the loop), given to a leader with `--bootstrap-peers`,
    is called when the replica must rebuild while running: it restarts to take a snapshot (kvs2.restart).
    """
    role = role or Role()
    stop = stop or asyncio.Event()
    fatal = on_fatal or (lambda _why: stop.set())
    loop = asyncio.get_running_loop()
    parts = build_parts(settings, loop)  # shared with kvs2.embedded
    replica, progress, writer = parts.replica, parts.progress, parts.writer
    conditional, store, set_limit = parts.conditional, parts.store, parts.set_limit

    ingester: Ingester | None = None
    fanin: FanIn | None = None
    fanout = role.fanout
    if role.leader:

        def on_progress(snapshot: Snapshot) -> None:  # the ingester's thread
            progress.publish(snapshot)
            if fanout is not None:
                fanout.send("snapshot", snapshot)

        def on_outcomes(outcomes: list[Outcome]) -> None:  # the ingester's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                loop.call_soon_threadsafe(conditional.resolve, outcomes)
            if fanout is not None:
                fanout.send("outcomes", outcomes)

        def on_limit(limit: int) -> None:
            set_limit(limit)
            if fanout is not None:
                fanout.send("limit", limit)

        restart_hook: Callable[[str], None] | None = None
        if on_restart is not None and settings.bootstrap_peers:
            restart_cb = on_restart

            def restart_hook(reason: str) -> None:  # the ingester's thread
                with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down anyway
                    loop.call_soon_threadsafe(restart_cb, reason)

        ingester = parts.ingester(
            on_progress, on_outcomes, on_limit, restart_hook, may_restart_before_serving=not role.restarted
        )
    else:
        assert role.fanin_fd is not None
        fanin = FanIn(
            role.fanin_fd,
            {"snapshot": progress.update, "outcomes": conditional.resolve, "limit": set_limit},
            on_eof=stop.set,  # the leader is gone: this process cannot stay fresh
        )
        fanin.attach(loop)

    options = [*GRPC_OPTIONS, ("grpc.so_reuseport", 1 if settings.workers > 1 else 0)]
    # Metrics first, so that refused calls are counted too.
    interceptors: list[Any] = [MetricsInterceptor()] if settings.metrics_listen else []
    if settings.authz is not None:
        interceptors.append(AuthorizationInterceptor(settings.authz))
    server = grpc.aio.server(options=options, interceptors=interceptors or None)
    data_listener = data_channel_listener(settings) if role.leader else None
    snapshots = SnapshotSource(
        replica,
        progress,
        settings.topic,
        max_streams=settings.snapshot_max_streams,
        max_bytes_per_second=settings.snapshot_max_bytes_per_second,
        listener=data_listener,
    )
    servicer = Kvs2Servicer(store, settings.default_write_timeout, snapshots, topic=settings.topic)
    pb_grpc.add_Kvs2Servicer_to_server(servicer, server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    health_tasks: set[asyncio.Task[None]] = set()

    def on_serving(serving: bool) -> None:
        states = health_pb2.HealthCheckResponse
        status = states.SERVING if serving else states.NOT_SERVING
        for name in ("", SERVICE_NAME):
            task = loop.create_task(health_servicer.set(name, status))
            health_tasks.add(task)
            task.add_done_callback(health_tasks.discard)
        log.info("health: %s", "SERVING" if serving else "NOT_SERVING")

    health = HealthGate(on_serving, {"replica": False, "producer": True, "ingester": True})
    progress.on_serving_change(lambda serving: health.set("replica", serving))

    def on_producer_health(ok: bool) -> None:  # the producer's poll thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            loop.call_soon_threadsafe(health.set, "producer", ok)

    writer.on_health = on_producer_health
    observer = Observer.start(settings, progress, replica) if role.leader else None  # metrics, progress logs
    try:
        port = add_port(server, settings.listen, settings.tls)
    except RuntimeError:  # grpc raises when the bind fails; its own message only says "failed"
        port = 0
    if port == 0:
        if data_listener is not None:
            data_listener.close()
        raise errors.ConfigError(
            f"cannot listen on {settings.listen}: the address is in use or not available on this host"
        )
    await server.start()
    health_server = await start_health_server(
        settings.health_listen, health_servicer, reuse_port=settings.workers > 1
    )
    redis = (
        await start_redis(
            store,
            settings.redis_listen,
            topic=settings.topic,
            timeout=settings.default_write_timeout,
            reuse_port=settings.workers > 1,
            tls=settings.tls,
            users=settings.redis_users,
            policy=settings.authz,
        )
        if settings.redis_listen
        else None
    )
    stopping = asyncio.Event()
    janitor: asyncio.Task[None] | None = None
    supervisor: asyncio.Task[None] | None = None
    if ingester is not None:
        ingester.start()
        janitor = loop.create_task(conditional.janitor(stopping))

        async def supervise(ingester: Ingester) -> None:
            """A dead ingester thread (a bug, even one inside its own error handling) leaves a replica
            that never learns another write: stop serving and end the process so it is restarted."""
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 0.5)
                if not stopping.is_set() and not ingester.alive:
                    log.error("the ingester thread died: NOT_SERVING; stopping so the replica is restarted")
                    health.set("ingester", False)
                    progress.update(replace(progress.now, serving=False))  # reads refused too
                    if fanout is not None:
                        fanout.send("snapshot", progress.now)
                    fatal("the ingester thread died")
                    return

        supervisor = loop.create_task(supervise(ingester))
    log.info(
        "kvs2 replica of topic %r listening on %s (data in %s)",
        settings.topic,
        settings.listen,
        settings.data_dir,
    )
    try:
        yield server, port, progress
    finally:
        # Every step runs whatever happened to the ones before: the producer is always flushed and
        # LMDB always closed (issue 8).
        if observer is not None:
            observer.close()
        log.info("shutting down: finishing in-flight calls (up to %.0fs)", settings.shutdown_grace)
        await _step("health", health_servicer.enter_graceful_shutdown)

        async def stop_fronts() -> None:  # gRPC and the Redis port finish their in-flight calls together
            await asyncio.gather(
                server.stop(settings.shutdown_grace),
                *([redis.close(settings.shutdown_grace)] if redis is not None else []),
            )

        await _step("front doors", stop_fronts)
        if data_listener is not None:
            await _step("snapshot data channel", data_listener.close)
        if health_server is not None:
            stop_health = health_server.stop
            await _step("health port", lambda: stop_health(None))
        stopping.set()
        for task in (janitor, supervisor):
            if task is not None:
                await _step("background task", lambda task=task: task)  # type: ignore[misc]
        await _step("producer", lambda: writer.close(timeout=settings.shutdown_grace))
        if ingester is not None:
            await _step("ingester", ingester.stop)
        if fanin is not None:
            await _step("leader pipe", lambda: fanin.detach(loop))
        if fanout is not None:
            await _step("follower pipes", fanout.close)  # followers see end-of-file and stop too
        await _step("LMDB", replica.close)
        log.info("stopped")


def data_channel_listener(settings: ServeSettings) -> DataListener | None:
    """The snapshot data channel's listener (kvs2.datachannel), on `--snapshot-data-listen` (default:
    --listen's host, any free port), or None when it is off.

    Only the leader process listens: a token is known only to the process that offered it, and with
    `--workers` the Snapshot RPC may reach any of them, so a follower's snapshots keep using gRPC."""
    if settings.snapshot_data_listen == "off":
        return None
    address = settings.snapshot_data_listen or f"{settings.listen.rpartition(':')[0]}:0"
    host, _, port = address.rpartition(":")
    try:
        return DataListener(host, int(port), settings.tls)
    except OSError as exc:
        raise errors.ConfigError(
            f"cannot listen on {address} (--snapshot-data-listen): {exc.strerror or exc}"
        ) from exc


async def _step(what: str, action: Callable[[], object]) -> None:
    """One shutdown step; a failure is logged and the next step still runs."""
    try:
        result = action()
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("shutting down: %s failed; going on", what)


async def serve(settings: ServeSettings, role: Role | None = None) -> int:
    """Run a replica process until SIGTERM or SIGINT: then stop accepting, finish in-flight calls, flush
    the producer, stop the ingester and close LMDB. Returns the exit code."""
    role = role or Role()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signalled = False
    restart: list[str] = []  # why the replica restarts to rebuild (kvs2.restart), if it does

    def on_signal() -> None:
        nonlocal signalled
        signalled = True  # a SIGTERM/SIGINT wins over a restart to rebuild
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    failed = False

    async def watch_followers() -> None:
        nonlocal failed
        while not stop.is_set():
            for pid, code in exited(role.followers):
                metrics.worker_exited(pid)  # its open Watch streams are gone with it
                if role.fanout is not None and pid in role.fanout.dropped:
                    role.followers.remove(pid)  # killed for not keeping up (logged); the others serve on
                    if not stop.is_set():
                        replacement = role.fanout.replace(settings)
                        role.followers.append(replacement)
                        log.warning("started worker process %d in place of %d", replacement, pid)
                    continue
                log.error(
                    "worker process %d exited (%d): stopping the replica so it can be restarted", pid, code
                )
                failed = True
                stop.set()
            await asyncio.sleep(1.0)

    def on_fatal(why: str) -> None:
        nonlocal failed
        failed = True
        stop.set()

    def on_restart(why: str) -> None:
        restart.append(why)
        stop.set()

    monitor = loop.create_task(watch_followers()) if role.followers else None
    async with running_replica(settings, role, stop, on_fatal, on_restart if role.leader else None):
        await stop.wait()
        for pid in role.followers:  # in Kubernetes only PID 1 gets the SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    if monitor is not None:
        monitor.cancel()
    for pid in role.followers:
        with contextlib.suppress(ChildProcessError):
            await asyncio.to_thread(os.waitpid, pid, 0)
    if restart and not signalled and not failed:
        raise RestartToRebuild(restart[0])  # every process of the replica has closed LMDB by now
    return 1 if failed else 0


def run_replica(settings: ServeSettings) -> int:
    """`kvs2 serve`: bootstrap from a peer's snapshot if the replica must build (kvs2.bootstrap), fork the
    followers (before any gRPC, LMDB or Kafka object exists), then run. Raises `RestartToRebuild` when
    the replica must rebuild while running (the caller execs the process again, kvs2.restart)."""
    restarted = take_carried(COUNTERS, os.environ)  # the guard's counts, when this process replaced itself
    bootstrap_in_child(settings)
    loop = settings.event_loop
    log.info("event loop: %s", eventloop.resolve(loop))
    if settings.workers <= 1:
        return eventloop.run(serve(settings, Role(restarted=restarted)), loop)
    pids, fds = fork_followers(
        settings.workers - 1, lambda fd: eventloop.run(serve(settings, Role(fanin_fd=fd)), loop)
    )
    leader = Role(fanout=Fanout(fds, pids), followers=pids, restarted=restarted)
    return eventloop.run(serve(settings, leader), loop)
