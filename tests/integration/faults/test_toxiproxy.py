"""The nemesis' network faults do what they claim, on a plain TCP echo server behind Toxiproxy:
delay and freeze hold bytes (the socket stays open) and heal delivers them; cut closes the connection."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.common import LOOPBACK
from tests.harness.nemesis import FREEZE_MS
from tests.harness.toxiproxy import ToxiproxyClient, ToxiproxyServer


@pytest.fixture
def echo_proxy(tmp_path: Path) -> Iterator[tuple[ToxiproxyClient, int]]:
    server = socket.create_server((LOOPBACK, 0))
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the proxy may reset it: that is the test's business
            for data in iter(lambda: conn.recv(100), b""):
                conn.sendall(data)

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=serve, daemon=True)
    acceptor.start()
    toxiproxy = ToxiproxyServer(tmp_path).start()
    try:
        proxy = toxiproxy.client.create_proxy(
            "echo", f"{LOOPBACK}:0", f"{LOOPBACK}:{server.getsockname()[1]}"
        )
        yield toxiproxy.client, proxy.port
    finally:
        toxiproxy.stop()
        stop.set()
        acceptor.join()
        server.close()


def test_freeze_holds_bytes_with_the_socket_open_and_heal_delivers_them(
    echo_proxy: tuple[ToxiproxyClient, int],
) -> None:
    client, port = echo_proxy
    with socket.create_connection((LOOPBACK, port), timeout=5) as conn:
        conn.sendall(b"before")
        assert conn.recv(100) == b"before"
        client.add_toxic("echo", "freeze", "latency", "downstream", {"latency": FREEZE_MS})
        conn.sendall(b"held")
        conn.settimeout(1.0)
        with pytest.raises(TimeoutError):
            conn.recv(100)
        client.remove_toxic("echo", "freeze")
        conn.settimeout(5.0)
        assert conn.recv(100) == b"held"


def test_cut_closes_connections_and_heal_accepts_new_ones(echo_proxy: tuple[ToxiproxyClient, int]) -> None:
    client, port = echo_proxy
    with socket.create_connection((LOOPBACK, port), timeout=5) as conn:
        client.set_enabled("echo", False)
        assert conn.recv(100) == b""  # closed by the proxy
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK, port), timeout=5).close()
    client.reset()
    with socket.create_connection((LOOPBACK, port), timeout=5) as conn:
        conn.sendall(b"again")
        assert conn.recv(100) == b"again"
