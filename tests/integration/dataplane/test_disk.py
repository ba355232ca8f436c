"""Disk and map limits on real Kafka: a tiny LMDB map grows under load; a full disk stops applying
(NOT_SERVING, with the reason) without corrupting or skipping anything, and the replica resumes once
space is freed."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.common import wait_until
from tests.harness.kafka import KafkaBroker
from tests.harness.replica import ReplicaProcess
from tests.integration.dataplane.conftest import StartReplica

pytestmark = pytest.mark.integration


def test_tiny_map_grows_under_load(kafka: KafkaBroker, topic: str, start_replica: StartReplica) -> None:
    a = start_replica(kafka.bootstrap_servers, topic, "a", extra_args=("--map-size", "65536"))
    stop = threading.Event()
    read_errors: list[BaseException] = []

    def read_while_growing() -> None:
        with a.client() as c:
            while not stop.is_set():
                try:
                    c.get(b"k-0")
                    c.count()
                except BaseException as exc:  # any failure of a read is the finding
                    read_errors.append(exc)
                    return

    reader = threading.Thread(target=read_while_growing)
    reader.start()
    try:
        with a.client() as c:
            for i in range(1500):
                c.set(f"k-{i}".encode(), bytes([i % 251]) * 2000)
            wait_until(lambda: c.count() == 1500, timeout=60, what="every write to be applied")
            for i in range(0, 1500, 7):
                value = c.get(f"k-{i}".encode())
                assert value is not None and value.data == bytes([i % 251]) * 2000
    finally:
        stop.set()
        reader.join()
    assert read_errors == []
    assert "LMDB map full: growing it" in a.log_text()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs of the test's own (the tests run as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_stops_applying_and_resumes_when_space_is_freed(
    kafka: KafkaBroker, topic: str, small_disk: Path, tmp_path: Path
) -> None:
    a = ReplicaProcess(kafka.bootstrap_servers, topic, small_disk / "replica", tmp_path / "replica.log")
    a.start()
    try:
        a.wait_serving()
        ballast = small_disk / "ballast"
        ballast.write_bytes(b"\0" * (14 * 1024 * 1024))  # about 2 MiB left for the store
        with a.client() as c:
            for i in range(300):  # 300 x 10 KB, twice over (value and change history): does not fit
                c.set(f"k-{i}".encode(), bytes([i % 251]) * 10_000)

            def refused_for_disk() -> bool:
                try:
                    c.get(b"k-0")
                except grpc.RpcError as exc:
                    return exc.code() == grpc.StatusCode.UNAVAILABLE and "disk" in (exc.details() or "")
                return False

            wait_until(
                refused_for_disk, timeout=60, what="the replica to stop serving because its disk is full"
            )
            assert a.health() == "NOT_SERVING"
            ballast.unlink()
            a.wait_serving()
            wait_until(lambda: c.count() == 300, timeout=60, what="the rest of the writes to be applied")
            for i in range(300):
                value = c.get(f"k-{i}".encode())
                assert value is not None and value.data == bytes([i % 251]) * 10_000
    finally:
        a.stop()
