"""A raw TCP data channel for snapshot bytes, beside the Snapshot RPC.

Why: grpc Python copies every byte of a message several times (protobuf, the HTTP/2 frame, Python
objects), which bounded a snapshot at ~240 MB/s on the bench machine while LMDB's copy, XXH3 and a plain
socket move the same bytes at 0.5-2.5 GB/s. So the Snapshot RPC stays the control channel — it carries the
request (authorized: `read`), the header and the trailer (size, XXH3-128) — and only the data bytes take
a plain TCP connection, read into and sent from one reused buffer.

How a connection is tied to its RPC: the peer offers a random one-time token (256 bits, single use,
forgotten after OFFER_SECONDS) on the RPC; the receiver dials the same host it dialled for the RPC at the
offered port, sends MAGIC + token, and reads the bytes until the peer closes. A connection without a
pending token is closed before a byte of data is sent. On a TLS store the channel is TLS with the same
certificates as gRPC (the server certificate, client certificates required with a client CA), so it is
never plaintext where gRPC is not.

Why stdlib `socket`/`ssl` and no library: the job is one accept loop, a fixed-size handshake and a
`sendall`/`recv_into` loop on blocking sockets in worker threads (GIL released in the kernel calls and in
OpenSSL); an asyncio or Twisted transport would move every byte through the event loop the peer needs for
serving, and no maintained library offers "send one authenticated byte stream" with less code.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hmac
import logging
import os
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass

import xxhash

from kvs2.credentials import ClientTls, ServerContext, ServerTls

log = logging.getLogger(__name__)

MAGIC = b"KVS2-SNAPSHOT-DATA/1\n"
TOKEN_BYTES = 32
ACCEPTED = b"\x01"
OFFER_SECONDS = 30.0  # a token not presented within this is forgotten; the sender gives up
HANDSHAKE_SECONDS = 10.0  # TLS handshake + MAGIC + token
IO_SECONDS = 60.0  # longest a send or receive may stall before the transfer is given up
BUFFER_BYTES = 1 << 20
MAX_HANDSHAKES = 16  # connections in their handshake at once; more are closed at once


class DataChannelError(Exception):
    """The data channel could not be opened or broke (the receiver falls back to another peer/replay)."""


@dataclass(frozen=True)
class Offer:
    """What the RPC carries to the receiver: where to dial and what to present."""

    port: int
    token: bytes


@dataclass
class _Pending:
    token: bytes
    expires: float
    connected: concurrent.futures.Future[socket.socket]


class DataListener:
    """The peer's listening socket: an accept thread hands each connection that presents a pending
    token to the snapshot stream that offered it (`offer`)."""

    def __init__(self, host: str, port: int, tls: ServerTls | None) -> None:
        self._tls = ServerContext(tls) if tls is not None else None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host.strip("[]"), port))
        except OSError:
            self._sock.close()
            raise
        self._sock.listen(16)
        self._sock.settimeout(0.5)  # the accept loop checks `_closed` this often
        self.port: int = self._sock.getsockname()[1]
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._thread = threading.Thread(target=self._accept_loop, name="kvs2-snapshot-data", daemon=True)
        self._thread.start()
        log.info(
            "snapshot data channel listening on %s:%d (%s)", host, self.port, "TLS" if tls else "plaintext"
        )

    def offer(self) -> tuple[Offer, concurrent.futures.Future[socket.socket]]:
        """A new one-time token, and the future its connection arrives in (after the handshake)."""
        pending = _Pending(
            secrets.token_bytes(TOKEN_BYTES), time.monotonic() + OFFER_SECONDS, concurrent.futures.Future()
        )
        with self._lock:
            now = time.monotonic()
            self._pending = [p for p in self._pending if p.expires > now and not p.connected.done()]
            self._pending.append(pending)
        return Offer(self.port, pending.token), pending.connected

    def withdraw(self, token: bytes) -> None:
        """Forget `token` (its stream gave up); a connection already handed over is the stream's."""
        with self._lock:
            self._pending = [p for p in self._pending if p.token != token]

    def _take(self, token: bytes) -> _Pending | None:
        now = time.monotonic()
        with self._lock:
            for pending in self._pending:
                # Compared in constant time; every pending token is compared, matching or not.
                if hmac.compare_digest(pending.token, token) and pending.expires > now:
                    self._pending.remove(pending)
                    return pending
        return None

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, address = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                log.exception("snapshot data channel: accept failed")
                time.sleep(0.5)
                continue
            if not self._handshakes.acquire(blocking=False):
                log.warning(
                    "snapshot data channel: refused %s (%d handshakes under way)", address, MAX_HANDSHAKES
                )
                conn.close()
                continue
            threading.Thread(
                target=self._handshake, args=(conn, address), name="kvs2-snapshot-data-in", daemon=True
            ).start()

    def _handshake(self, conn: socket.socket, address: object) -> None:
        """TLS (on a TLS store), then MAGIC + token; a pending token's stream gets the connection."""
        try:
            self._handshake_one(conn, address)
        finally:
            self._handshakes.release()

    def _handshake_one(self, conn: socket.socket, address: object) -> None:
        try:
            conn.settimeout(HANDSHAKE_SECONDS)
            if self._tls is not None:
                self._tls.refresh()  # a renewed certificate serves the next connections
                conn = self._tls.listening.wrap_socket(conn, server_side=True)
            hello = _read_exactly(conn, len(MAGIC) + TOKEN_BYTES)
            pending = self._take(hello[len(MAGIC) :]) if hello[: len(MAGIC)] == MAGIC else None
            if pending is None:
                log.warning("snapshot data channel: refused %s (no pending token matches)", address)
                conn.close()
                return
            conn.sendall(ACCEPTED)
            conn.settimeout(IO_SECONDS)
            if not pending.connected.set_running_or_notify_cancel():
                conn.close()  # its stream gave up meanwhile
                return
            pending.connected.set_result(conn)
        except (OSError, DataChannelError) as exc:  # ssl.SSLError is an OSError
            log.warning("snapshot data channel: handshake with %s failed: %s", address, exc)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        self._thread.join(timeout=2.0)
        with self._lock:
            for pending in self._pending:
                pending.connected.cancel()
            self._pending = []


def client_context(tls: ClientTls) -> ssl.SSLContext:
    """The receiver's TLS: the store's CA (else the system's roots), its own certificate for mTLS —
    what kvs2.credentials.peer_client_tls gives gRPC."""
    context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca is not None else None)
    if tls.cert is not None and tls.key is not None:
        context.load_cert_chain(tls.cert, tls.key)
    return context


def dial(host: str, offer: Offer, tls: ClientTls | None) -> socket.socket:
    """Connect to the offered port of `host` (the host the RPC went to), present the token, and return
    the connection once the peer accepted it. The hostname is checked as gRPC checks it."""
    try:
        sock = socket.create_connection((host.strip("[]"), offer.port), timeout=HANDSHAKE_SECONDS)
    except OSError as exc:
        raise DataChannelError(f"cannot connect to the data channel {host}:{offer.port}: {exc}") from exc
    try:
        if tls is not None:
            sock = client_context(tls).wrap_socket(sock, server_hostname=tls.server_name or host.strip("[]"))
        sock.sendall(MAGIC + offer.token)
        if sock.recv(1) != ACCEPTED:
            raise DataChannelError(f"the peer refused the data channel {host}:{offer.port} (token refused)")
        sock.settimeout(IO_SECONDS)
        return sock
    except OSError as exc:
        sock.close()
        raise DataChannelError(f"the data channel {host}:{offer.port} failed: {exc}") from exc
    except DataChannelError:
        sock.close()
        raise


def send(fd: int, sock: socket.socket, max_bytes_per_second: int = 0) -> tuple[int, bytes]:
    """Send everything readable from `fd` (a pipe or a file) until its end; returns (bytes, XXH3-128).

    One reused buffer: `os.readv` fills it, XXH3 and `sendall` take a memoryview of it — no bytes
    object per chunk. Blocking: run it in a worker thread."""
    buffer = bytearray(BUFFER_BYTES)
    view = memoryview(buffer)
    digest = xxhash.xxh3_128()
    sent = 0
    started = time.monotonic()
    while n := os.readv(fd, [buffer]):
        chunk = view[:n]
        digest.update(chunk)
        sock.sendall(chunk)
        sent += n
        if max_bytes_per_second > 0:
            ahead = sent / max_bytes_per_second - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    return sent, digest.digest()


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        part = sock.recv(size - len(out))
        if not part:
            raise DataChannelError(f"the connection ended after {len(out)} of {size} handshake bytes")
        out += part
    return bytes(out)


def fill(sock: socket.socket, view: memoryview) -> int:
    """Receive into `view` until it is full or the peer closed; the bytes received (0: the end).

    Why fill: TLS hands out one 16 KiB record per call; hashing and writing whole megabytes keeps the
    per-call overhead off the transfer."""
    got = 0
    size = len(view)
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            break
        got += n
    return got


__all__ = ["DataChannelError", "DataListener", "Offer", "client_context", "dial", "fill", "send"]
