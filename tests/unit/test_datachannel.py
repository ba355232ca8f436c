"""The snapshot data channel (kvs2.datachannel) beside the Snapshot RPC: a one-time token ties a TCP
connection to its RPC; the bytes arrive whole and verified, plaintext or TLS like gRPC; old peers and
old receivers keep using gRPC chunks; a corrupted or oversized snapshot is refused and the replica
falls back to replaying."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest
import xxhash
from kvs2 import bootstrap, datachannel, snapshot
from kvs2._proto import kvs2_pb2 as pb
from kvs2._proto import kvs2_pb2_grpc as pb_grpc
from kvs2.config import ServeSettings
from kvs2.core import Store
from kvs2.credentials import ClientTls, ServerTls
from kvs2.datachannel import DataChannelError, DataListener, Offer
from kvs2.diskspace import FULL_BELOW_BYTES
from kvs2.errors import Unavailable
from kvs2.progress import Progress, Snapshot
from kvs2.server import Kvs2Servicer
from kvs2.snapshot import DataOffer, Header, Incoming, SnapshotSource, SnapshotTooBig, Trailer
from kvs2.storage import Record, Replica, TopicIdentity

from tests.harness.pki import CertificateAuthority, write_tls_dir

IDENT = TopicIdentity("t", "id-1", 2)
HOST = "127.0.0.1"


def _replica(path: Path) -> Replica:
    replica = Replica(path, map_size=1 << 23)
    replica.reset(IDENT)
    replica.apply([Record(b"a", b"1", 0, 0)], {0: 1})
    # Several buffers' worth (datachannel.BUFFER_BYTES), so the transfer spans many reads and sends.
    bulk = [Record(b"bulk-%05d" % i, bytes([i % 251]) * 1000, 1, i) for i in range(5000)]
    replica.apply(bulk, {1: 5000})
    return replica


def _source(tmp_path: Path, listener: DataListener | None, max_bytes_per_second: int = 0) -> SnapshotSource:
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(serving=True))
    return SnapshotSource(
        _replica(tmp_path / "peer"),
        progress,
        "t",
        max_bytes_per_second=max_bytes_per_second,
        listener=listener,
    )


@contextlib.contextmanager
def _listening(tls: ServerTls | None = None) -> Iterator[DataListener]:
    listener = DataListener(HOST, 0, tls)
    try:
        yield listener
    finally:
        listener.close()


async def _receive_all(
    source: SnapshotSource, incoming: Incoming, tls: ClientTls | None = None, data_channel: bool = True
) -> list[str]:
    """Drive one snapshot from `source` into `incoming` as kvs2.bootstrap.fetch does; the kinds of parts."""
    kinds: list[str] = []
    receiving: asyncio.Future[int] | None = None
    async for part in source.stream("t", data_channel):
        if isinstance(part, Header):
            incoming.begin(part)
            kinds.append("header")
        elif isinstance(part, DataOffer):
            offer = Offer(part.port, part.token)

            def receive(offer: Offer = offer) -> int:
                with datachannel.dial(HOST, offer, tls) as sock:
                    return incoming.receive(sock)

            kinds.append("offer")
            # In a thread: the peer's stream goes on (to its trailer) only while the receiver reads.
            receiving = asyncio.ensure_future(asyncio.to_thread(receive))
        elif isinstance(part, Trailer):
            if receiving is not None:
                kinds.append(f"received:{await receiving > 0}")
            incoming.finish(part, IDENT, {})
            kinds.append("trailer")
        else:
            incoming.write(part)
            if "data" not in kinds:
                kinds.append("data")
    return kinds


@pytest.mark.parametrize("throttle", [0, 1 << 30], ids=["streamed while copied", "copied to a file first"])
async def test_snapshot_over_the_data_channel_installs_as_an_equal_store(
    tmp_path: Path, throttle: int
) -> None:
    with _listening() as listener:
        source = _source(tmp_path, listener, throttle)
        kinds = await _receive_all(source, Incoming(tmp_path / "new"))
    assert kinds == ["header", "offer", "received:True", "trailer"]  # no gRPC data chunk at all
    installed = Replica(tmp_path / "new", map_size=1 << 23)
    assert installed.items() == source.replica.items()
    assert installed.next_offsets() == {0: 1, 1: 5000}


async def test_data_channel_with_mutual_tls(tmp_path: Path) -> None:
    """On a TLS store the channel is TLS with the store's certificates: the receiver checks the peer
    against the store's CA and presents its own certificate; without one it is refused."""
    ca = CertificateAuthority("store CA")
    peer_dir = write_tls_dir(tmp_path / "peer-tls", ca.issue("store", ips=(HOST,)), client_ca=ca)
    new_dir = write_tls_dir(tmp_path / "new-tls", ca.issue("store", ips=(HOST,)), client_ca=ca)
    peer_tls, new_tls = ServerTls.from_dir(peer_dir), ServerTls.from_dir(new_dir)
    client = ClientTls(ca=new_tls.client_ca, cert=new_tls.cert, key=new_tls.key)
    with _listening(peer_tls) as listener:
        source = _source(tmp_path, listener)
        kinds = await _receive_all(source, Incoming(tmp_path / "new"), tls=client)
        assert kinds == ["header", "offer", "received:True", "trailer"]
        offer, _connected = listener.offer()
        with pytest.raises(DataChannelError):  # plaintext to a TLS channel
            await asyncio.to_thread(datachannel.dial, HOST, offer, None)
        offer, _connected = listener.offer()
        without_cert = ClientTls(ca=new_tls.client_ca)
        with pytest.raises(DataChannelError):  # TLS without the client certificate mTLS requires
            await asyncio.to_thread(datachannel.dial, HOST, offer, without_cert)
        other_ca = CertificateAuthority("another CA")
        offer, _connected = listener.offer()
        with pytest.raises(DataChannelError):  # a peer the store's CA did not sign is not trusted
            await asyncio.to_thread(
                datachannel.dial, HOST, offer, ClientTls(ca=other_ca.write(tmp_path / "other.crt"))
            )
    installed = Replica(tmp_path / "new", map_size=1 << 23)
    assert installed.items() == source.replica.items()


async def test_a_token_is_single_use_and_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    with _listening() as listener:
        offer, connected = listener.offer()
        with pytest.raises(DataChannelError, match="refused"):  # a guessed token
            await asyncio.to_thread(datachannel.dial, HOST, Offer(offer.port, b"x" * len(offer.token)), None)
        sock = await asyncio.to_thread(datachannel.dial, HOST, offer, None)
        handed = await asyncio.wrap_future(connected)  # the offering stream gets this connection
        sock.sendall(b"ping")
        assert handed.recv(4) == b"ping"
        sock.close()
        handed.close()
        with pytest.raises(DataChannelError, match="refused"):  # used once already
            await asyncio.to_thread(datachannel.dial, HOST, offer, None)
        withdrawn, _ = listener.offer()
        listener.withdraw(withdrawn.token)
        with pytest.raises(DataChannelError, match="refused"):  # its stream gave up
            await asyncio.to_thread(datachannel.dial, HOST, withdrawn, None)
        monkeypatch.setattr(datachannel, "OFFER_SECONDS", -1.0)
        expired, _ = listener.offer()
        with pytest.raises(DataChannelError, match="refused"):  # presented too late
            await asyncio.to_thread(datachannel.dial, HOST, expired, None)


async def test_a_receiver_that_never_dials_ends_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot, "OFFER_SECONDS", 0.2)
    with _listening() as listener:
        source = _source(tmp_path, listener)
        parts = source.stream("t", True)
        assert isinstance(await anext(parts), Header)
        offer = await anext(parts)
        assert isinstance(offer, DataOffer)
        with pytest.raises(Unavailable, match="did not open the snapshot data channel"):
            await anext(parts)
        with pytest.raises(DataChannelError, match="refused"):  # the token is gone with its stream
            await asyncio.to_thread(datachannel.dial, HOST, Offer(offer.port, offer.token), None)


async def test_old_receivers_still_get_grpc_chunks(tmp_path: Path) -> None:
    """A receiver that does not ask for the data channel (an older kvs2) gets data chunks, even from a
    peer that has a listener."""
    with _listening() as listener:
        source = _source(tmp_path, listener)
        kinds = await _receive_all(source, Incoming(tmp_path / "new"), data_channel=False)
    assert kinds == ["header", "data", "trailer"]
    assert Replica(tmp_path / "new", map_size=1 << 23).items() == source.replica.items()


# ----- through gRPC: kvs2.bootstrap.fetch against Kvs2Servicer.Snapshot -------------------------------


@contextlib.asynccontextmanager
async def _peer(source: SnapshotSource) -> AsyncIterator[str]:
    server = grpc.aio.server()
    # Snapshot needs only its SnapshotSource; the store is never touched.
    pb_grpc.add_Kvs2Servicer_to_server(Kvs2Servicer(cast(Store, None), 5.0, source, topic="t"), server)
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    try:
        yield f"{HOST}:{port}"
    finally:
        await server.stop(None)


def _settings(data_dir: Path) -> ServeSettings:
    return ServeSettings(bootstrap_servers="unused:1", topic="t", data_dir=data_dir)


@pytest.mark.parametrize("peer_has_channel", [True, False], ids=["new peer", "old peer (data chunks)"])
async def test_fetch_installs_from_new_and_old_peers(tmp_path: Path, peer_has_channel: bool) -> None:
    with _listening() as listener:
        source = _source(tmp_path, listener if peer_has_channel else None)
        async with _peer(source) as target:
            header = await asyncio.to_thread(bootstrap.fetch, target, _settings(tmp_path / "new"), IDENT, {})
    assert header.positions == {0: 1, 1: 5000}
    assert Replica(tmp_path / "new", map_size=1 << 23).items() == source.replica.items()


def test_old_request_has_no_data_channel_field_set() -> None:
    """What an older receiver sends parses with data_channel false: the peer answers with chunks."""
    old_bytes = pb.SnapshotRequest(topic="t").SerializeToString()
    assert pb.SnapshotRequest.FromString(old_bytes).data_channel is False


class _FlippingRelay:
    """A TCP relay to the peer's data channel that flips one byte of what the peer sends, at `at`."""

    def __init__(self, upstream_port: int, at: int) -> None:
        self.upstream_port = upstream_port
        self.at = at
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self._listener.accept()
            upstream = socket.create_connection((HOST, self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            self._pump(upstream, client, self.at)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, at: int | None) -> None:
        seen = 0
        with contextlib.suppress(OSError):
            while data := bytearray(src.recv(65536)):
                if at is not None and seen <= at < seen + len(data):
                    data[at - seen] ^= 0xFF
                seen += len(data)
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


async def test_a_corrupted_byte_is_refused_and_the_replica_replays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _listening() as listener:
        # The offer names the relay: every byte the peer sends passes it (the 1st byte is the ACCEPTED
        # answer to the token, then the data; one data byte well inside the snapshot is flipped).
        relay = _FlippingRelay(listener.port, at=1 + 3_000_000)
        listener.port = relay.port
        source = _source(tmp_path, listener)
        async with _peer(source) as target:
            with caplog.at_level(logging.INFO):
                outcome = await asyncio.to_thread(
                    bootstrap._from_peers, [target], _settings(tmp_path / "new"), IDENT, {}, None
                )
        relay.close()
    assert not outcome.installed
    assert "does not match: it was corrupted in transit" in caplog.text
    assert "falling back to replaying" in caplog.text
    assert not (tmp_path / "new" / snapshot.DATA_FILE).exists()  # nothing installed
    assert not (tmp_path / "new" / snapshot.INCOMING).exists()


def test_incoming_refuses_more_than_its_limit(tmp_path: Path) -> None:
    announced = Incoming(tmp_path / "a", limit=1000)
    with pytest.raises(SnapshotTooBig, match="does not fit"):
        announced.begin(Header(IDENT, {0: 0}, 1001))
    announced.abort()
    streamed = Incoming(tmp_path / "b", limit=1000)
    streamed.begin(Header(IDENT, {0: 0}, 0))  # size unknown: counted as it arrives
    streamed.write(b"x" * 1000)
    with pytest.raises(SnapshotTooBig, match="takes at most 1000 bytes"):
        streamed.write(b"x")
    streamed.abort()
    assert not (tmp_path / "b" / snapshot.INCOMING).exists()


def test_incoming_limit_defaults_to_free_space_less_the_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot, "free_bytes", lambda _path: FULL_BELOW_BYTES + 5000)
    incoming = Incoming(tmp_path / "x")
    assert incoming.limit == 5000
    incoming.abort()


@pytest.mark.parametrize("peer_has_channel", [True, False], ids=["data channel", "gRPC chunks"])
async def test_a_snapshot_too_big_for_the_disk_falls_back_to_replay_without_asking_more_peers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, peer_has_channel: bool
) -> None:
    monkeypatch.setattr(snapshot, "free_bytes", lambda _path: FULL_BELOW_BYTES + 100_000)
    asked: list[str] = []
    real_fetch: Callable[..., Header] = bootstrap.fetch

    def counting_fetch(peer: str, *args: object) -> Header:
        asked.append(peer)
        return real_fetch(peer, *args)

    monkeypatch.setattr(bootstrap, "fetch", counting_fetch)
    with _listening() as listener:
        source = _source(tmp_path, listener if peer_has_channel else None)
        async with _peer(source) as target:
            with caplog.at_level(logging.INFO):
                outcome = await asyncio.to_thread(
                    bootstrap._from_peers, [target, target], _settings(tmp_path / "new"), IDENT, {}, None
                )
    assert not outcome.installed
    assert asked == [target]  # a second peer's snapshot would not fit either
    assert "does not fit" in caplog.text and "falling back to replaying" in caplog.text
    assert not (tmp_path / "new" / snapshot.INCOMING).exists()


async def test_at_most_max_streams_on_the_data_channel_too(tmp_path: Path) -> None:
    with _listening() as listener:
        source = _source(tmp_path, listener)
        first = source.stream("t", True)
        assert isinstance(await anext(first), Header)
        assert isinstance(await anext(first), DataOffer)  # under way, waiting for its receiver
        with pytest.raises(Unavailable, match="snapshot-max-streams"):
            await anext(source.stream("t", True))
        await first.aclose()  # abandoned: its slot is free again
        assert isinstance(await anext(source.stream("t", True)), Header)


class _FakeClock:
    """time.monotonic/time.sleep for kvs2.datachannel: sleeping advances the clock, nothing else does."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_throttled_send_keeps_to_its_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--snapshot-max-bytes-per-second on the data channel: the sender waits so that the bytes sent never
    run ahead of the rate (a fake clock: only the sender's own waits pass time)."""
    clock = _FakeClock()
    monkeypatch.setattr(datachannel, "time", clock)
    data = bytes(range(256)) * (3 * datachannel.BUFFER_BYTES // 256 + 1000)  # 3 buffers and a bit
    path = tmp_path / "data"
    path.write_bytes(data)
    rate = 1_000_000
    ours, theirs = socket.socketpair()
    received = bytearray()

    def drain() -> None:
        while part := theirs.recv(1 << 20):
            received.extend(part)

    reader = threading.Thread(target=drain)
    reader.start()
    with path.open("rb", buffering=0) as file, ours:
        sent, _digest = datachannel.send(file.fileno(), ours, max_bytes_per_second=rate)
    reader.join()
    theirs.close()
    assert sent == len(data) and bytes(received) == data
    assert clock.now == pytest.approx(len(data) / rate)  # it waited exactly as long as the rate says


async def test_a_data_channel_that_cannot_be_reached_costs_a_retry_over_grpc_not_the_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A firewall or NetworkPolicy that admits only the gRPC port: the receiver asks the same peer again
    without the data channel, and installs from gRPC chunks."""
    closed = socket.create_server((HOST, 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the dial is refused
    with _listening() as listener:
        listener.port = closed_port
        source = _source(tmp_path, listener)
        async with _peer(source) as target:
            with caplog.at_level(logging.INFO):
                header = await asyncio.to_thread(
                    bootstrap.fetch, target, _settings(tmp_path / "new"), IDENT, {}
                )
    assert header.positions == {0: 1, 1: 5000}
    assert Replica(tmp_path / "new", map_size=1 << 23).items() == source.replica.items()
    assert f"cannot connect to the data channel {HOST}:{closed_port}" in caplog.text
    assert "over gRPC instead" in caplog.text
    assert "over gRPC)" in caplog.text  # the peer's "snapshot sent (...)" line names the channel


async def test_connections_that_never_finish_their_handshake_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connections sitting in their handshake (never sending a token) cannot pile up threads: past
    MAX_HANDSHAKES the listener closes new ones at once; once they go, it accepts again."""
    monkeypatch.setattr(datachannel, "MAX_HANDSHAKES", 2)
    with _listening() as listener:
        idle = [socket.create_connection((HOST, listener.port)) for _ in range(2)]
        for sock in idle:  # the listener answers nothing until it has a token: wait for its handshake
            sock.sendall(datachannel.MAGIC[:1])
        offer, _connected = listener.offer()
        with pytest.raises(DataChannelError):
            await asyncio.to_thread(datachannel.dial, HOST, offer, None)
        for sock in idle:
            sock.close()
        for _attempt in range(50):  # the listener notices the closed ones and frees their places
            offer, connected = listener.offer()
            try:
                sock = await asyncio.to_thread(datachannel.dial, HOST, offer, None)
            except DataChannelError:
                await asyncio.sleep(0.1)
                continue
            sock.close()
            (await asyncio.wrap_future(connected)).close()
            break
        else:
            pytest.fail("the listener never accepted a connection again")


@pytest.mark.parametrize("direct", [True, False], ids=["O_DIRECT", "page cache (no O_DIRECT)"])
def test_received_bytes_reach_the_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    """Whole buffers and a short, unaligned last one; with O_DIRECT and without (file systems that
    refuse it): the file holds exactly the bytes sent, and the digest matches them."""
    if not direct:
        monkeypatch.delattr(os, "O_DIRECT")
    monkeypatch.setattr(snapshot, "DISK_BUFFER_BYTES", 64 * 1024)
    data = bytes(range(256)) * (5 * 64 * 1024 // 256) + b"tail-of-1234-bytes" * 68 + b"xx"
    incoming = Incoming(tmp_path / "new")
    incoming.begin(Header(IDENT, {0: 0}, 0))
    ours, theirs = socket.socketpair()

    def send() -> None:
        with ours:
            ours.sendall(data)

    sender = threading.Thread(target=send)
    sender.start()
    with theirs:
        assert incoming.receive(theirs) == len(data)
    sender.join()
    assert (incoming.dir / snapshot.DATA_FILE).read_bytes() == data
    assert incoming._digest.digest() == xxhash.xxh3_128(data).digest()
    incoming.abort()
