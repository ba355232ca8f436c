"""Snapshots of a replica's store: made by a serving peer, installed by a replica that has to (re)build.

Why: replaying a large topic takes minutes to hours; copying a peer's LMDB environment takes as long as
moving its bytes. LMDB copies a consistent, compacted environment from one read transaction while the
peer keeps ingesting and serving, and the copy carries the offsets it reflects (they live in the same
environment), so the new replica resumes reading Kafka exactly where the copy ends.

A snapshot on the wire (kvs2.server translates these to `SnapshotChunk` messages): a `Header` (topic
identity, positions, size — 0 while unknown), the bytes of the copied `data.mdb` — or, to a receiver that
asked for it, a `DataOffer` and the bytes over the data channel (kvs2.datachannel) — then a `Trailer` with
their size and XXH3-128. The receiver writes the bytes into `<data dir>/.snapshot-incoming/`, verifies
size, checksum, and that the received environment itself names the expected topic identity and the
header's positions, and only then moves it into place with one rename — a half-received snapshot is
never opened as the store.

Where the time goes (bench/snapshot.py, measured): with SHA-256 (~380 MB/s on the bench machine,
computed by both sides) and a copy written to disk before the first byte was sent, a 1 M-key store
moved at ~90 MB/s. Now the checksum is XXH3-128 (~3 GB/s; a transit check — TLS guards against
tampering), and an unthrottled stream reads LMDB's compacting copy from a pipe while LMDB writes it, so
copying, sending, receiving and checking overlap. A throttled stream (`--snapshot-max-bytes-per-second`)
still copies to a file first: the copy holds a read transaction (and the map-growth gate) only for as
long as the copy itself takes, not for the whole slow transfer. Then gRPC Python's own copies of every
byte bounded the send (~240 MB/s for 10 M keys); the data channel moves the bytes through one reused
buffer at the speed of the receiver's disk (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import queue
import shutil
import socket
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

from kvs2 import datachannel
from kvs2.datachannel import OFFER_SECONDS, DataListener, Offer
from kvs2.diskspace import FULL_BELOW_BYTES, free_bytes
from kvs2.errors import FailedPrecondition, Kvs2Error, Unavailable
from kvs2.progress import Progress
from kvs2.storage import Replica, TopicIdentity

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
PIPE_BYTES = 1 << 20  # Linux's default limit for an unprivileged F_SETPIPE_SZ
INCOMING = ".snapshot-incoming"
OUTGOING_PREFIX = ".snapshot-outgoing-"
DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"


class SnapshotInvalid(Kvs2Error):
    """A received snapshot failed verification; the replica falls back to replaying the topic."""


class SnapshotTooBig(SnapshotInvalid):
    """A snapshot does not fit on this replica's disk: no other peer's would either (replay instead)."""


@dataclass(frozen=True)
class Header:
    identity: TopicIdentity
    positions: Mapping[int, int]
    size: int  # 0: not known yet (a streamed copy); the trailer's size counts


SHA256 = "sha256"
XXH3_128 = "xxh3_128"


@dataclass(frozen=True)
class Trailer:
    digest: bytes
    algorithm: str = XXH3_128
    size: int | None = None  # bytes sent; None from peers that announced it in the header only


@dataclass(frozen=True)
class DataOffer:
    """The data bytes come over the data channel (kvs2.datachannel): dial `port` with `token`."""

    port: int
    token: bytes


@dataclass
class SnapshotSource:
    """The peer's side: streams snapshots of `replica`, at most `max_streams` at a time and each at most
    `max_bytes_per_second` (0: unlimited), so that a scale-out cannot starve the peer's own work."""

    replica: Replica
    progress: Progress
    topic: str
    max_streams: int = 1
    max_bytes_per_second: int = 0
    listener: DataListener | None = None  # offers the data channel to receivers that ask for it
    _active: int = field(default=0, init=False)

    async def stream(
        self, topic: str, data_channel: bool = False
    ) -> AsyncGenerator[Header | bytes | DataOffer | Trailer, None]:
        """The parts of one snapshot. With `data_channel` (the receiver can take one) and a listener,
        the data bytes go over kvs2.datachannel and the stream yields a `DataOffer` in their place."""
        if topic != self.topic:
            raise FailedPrecondition(f"this replica follows topic {self.topic!r}, not {topic!r}")
        if not self.progress.serving:
            raise Unavailable("this replica is not serving (catching up): it has no snapshot to give")
        if self._active >= self.max_streams:
            raise Unavailable(
                f"this replica is already sending {self._active} snapshot(s), its limit "
                "(--snapshot-max-streams); ask another peer or retry later"
            )
        self._active += 1
        try:
            listener = self.listener if data_channel else None
            async for part in self._stream(listener):
                yield part
        finally:
            self._active -= 1

    async def _stream(
        self, listener: DataListener | None
    ) -> AsyncIterator[Header | bytes | DataOffer | Trailer]:
        throttled = self.max_bytes_per_second > 0
        started = time.monotonic()
        async with self._from_copy() if throttled else self._from_pipe() as (header, reader, copying):
            log.info("sending a snapshot (%d bytes) at positions %s", header.size, dict(header.positions))
            yield header
            if listener is not None:
                offer, connected = listener.offer()
                yield DataOffer(offer.port, offer.token)
                sent, digest = await self._send(listener, offer, connected, reader)
                channel = "data channel"
            else:
                sent, hasher = 0, xxhash.xxh3_128()
                while chunk := await asyncio.to_thread(_read_full, reader, CHUNK_BYTES):
                    hasher.update(chunk)
                    yield chunk
                    sent += len(chunk)
                    if throttled:
                        ahead = sent / self.max_bytes_per_second - (time.monotonic() - started)
                        if ahead > 0:
                            await asyncio.sleep(ahead)
                digest, channel = hasher.digest(), "gRPC"
            await copying  # a failed copy raises here: no trailer, so the receiver rejects what it got
        yield Trailer(digest, XXH3_128, sent)
        elapsed = time.monotonic() - started
        log.info(
            "snapshot sent (%d bytes in %.1fs, %.0f MB/s, over %s)",
            sent,
            elapsed,
            sent / max(elapsed, 1e-9) / 1e6,
            channel,
        )

    async def _send(
        self,
        listener: DataListener,
        offer: Offer,
        connected: concurrent.futures.Future[socket.socket],
        reader: BinaryIO,
    ) -> tuple[int, bytes]:
        """Wait for the receiver to open the data channel, then send the bytes in a worker thread (the
        event loop keeps serving). The stream given up meanwhile: the thread is stopped before the copy's
        file is closed under it."""
        try:
            sock = await asyncio.wait_for(asyncio.wrap_future(connected), OFFER_SECONDS)
        except TimeoutError:
            raise Unavailable(
                f"the receiver did not open the snapshot data channel within {OFFER_SECONDS:.0f}s"
            ) from None
        finally:
            listener.withdraw(offer.token)
        sending = asyncio.ensure_future(
            asyncio.to_thread(datachannel.send, reader.fileno(), sock, self.max_bytes_per_second)
        )
        try:
            return await asyncio.shield(sending)
        except OSError as exc:
            raise Unavailable(f"the snapshot data channel broke: {exc}") from exc
        finally:
            if not sending.done():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # the thread's next send fails: it ends
                with contextlib.suppress(BaseException):
                    await sending
            sock.close()

    @contextlib.asynccontextmanager
    async def _from_pipe(self) -> AsyncIterator[tuple[Header, BinaryIO, Awaitable[None]]]:
        """LMDB's compacting copy, read from a pipe while LMDB writes it (size unknown until the end)."""
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        positions: concurrent.futures.Future[dict[int, int]] = concurrent.futures.Future()

        def copy() -> None:
            try:
                self.replica.copy_to_fd(write_fd, positions.set_result)
            except BaseException as exc:
                if not positions.done():
                    positions.set_exception(exc)
                raise
            finally:
                os.close(write_fd)

        copying = asyncio.ensure_future(asyncio.to_thread(copy))
        reader = os.fdopen(read_fd, "rb", buffering=0)
        try:
            at = await asyncio.wrap_future(positions)
            identity = self.replica.identity()
            if identity is None:
                raise Unavailable("this replica is being rebuilt: it has no snapshot to give")
            yield Header(identity, at, 0), reader, copying
        finally:
            reader.close()  # a copy still writing gets EPIPE and ends
            with contextlib.suppress(Exception):
                await copying

    @contextlib.asynccontextmanager
    async def _from_copy(self) -> AsyncIterator[tuple[Header, BinaryIO, Awaitable[None]]]:
        """A compacting copy written to a file first, then read (for throttled streams)."""
        workdir = self.replica.path / f"{OUTGOING_PREFIX}{uuid.uuid4().hex}"
        workdir.mkdir()
        try:
            positions = await asyncio.to_thread(self.replica.copy_to, workdir)
            identity = self.replica.identity()
            if identity is None:
                raise Unavailable("this replica is being rebuilt: it has no snapshot to give")
            path = workdir / DATA_FILE
            size = path.stat().st_size
            file = path.open("rb", buffering=0)
        finally:
            # The open file stays readable; nothing is left on disk if the stream is abandoned.
            shutil.rmtree(workdir, ignore_errors=True)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        with file:
            yield Header(identity, positions, size), file, done


def _read_full(reader: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes, fewer only at the end (a pipe hands out what it holds)."""
    parts: list[bytes] = []
    want = size
    while want > 0:
        part = reader.read(want)
        if not part:
            break
        parts.append(part)
        want -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def clean_leftovers(data_dir: Path) -> None:
    """Remove half-received or abandoned snapshot files (a crash mid-transfer leaves them)."""
    if not data_dir.is_dir():
        return
    for child in data_dir.iterdir():
        if child.name == INCOMING or child.name.startswith(OUTGOING_PREFIX):
            shutil.rmtree(child, ignore_errors=True)


class Incoming:
    """The receiver's side: collects one snapshot under `<data dir>/.snapshot-incoming/` and installs it
    into `data_dir` only once it is complete and verified. Use before the replica's store is opened.

    `limit`: the most bytes it takes (default: the data directory's free space less the disk-full
    reserve). A streamed snapshot announces no size, and one that filled the disk would leave the replica
    unable even to replay; past the limit it raises SnapshotTooBig."""

    def __init__(self, data_dir: Path, limit: int | None = None) -> None:
        self.data_dir = data_dir
        self.dir = data_dir / INCOMING
        data_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir()
        self.limit = limit if limit is not None else max(0, free_bytes(data_dir) - FULL_BELOW_BYTES)
        self._file: BinaryIO = (self.dir / DATA_FILE).open("wb", buffering=0)
        self._digest = xxhash.xxh3_128()
        self._size = 0
        self.header: Header | None = None

    def begin(self, header: Header) -> None:
        if self.header is not None:
            raise SnapshotInvalid("the snapshot stream sent a second header")
        if header.size > self.limit:
            raise self._too_big(header.size)
        self.header = header

    def _too_big(self, size: int) -> SnapshotTooBig:
        return SnapshotTooBig(
            f"the snapshot ({size} bytes or more) does not fit: this replica takes at most {self.limit} "
            f"bytes (free space of {self.data_dir} less {FULL_BELOW_BYTES} bytes kept free)"
        )

    def _count(self, n: int) -> None:
        if self.header is None:
            raise SnapshotInvalid("the snapshot stream sent data before its header")
        self._size += n
        if 0 < self.header.size < self._size:
            raise SnapshotInvalid(
                f"the snapshot stream sent more than the announced {self.header.size} bytes"
            )
        if self._size > self.limit:
            raise self._too_big(self._size)

    def write(self, chunk: bytes) -> None:
        """One gRPC data chunk."""
        self._count(len(chunk))
        self._digest.update(chunk)
        _write_all(self._file.fileno(), memoryview(chunk))

    def receive(self, sock: socket.socket) -> int:
        """Every data byte from the data channel, until the peer closes it; returns how many.

        The bytes land in a few reused page-aligned buffers (recv_into, XXH3 on a view) and a thread of
        its own writes each full one to disk (`_DiskWriter`) while the next one is received."""
        got = 0
        with _DiskWriter(self.dir / DATA_FILE, self._size) as disk:
            while True:
                buffer = disk.free_buffer()
                n = datachannel.fill(sock, memoryview(buffer))
                if n == 0:
                    disk.give_back(buffer)
                    break
                self._count(n)
                self._digest.update(memoryview(buffer)[:n])
                disk.write(buffer, n)
                got += n
        return got

    def finish(self, trailer: Trailer, expected: TopicIdentity, start_offsets: Mapping[int, int]) -> Header:
        """Verify and install; SnapshotInvalid (and nothing installed) if anything does not match."""
        header = self.header
        if header is None:
            raise SnapshotInvalid("the snapshot stream ended without a header")
        os.fsync(self._file.fileno())
        self._file.close()
        for announced in (header.size or None, trailer.size):
            if announced is not None and self._size != announced:
                raise SnapshotInvalid(f"received {self._size} bytes of a {announced}-byte snapshot")
        if trailer.algorithm != XXH3_128:
            raise SnapshotInvalid(
                f"the peer checks its snapshot with {trailer.algorithm}, this replica with {XXH3_128} "
                "(a peer of an older kvs2)"
            )
        if self._digest.digest() != trailer.digest:
            raise SnapshotInvalid("the snapshot's XXH3-128 does not match: it was corrupted in transit")
        if header.identity != expected:
            raise SnapshotInvalid(f"the snapshot is of {header.identity}, but the topic is now {expected}")
        gone = {p: o for p, o in header.positions.items() if o < start_offsets.get(p, 0)}
        if gone:
            raise SnapshotInvalid(
                f"the snapshot's positions {gone} are no longer in Kafka (it starts at {dict(start_offsets)})"
            )
        received = Replica(self.dir, map_size=max(self._size * 2, 1 << 20))
        try:
            identity, positions = received.identity(), received.next_offsets()
        finally:
            received.close()
        if identity != expected or positions != dict(header.positions):
            raise SnapshotInvalid(
                f"the received store is of {identity} at {positions}, not what its header announced "
                f"({header.identity} at {dict(header.positions)})"
            )
        os.replace(self.dir / DATA_FILE, self.data_dir / DATA_FILE)  # the one atomic step
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / LOCK_FILE).unlink()
        _fsync_dir(self.data_dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        return replace(header, size=self._size)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


WRITEBACK_BYTES = 64 << 20
_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any = None
with contextlib.suppress(OSError, AttributeError):  # not Linux: the final fsync does it all
    _sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Linux's sync_file_range(SYNC_FILE_RANGE_WRITE): start writing the range out, without waiting."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


DISK_BUFFER_BYTES = 4 << 20
DISK_BUFFERS = 3
_ALIGN = 4096


class _DiskWriter:
    """Writes received buffers at `offset` onwards of `path` from a thread of its own, so that receiving
    and writing overlap; with O_DIRECT when the file system allows it.

    Why O_DIRECT (measured on the bench machine, 2 GB in 4 MiB writes): through the page cache, 5.8 s to
    write and 0.8 s to fsync (317 MB/s) — the disk cache's writeback, not the network, bounded the
    snapshot; with O_DIRECT, 1.0 s and nothing left to fsync (2.1 GB/s). Full buffers are a multiple of
    the block size; the last, short one is written through the page cache (and fsynced by `finish`).
    Without O_DIRECT (tmpfs, some file systems) every WRITEBACK_BYTES the kernel is told to start writing
    the last part out (sync_file_range), so that the final fsync has little left."""

    def __init__(self, path: Path, offset: int) -> None:
        self._buffered = os.open(path, os.O_WRONLY)
        self._direct: int | None = None
        if offset % _ALIGN == 0:
            with contextlib.suppress(OSError, AttributeError):
                self._direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
        self._offset = offset
        self._flushed = offset
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(DISK_BUFFERS):
            self._free.put(mmap.mmap(-1, DISK_BUFFER_BYTES))  # page-aligned, as O_DIRECT wants
        self._full: queue.SimpleQueue[tuple[mmap.mmap, int] | None] = queue.SimpleQueue()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="kvs2-snapshot-disk", daemon=True)
        self._thread.start()

    def __enter__(self) -> _DiskWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._full.put(None)
        self._thread.join()
        for fd in (self._buffered, self._direct):
            if fd is not None:
                os.close(fd)
        if self._error is not None and exc[0] is None:
            raise self._error

    def free_buffer(self) -> mmap.mmap:
        """A buffer to receive into (waits while all are being written)."""
        buffer = self._free.get()
        if self._error is not None:
            raise self._error
        return buffer

    def give_back(self, buffer: mmap.mmap) -> None:
        self._free.put(buffer)

    def write(self, buffer: mmap.mmap, n: int) -> None:
        """Write `buffer[:n]` next, in the writer thread; the buffer comes back through `free_buffer`."""
        self._full.put((buffer, n))

    def _run(self) -> None:
        while (item := self._full.get()) is not None:
            buffer, n = item
            try:
                if self._error is None:
                    self._write(memoryview(buffer)[:n])
            except OSError as exc:
                self._error = exc  # raised by the receiving thread at its next buffer
            finally:
                self._free.put(buffer)

    def _write(self, data: memoryview) -> None:
        while data:
            direct = self._direct is not None and len(data) % _ALIGN == 0
            fd = self._direct if direct and self._direct is not None else self._buffered
            try:
                n = os.pwrite(fd, data, self._offset)
            except OSError as exc:
                if not direct or exc.errno != errno.EINVAL or self._direct is None:
                    raise
                os.close(self._direct)  # O_DIRECT accepted at open, refused at write: page cache
                self._direct = None
                continue
            self._offset += n
            data = data[n:]
        if self._direct is None and self._offset - self._flushed >= WRITEBACK_BYTES:
            _start_writeback(self._buffered, self._flushed, self._offset - self._flushed)
            self._flushed = self._offset


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
