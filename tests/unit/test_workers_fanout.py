"""The leader's fan-out to `--workers` followers never blocks on a follower that stops reading."""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time

from kvs2.workers import Fanout


def _wait(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_send_never_blocks_and_a_stuck_follower_is_killed_and_dropped() -> None:
    # A stand-in follower process that never reads its pipe (like one under SIGSTOP).
    read_fd, write_fd = os.pipe()
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], pass_fds=(read_fd,))
    os.close(read_fd)
    fanout = Fanout([write_fd], [stuck.pid], stall_timeout=0.2)
    try:
        payload = b"x" * 4096
        for _ in range(200):  # 800 KiB: far more than a pipe holds
            fanout.send("snapshot", payload)
        _wait(lambda: stuck.pid in fanout.dropped, "the stuck follower to be dropped")
        assert stuck.wait(timeout=30) == -signal.SIGKILL
        fanout.send("snapshot", payload)  # nobody left: still fine
    finally:
        fanout.close()
        if stuck.poll() is None:
            stuck.kill()
            stuck.wait()


def test_a_reading_follower_gets_every_message_in_order() -> None:
    read_fd, write_fd = os.pipe()
    fanout = Fanout([write_fd], stall_timeout=30)
    received = bytearray()
    reader = threading.Thread(target=lambda: _read_until_eof(read_fd, received))
    reader.start()
    for i in range(2000):
        fanout.send("n", b"%d" % i * 50)  # ~200 KiB in all, more than the pipe holds
    _wait(lambda: len(_frames(received)) == 2000, "every message to arrive")
    fanout.close()
    reader.join(timeout=30)
    os.close(read_fd)
    assert [pickle.loads(f) for f in _frames(received)] == [("n", b"%d" % i * 50) for i in range(2000)]
    assert not fanout.dropped


def _read_until_eof(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 1 << 16):
        into += chunk


def _frames(data: bytearray) -> list[bytes]:
    out, pos = [], 0
    raw = bytes(data)
    while pos + 4 <= len(raw):
        (size,) = struct.unpack_from(">I", raw, pos)
        if pos + 4 + size > len(raw):
            break
        out.append(raw[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out
