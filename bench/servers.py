"""The peers bench/run.py compares kvs2 with, each started pinned like the kvs2 replica: etcd (built from
its Go module by the test harness), redis-server (Debian's package) and the bare grpc.aio floor
(bench/floor.py). Every function returns a started `ManagedProcess`; the caller stops it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from bench.tools import ROOT, SERVER_CPU
from tests.harness.common import ManagedProcess, free_port, port_open, wait_until
from tests.harness.gobuild import ensure_tool


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def start_etcd(work: Path, name: str, cpus: str = SERVER_CPU) -> tuple[ManagedProcess, str]:
    """One etcd member (fsync on, its defaults) on `cpus`, with key-0000001 = 100 bytes put."""
    etcd = ensure_tool("etcd")
    client_port, peer_port = free_port(), free_port()
    endpoint = f"127.0.0.1:{client_port}"
    proc = ManagedProcess(
        name,
        [
            "taskset",
            "-c",
            cpus,
            str(etcd),
            "--data-dir",
            str(work / name),
            "--listen-client-urls",
            f"http://{endpoint}",
            "--advertise-client-urls",
            f"http://{endpoint}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{peer_port}",
        ],
        work / f"{name}.log",
    ).start()

    def put() -> bool:
        body = json.dumps({"key": _b64(b"key-0000001"), "value": _b64(b"v" * 100)}).encode()
        try:
            urllib.request.urlopen(f"http://{endpoint}/v3/kv/put", body, timeout=1).read()
        except OSError:
            return False
        return True

    try:
        wait_until(put, timeout=60, what="etcd to accept a put")
    except BaseException:
        proc.stop()
        raise
    return proc, endpoint


def start_redis_server(work: Path) -> tuple[ManagedProcess, int]:
    """redis-server, the peer, pinned to the server CPU like kvs2's replica; no persistence."""
    port = free_port()
    proc = ManagedProcess(
        "redis",
        [
            "taskset",
            "-c",
            SERVER_CPU,
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ],
        work / f"redis-{port}.log",
    ).start()
    try:
        wait_until(lambda: port_open("127.0.0.1", port), timeout=30, what="redis-server to listen")
    except BaseException:
        proc.stop()
        raise
    return proc, port


def start_floor(work: Path, loop: str) -> tuple[ManagedProcess, str]:
    """bench/floor.py on the server CPU with event loop `loop` ("asyncio" or "uvloop")."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    proc = ManagedProcess(
        "floor",
        [
            "taskset",
            "-c",
            SERVER_CPU,
            sys.executable,
            "-m",
            "bench.floor",
            "--listen",
            target,
            "--loop",
            loop,
        ],
        work / "floor.log",
        cwd=ROOT,
    ).start()
    try:
        wait_until(lambda: port_open("127.0.0.1", port), timeout=60, what="the floor server to listen")
    except BaseException:
        proc.stop()
        raise
    return proc, target


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    return out[2].removeprefix("v=") if len(out) > 2 else "unknown"
