"""Bootstrap: before a replica opens its store, fetch a snapshot from a peer if it has to (re)build.

A replica has to build when its data directory holds nothing of the topic (new, or the topic was
recreated), when the resurrection guard (kvs2.guard) says its state may be missing deletes, or when the
running replica marked its store "must rebuild" and restarted itself (kvs2.restart). Then it
asks the peers of `--bootstrap-peers` in order for a snapshot (kvs2.snapshot) and installs the first
one that verifies. No peer answering, a broken or corrupted stream, a snapshot of another topic or
positions Kafka no longer holds: it says so in its log and falls back to replaying the topic.

Why in a child process started with "spawn": the replica forks its `--workers` after this, and a
process that has used gRPC must not fork; the child also keeps every gRPC object of the transfer out
of the serving process.

While it fetches, the child answers on the replica's own addresses, so that the operator and `kvs2
status` can tell a bootstrapping replica from a dead one: ReplicaStatus says PHASE_BOOTSTRAPPING, gRPC
health NOT_SERVING, every other RPC UNAVAILABLE, the plaintext health port (`--health-listen`, which
the probes of a TLS store dial) NOT_SERVING, and `/metrics` (with `--metrics-listen`) has
kvs2_replica_phase{phase="Bootstrapping"} 1. It closes them before it exits; then the replica binds.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kvs2 import metrics
from kvs2._proto import kvs2_pb2 as pb
from kvs2._proto import kvs2_pb2_grpc as pb_grpc
from kvs2.config import ServeSettings
from kvs2.credentials import ServerTls, peer_client_tls, server_credentials
from kvs2.datachannel import DataChannelError, Offer, dial
from kvs2.errors import Kvs2Error
from kvs2.guard import COUNTERS, stale_reason
from kvs2.kafka_io import Admin, client_config
from kvs2.snapshot import (
    SHA256,
    XXH3_128,
    Header,
    Incoming,
    SnapshotInvalid,
    SnapshotTooBig,
    Trailer,
    clean_leftovers,
)
from kvs2.storage import Replica, TopicIdentity

log = logging.getLogger(__name__)

# Longest wait for a peer to start answering, and for the whole transfer.
CONNECT_TIMEOUT = 10.0
TRANSFER_TIMEOUT = 3600.0
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def why_build(
    replica: Replica, identity: TopicIdentity, retention_seconds: float, margin: float
) -> str | None:
    """Why this replica must build its store from scratch, or None when it can resume. A store that the
    running replica marked before restarting itself (kvs2.restart) says why; it has no identity then."""
    marked = replica.rebuild_reason()
    if marked is not None:
        return f"it must be rebuilt: {marked}"
    current = replica.identity()
    if current is None:
        return "it has no data"
    if current != identity:
        return f"its data is of {current}, but the topic is now {identity}"
    return stale_reason(replica.caught_up_at(), time.time(), retention_seconds, margin)


def expand_peers(peers: Sequence[str], own: str) -> list[str]:
    """Each HOST:PORT as every address its host resolves to (a headless Service's name resolves to all
    of its pods), in order, without duplicates and without this replica's own address `own`."""
    out: list[str] = []
    own_host, _, own_port = own.rpartition(":")
    for peer in peers:
        host, _, port = peer.rpartition(":")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = sorted({str(info[4][0]) for info in infos})
        except (OSError, UnicodeError):
            addresses = [host]  # unresolvable now: let the connection attempt report it
        for address in addresses:
            if (address == own_host or host == own_host) and port == own_port:
                continue
            target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            if target not in out:
                out.append(target)
    return out


def _channel(peer: str, settings: ServeSettings) -> grpc.Channel:
    """Plaintext to a plaintext store; with the store's TLS, as its peers expect (kvs2.credentials)."""
    if settings.tls is None:
        return grpc.insecure_channel(peer, options=_CHANNEL_OPTIONS)
    tls = peer_client_tls(settings.tls)
    return grpc.secure_channel(peer, tls.credentials(), options=[*_CHANNEL_OPTIONS, *tls.options()])


class _Unreachable(SnapshotInvalid):
    """The offered data channel could not be opened (nothing received over it yet)."""


def fetch(
    peer: str, settings: ServeSettings, expected: TopicIdentity, start_offsets: dict[int, int]
) -> Header:
    """Receive a snapshot from `peer` and install it into the data directory (or raise).

    It asks for the data channel (kvs2.datachannel); a peer that offers one sends the data bytes there,
    a peer of an older kvs2 (or one with `--snapshot-data-listen off`) sends them as gRPC chunks. A data
    channel that cannot be opened (a firewall or NetworkPolicy that admits only gRPC) costs one retry
    with gRPC chunks, not the snapshot."""
    try:
        return _fetch(peer, settings, expected, start_offsets, data_channel=True)
    except _Unreachable as exc:
        log.warning("%s: asking peer %s for the snapshot over gRPC instead", exc, peer)
    time.sleep(RETRY_DELAY)  # the abandoned stream frees its --snapshot-max-streams slot on the peer
    return _fetch(peer, settings, expected, start_offsets, data_channel=False)


RETRY_DELAY = 1.0


def _fetch(
    peer: str,
    settings: ServeSettings,
    expected: TopicIdentity,
    start_offsets: dict[int, int],
    data_channel: bool,
) -> Header:
    incoming = Incoming(settings.data_dir)
    try:
        with _channel(peer, settings) as channel:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
            stub = pb_grpc.Kvs2Stub(channel)
            trailer: Trailer | None = None
            request = pb.SnapshotRequest(topic=settings.topic, data_channel=data_channel)
            for chunk in stub.Snapshot(request, timeout=TRANSFER_TIMEOUT):
                part = chunk.WhichOneof("part")
                if trailer is not None:
                    raise SnapshotInvalid("the snapshot stream went on after its trailer")
                if part == "header":
                    h = chunk.header
                    incoming.begin(
                        Header(
                            TopicIdentity(h.topic, h.topic_id, h.partitions),
                            {p.partition: p.offset for p in h.positions},
                            h.size,
                        )
                    )
                elif part == "data":
                    incoming.write(chunk.data)
                elif part == "data_channel":
                    _receive(
                        peer, settings, Offer(chunk.data_channel.port, chunk.data_channel.token), incoming
                    )
                elif part == "trailer":
                    t = chunk.trailer
                    trailer = (
                        Trailer(t.xxh3_128, XXH3_128, t.size) if t.xxh3_128 else Trailer(t.sha256, SHA256)
                    )
            if trailer is None:
                raise SnapshotInvalid("the snapshot stream ended without its trailer (interrupted)")
        return incoming.finish(trailer, expected, start_offsets)
    finally:
        incoming.abort()  # no-op after a successful install


def _receive(peer: str, settings: ServeSettings, offer: Offer, incoming: Incoming) -> None:
    """The data bytes over the data channel the peer offered, on the host this RPC went to."""
    if incoming.header is None:
        raise SnapshotInvalid("the peer offered the data channel before the snapshot's header")
    host = peer.rpartition(":")[0]
    tls = peer_client_tls(settings.tls) if settings.tls is not None else None
    started = time.monotonic()
    try:
        sock = dial(host, offer, tls)
    except DataChannelError as exc:
        raise _Unreachable(str(exc)) from exc
    with sock:
        got = incoming.receive(sock)
    elapsed = time.monotonic() - started
    log.info(
        "received %d snapshot bytes over the data channel %s:%d in %.1fs (%.0f MB/s)",
        got,
        host,
        offer.port,
        elapsed,
        got / max(elapsed, 1e-9) / 1e6,
    )


@dataclass(frozen=True)
class Bootstrapped:
    installed: bool  # a peer's snapshot replaced the data directory
    guard_reason: str | None = None  # why the resurrection guard made it rebuild (counted in status)


def bootstrap(settings: ServeSettings) -> Bootstrapped:
    """Install a peer's snapshot if this replica has to build and a peer gives a good one. Says whether
    it did; every other outcome leaves the data directory as it was (the ingester decides)."""
    clean_leftovers(settings.data_dir)
    if not settings.bootstrap_peers:
        return Bootstrapped(False)
    admin = Admin(client_config(settings.bootstrap_servers, settings.kafka_config))
    try:
        identity = admin.describe(settings.topic)
        retention = admin.delete_retention_ms(settings.topic) / 1000
        start_offsets = admin.start_offsets(settings.topic, identity.partitions)
    except Kvs2Error as exc:
        log.warning(
            "no snapshot bootstrap: cannot describe topic %r (%s); the ingester takes over",
            settings.topic,
            exc,
        )
        return Bootstrapped(False)
    replica = Replica(settings.data_dir, map_size=settings.map_size)
    try:
        reason = why_build(replica, identity, retention, settings.guard_margin)
        # Data of this very topic, yet it must build: the resurrection guard said so.
        by_guard = reason is not None and replica.identity() == identity
    finally:
        replica.close()
    if reason is None:
        return Bootstrapped(False)
    peers = expand_peers(settings.bootstrap_peers, settings.listen)
    log.info(
        "replica must be built (%s): asking peers %s for a snapshot",
        reason,
        ", ".join(peers) or "(none)",
    )
    with metrics.phase_endpoint(settings.metrics_listen, metrics.BOOTSTRAPPING):
        return _from_peers(peers, settings, identity, start_offsets, reason if by_guard else None)


def _from_peers(
    peers: Sequence[str],
    settings: ServeSettings,
    identity: TopicIdentity,
    start_offsets: dict[int, int],
    guard_reason: str | None,
) -> Bootstrapped:
    """Ask each peer in turn; installed once one snapshot verifies. `guard_reason` is carried back when the
    resurrection guard asked for this build, so that the serving process counts it."""
    for peer in peers:
        try:
            header = fetch(peer, settings, identity, start_offsets)
        except grpc.RpcError as exc:
            log.warning("no snapshot from peer %s: %s %s", peer, exc.code(), exc.details())
        except grpc.FutureTimeoutError:
            log.warning("no snapshot from peer %s: it did not answer within %.0fs", peer, CONNECT_TIMEOUT)
        except SnapshotTooBig as exc:
            log.warning("snapshot from peer %s rejected: %s; no peer's would fit", peer, exc)
            break
        except (SnapshotInvalid, OSError) as exc:
            log.warning("snapshot from peer %s rejected: %s", peer, exc)
        else:
            log.info(
                "bootstrapped from a snapshot of peer %s (%d bytes) at positions %s: catching up from Kafka",
                peer,
                header.size,
                dict(header.positions),
            )
            return Bootstrapped(True, guard_reason)
    log.warning("no peer gave a usable snapshot: falling back to replaying topic %r", settings.topic)
    return Bootstrapped(False)


_BOOTSTRAPPING = "this replica is bootstrapping from a peer's snapshot: ask another replica or retry later"


if TYPE_CHECKING:
    _Handler = grpc.GenericRpcHandler[Any, Any]
    _Method = grpc.RpcMethodHandler[Any, Any]
else:
    _Handler = grpc.GenericRpcHandler
    _Method = grpc.RpcMethodHandler


class _OnlyStatus(_Handler):
    """ReplicaStatus says PHASE_BOOTSTRAPPING; every other kvs2 RPC is UNAVAILABLE, as from any replica
    that is not serving (health has its own handler, asked first)."""

    def __init__(self, topic: str) -> None:
        self._status = grpc.unary_unary_rpc_method_handler(
            lambda _request, _context: pb.ReplicaStatusReply(
                serving=False, topic=topic, phase=pb.PHASE_BOOTSTRAPPING
            ),
            request_deserializer=pb.ReplicaStatusRequest.FromString,
            response_serializer=pb.ReplicaStatusReply.SerializeToString,
        )
        self._refuse = grpc.unary_unary_rpc_method_handler(_refuse)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> _Method | None:
        if handler_call_details.method.endswith("/ReplicaStatus"):
            return self._status
        return self._refuse


def _refuse(_request: bytes, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAVAILABLE, _BOOTSTRAPPING)


@contextlib.contextmanager
def _answering(settings: ServeSettings) -> Iterator[None]:
    """The replica's status while bootstrapping, on its own gRPC address and its plaintext health port
    (best effort: an address that cannot be bound is logged and left alone)."""
    checks = health.HealthServicer()
    checks.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_generic_rpc_handlers([_OnlyStatus(settings.topic)])
    servers = [_bound(server, settings.listen, settings.tls)]
    if settings.health_listen:
        # Health only, like kvs2.health_port: a probe that cannot speak TLS gets NOT_SERVING rather than
        # a refused connection (a liveness probe on this port would restart a long bootstrap in a loop).
        health_only = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        health_pb2_grpc.add_HealthServicer_to_server(checks, health_only)
        servers.append(_bound(health_only, settings.health_listen, None))
    try:
        yield
    finally:
        for started in servers:
            if started is not None:
                started.stop(grace=None).wait()


def _bound(server: grpc.Server, address: str, tls: ServerTls | None) -> grpc.Server | None:
    """`server` started on `address` (with `tls`, else plaintext), or None when it cannot bind (logged)."""
    try:
        bound = (
            server.add_insecure_port(address)
            if tls is None
            else server.add_secure_port(address, server_credentials(tls))
        )
    except RuntimeError:
        bound = 0
    if not bound:
        log.warning("cannot answer on %s while bootstrapping (address taken)", address)
        return None
    server.start()
    return server


def _child(settings: ServeSettings, report: Connection) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with _answering(settings):
        outcome = bootstrap(settings)
    report.send(outcome.guard_reason)


def bootstrap_in_child(settings: ServeSettings) -> None:
    """Run `bootstrap` in a spawned child and wait; SIGTERM/SIGINT meanwhile stop the child too."""
    if not settings.bootstrap_peers:
        clean_leftovers(settings.data_dir)
        return
    ctx = multiprocessing.get_context("spawn")
    receive, report = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(settings, report), name="kvs2-bootstrap")
    child.start()
    report.close()

    def stop(signum: int, _frame: FrameType | None) -> None:
        child.terminate()
        child.join()
        raise SystemExit(128 + signum)

    previous = [signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)]
    try:
        child.join()
    finally:
        for s, handler in zip((signal.SIGTERM, signal.SIGINT), previous, strict=True):
            signal.signal(s, handler)
    if child.exitcode != 0:
        log.warning("snapshot bootstrap exited with %s: falling back to replaying the topic", child.exitcode)
    with contextlib.suppress(EOFError, OSError):
        if receive.poll() and (reason := receive.recv()):
            COUNTERS.rebuilt(reason)  # rebuilt by snapshot: the ingester finds nothing stale to count
    receive.close()
    with contextlib.suppress(OSError):
        clean_leftovers(settings.data_dir)


__all__: Sequence[str] = ("bootstrap", "bootstrap_in_child", "fetch", "why_build")
