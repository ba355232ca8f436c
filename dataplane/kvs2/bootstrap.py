"""Bootstrap: before a replica opens its store, fetch a snapshot from a peer if it has to (re)build.

A replica has to build when its data directory holds nothing of the topic (new, or the topic was
recreated), or when the resurrection guard (kvs2.guard) says its state may be missing deletes. Then it
asks the peers of `--bootstrap-peers` in order for a snapshot (kvs2.snapshot) and installs the first
one that verifies. No peer answering, a broken or corrupted stream, a snapshot of another topic or
positions Kafka no longer holds: it says so in its log and falls back to replaying the topic.

Why in a child process started with "spawn": the replica forks its `--workers` after this, and a
process that has used gRPC must not fork; the child also keeps every gRPC object of the transfer out
of the serving process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import socket
import time
from collections.abc import Sequence
from types import FrameType

import grpc

from kvs2 import metrics
from kvs2._proto import kvs2_pb2 as pb
from kvs2._proto import kvs2_pb2_grpc as pb_grpc
from kvs2.config import ServeSettings
from kvs2.errors import Kvs2Error
from kvs2.guard import stale_reason
from kvs2.kafka_io import Admin, client_config
from kvs2.snapshot import Header, Incoming, SnapshotInvalid, Trailer, clean_leftovers
from kvs2.storage import Replica, TopicIdentity

log = logging.getLogger(__name__)

# Longest wait for a peer to start answering, and for the whole transfer.
CONNECT_TIMEOUT = 10.0
TRANSFER_TIMEOUT = 3600.0
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def why_build(
    replica: Replica, identity: TopicIdentity, retention_seconds: float, margin: float
) -> str | None:
    """Why this replica must build its store from scratch, or None when it can resume."""
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


def fetch(
    peer: str, settings: ServeSettings, expected: TopicIdentity, start_offsets: dict[int, int]
) -> Header:
    """Receive a snapshot from `peer` and install it into the data directory (or raise)."""
    incoming = Incoming(settings.data_dir)
    try:
        with grpc.insecure_channel(peer, options=_CHANNEL_OPTIONS) as channel:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
            stub = pb_grpc.Kvs2Stub(channel)
            trailer: Trailer | None = None
            for chunk in stub.Snapshot(pb.SnapshotRequest(topic=settings.topic), timeout=TRANSFER_TIMEOUT):
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
                elif part == "trailer":
                    trailer = Trailer(chunk.trailer.sha256)
            if trailer is None:
                raise SnapshotInvalid("the snapshot stream ended without its trailer (interrupted)")
        return incoming.finish(trailer, expected, start_offsets)
    finally:
        incoming.abort()  # no-op after a successful install


def bootstrap(settings: ServeSettings) -> bool:
    """Install a peer's snapshot if this replica has to build and a peer gives a good one. Returns
    whether it did; every other outcome leaves the data directory as it was (the ingester decides)."""
    clean_leftovers(settings.data_dir)
    if not settings.bootstrap_peers:
        return False
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
        return False
    replica = Replica(settings.data_dir, map_size=settings.map_size)
    try:
        reason = why_build(replica, identity, retention, settings.guard_margin)
    finally:
        replica.close()
    if reason is None:
        return False
    peers = expand_peers(settings.bootstrap_peers, settings.listen)
    log.info(
        "replica must be built (%s): asking peers %s for a snapshot",
        reason,
        ", ".join(peers) or "(none)",
    )
    with metrics.phase_endpoint(settings.metrics_listen, metrics.BOOTSTRAPPING):
        return _from_peers(peers, settings, identity, start_offsets)


def _from_peers(
    peers: Sequence[str], settings: ServeSettings, identity: TopicIdentity, start_offsets: dict[int, int]
) -> bool:
    """Ask each peer in turn; True once one snapshot is installed."""
    for peer in peers:
        try:
            header = fetch(peer, settings, identity, start_offsets)
        except grpc.RpcError as exc:
            log.warning("no snapshot from peer %s: %s %s", peer, exc.code(), exc.details())
        except grpc.FutureTimeoutError:
            log.warning("no snapshot from peer %s: it did not answer within %.0fs", peer, CONNECT_TIMEOUT)
        except (SnapshotInvalid, OSError) as exc:
            log.warning("snapshot from peer %s rejected: %s", peer, exc)
        else:
            log.info(
                "bootstrapped from a snapshot of peer %s (%d bytes) at positions %s: catching up from Kafka",
                peer,
                header.size,
                dict(header.positions),
            )
            return True
    log.warning("no peer gave a usable snapshot: falling back to replaying topic %r", settings.topic)
    return False


def _child(settings: ServeSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    bootstrap(settings)


def bootstrap_in_child(settings: ServeSettings) -> None:
    """Run `bootstrap` in a spawned child and wait; SIGTERM/SIGINT meanwhile stop the child too."""
    if not settings.bootstrap_peers:
        clean_leftovers(settings.data_dir)
        return
    child = multiprocessing.get_context("spawn").Process(
        target=_child, args=(settings,), name="kvs2-bootstrap"
    )
    child.start()

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
    with contextlib.suppress(OSError):
        clean_leftovers(settings.data_dir)


__all__: Sequence[str] = ("bootstrap", "bootstrap_in_child", "fetch", "why_build")
