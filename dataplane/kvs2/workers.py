"""Several server processes for one replica: `kvs2 serve --workers N`.

Why: one Python process serves gRPC on one core. LMDB is multi-process safe, so N processes can serve
reads from the same environment while exactly one of them — the leader — runs the ingester (the only
writer) and the clean-up janitor. They share a port with SO_REUSEPORT; the kernel spreads connections.

What followers need from the leader travels over one pipe each, as length-prefixed pickles: the
ingester's progress snapshots (health, read-your-writes and linearizable waits), the verdicts of
conditional writes (a follower that accepted one waits for it), and the topic's size limit.
Processes are forked before any gRPC, LMDB or Kafka object exists (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")


# A follower that leaves the leader's news unread this long (while some is queued for it), or lets this
# much pile up, is killed: it is not serving either (a live process drains its pipe in its event loop),
# and the leader must never wait for it (issue 8: one stopped follower stalled the whole replica).
FOLLOWER_STALL_TIMEOUT = 10.0
MAX_QUEUED_BYTES = 64 << 20


class _Follower:
    def __init__(self, fd: int, pid: int | None) -> None:
        self.fd = fd
        self.pid = pid
        self.queued = bytearray()
        self.stuck_since: float | None = None  # when queued bytes last stopped draining


# Kinds of news a follower that joins late needs at once: the latest of each. (Verdicts it missed
# belong to calls other processes took.)
_STICKY = ("limit", "snapshot")


class Fanout:
    """The leader's side: send a message to every follower (any thread), never blocking.

    Each follower's pipe is non-blocking; what it cannot take at once waits in a bounded queue that a
    small thread drains as the pipe empties. A follower that stops draining is killed and dropped
    (`dropped` names it); the leader and the other followers go on serving, and the leader's monitor
    starts a replacement (`replace`).
    """

    def __init__(
        self,
        fds: list[int],
        pids: list[int] | None = None,
        *,
        stall_timeout: float = FOLLOWER_STALL_TIMEOUT,
        max_queued: int = MAX_QUEUED_BYTES,
    ) -> None:
        owners: list[int | None] = list(pids) if pids is not None else [None] * len(fds)
        self._followers = [_Follower(fd, pid) for fd, pid in zip(fds, owners, strict=True)]
        for fd in fds:
            os.set_blocking(fd, False)
        self._stall_timeout = stall_timeout
        self._max_queued = max_queued
        self.dropped: set[int] = set()
        self._last: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._queued = threading.Event()
        self._closed = False
        self._drainer = threading.Thread(target=self._drain_loop, name="kvs2-fanout", daemon=True)
        self._drainer.start()

    def send(self, kind: str, payload: object) -> None:
        frame = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
        data = _LEN.pack(len(frame)) + frame
        with self._lock:
            if kind in _STICKY:
                self._last[kind] = data
            for f in list(self._followers):
                f.queued += data
                self._flush(f)
            if any(f.queued for f in self._followers):
                self._queued.set()

    def _flush(self, f: _Follower) -> None:
        """Write what the pipe takes now (lock held); drop the follower if it is gone or stuck."""
        now = time.monotonic()
        try:
            written = os.write(f.fd, f.queued) if f.queued else 0
        except BlockingIOError:
            written = 0
        except OSError:  # that follower is gone; the leader's monitor notices its exit
            self._remove(f)
            return
        if written:
            del f.queued[:written]
            f.stuck_since = None
        if not f.queued:
            return
        if f.stuck_since is None:
            f.stuck_since = now
        behind = now - f.stuck_since
        if behind >= self._stall_timeout or len(f.queued) > self._max_queued:
            self._drop(f, behind)

    def _drop(self, f: _Follower, behind: float) -> None:
        left = len(self._followers) - 1
        log.error(
            "worker process %s has not read the leader's news for %.1fs (%d bytes queued): killed it; "
            "the replica goes on without it (%d follower%s left)",
            f.pid,
            behind,
            len(f.queued),
            left,
            "" if left == 1 else "s",
        )
        if f.pid is not None:
            self.dropped.add(f.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(f.pid, signal.SIGKILL)
        self._remove(f)

    def _remove(self, f: _Follower) -> None:
        self._followers.remove(f)
        with contextlib.suppress(OSError):
            os.close(f.fd)

    def _drain_loop(self) -> None:
        while True:
            self._queued.wait(1.0)
            with self._lock:
                if self._closed:
                    return
                waiting = [f.fd for f in self._followers if f.queued]
                if not waiting:
                    self._queued.clear()
                    continue
            with contextlib.suppress(OSError, ValueError):
                select.select([], waiting, [], 0.2)
            with self._lock:
                for f in list(self._followers):
                    if f.queued:
                        self._flush(f)

    def replace(self, settings: object) -> int:
        """Start a follower in place of a dropped one; returns its PID.

        Exec'd as a fresh program, not forked: the leader now holds gRPC, LMDB and Kafka state that a
        forked child must not inherit. Its settings travel as the first message on its pipe, then the
        latest news, then everything that follows.
        """
        read_fd, write_fd = os.pipe()
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "kvs2.workers", str(read_fd)], pass_fds=(read_fd,), close_fds=True
            )
        finally:
            os.close(read_fd)
        _spawned.append(child)
        frame = pickle.dumps(settings, protocol=pickle.HIGHEST_PROTOCOL)
        follower = _Follower(write_fd, child.pid)
        follower.queued += _LEN.pack(len(frame)) + frame
        os.set_blocking(write_fd, False)
        with self._lock:
            for kind in _STICKY:
                follower.queued += self._last.get(kind, b"")
            self._followers.append(follower)
            self._flush(follower)
            if follower.queued:
                self._queued.set()
        return child.pid

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for f in self._followers:
                with contextlib.suppress(OSError):
                    os.close(f.fd)
            self._followers.clear()
        self._queued.set()
        self._drainer.join(timeout=2)


class FanIn:
    """A follower's side: read the leader's messages in the event loop and dispatch them."""

    def __init__(
        self, fd: int, handlers: dict[str, Callable[[Any], None]], on_eof: Callable[[], None]
    ) -> None:
        self._fd = fd
        self._handlers = handlers
        self._on_eof = on_eof
        self._buffer = bytearray()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, self._readable)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._fd)
        os.close(self._fd)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            self._on_eof()
            return
        self._buffer += chunk
        while len(self._buffer) >= _LEN.size:
            (size,) = _LEN.unpack_from(self._buffer)
            if len(self._buffer) < _LEN.size + size:
                break
            frame = bytes(self._buffer[_LEN.size : _LEN.size + size])
            del self._buffer[: _LEN.size + size]
            kind, payload = pickle.loads(frame)  # only ever from our own leader process
            self._handlers[kind](payload)


def fork_followers(count: int, child: Callable[[int], int]) -> tuple[list[int], list[int]]:
    """Fork `count` followers; each runs `child(read_fd)` and exits with its result.

    Returns the followers' PIDs and the leader's write ends, one per follower.
    """
    pids: list[int] = []
    fds: list[int] = []
    for _ in range(count):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the follower
            os.close(write_fd)
            for fd in fds:
                os.close(fd)
            code = 1
            try:
                code = child(read_fd)
            except BaseException:
                log.exception("worker process failed")
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(read_fd)
        pids.append(pid)
        fds.append(write_fd)
    return pids, fds


# Replacement followers (kvs2.workers run as a program); kept so that their Popen objects are not
# collected while running. The leader reaps them with waitpid like forked ones.
_spawned: list[subprocess.Popen[bytes]] = []


def _read_frame(fd: int) -> object:
    def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise EOFError("the leader closed the pipe before sending the settings")
            out += chunk
        return out

    (size,) = _LEN.unpack(exactly(_LEN.size))
    return pickle.loads(exactly(size))  # only ever from our own leader process


def _replacement_follower(fd: int) -> int:
    """`python -m kvs2.workers FD`: a follower started by the leader in place of a dropped one."""
    settings = _read_frame(fd)
    from kvs2.config import ServeSettings
    from kvs2.server import Role, serve

    assert isinstance(settings, ServeSettings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(serve(settings, Role(fanin_fd=fd)))


def exited(pids: list[int]) -> list[tuple[int, int]]:
    """(pid, exit status) of the followers that have exited, without waiting."""
    out = []
    for pid in pids:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done:
            out.append((pid, os.waitstatus_to_exitcode(status)))
    return out


if __name__ == "__main__":
    sys.exit(_replacement_follower(int(sys.argv[1])))
