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
import logging
import os
import pickle
import struct
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")


class Fanout:
    """The leader's side: send a message to every follower (any thread)."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = list(fds)
        self._lock = threading.Lock()

    def send(self, kind: str, payload: object) -> None:
        frame = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
        data = _LEN.pack(len(frame)) + frame
        with self._lock:
            for fd in list(self._fds):
                try:
                    _write_all(fd, data)
                except OSError:  # that follower is gone; the leader's monitor notices and stops
                    self._fds.remove(fd)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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
