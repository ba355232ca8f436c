"""Hygiene of the harness itself: children die with a killed test run, failing tests carry their
processes' logs, and a port taken between choosing it and binding it does not fail a start.

These start pytest (and plain Python) as child processes, because the point is what happens to the
harness's children when *that* process dies — something a test cannot do to its own process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.common import LOOPBACK, popen, repo_root, stop_pid, wait_until
from tests.harness.kafka import KafkaBroker, admin_round_trip
from tests.harness.replica import ReplicaProcess


def _running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo_root()), "PYTHONUNBUFFERED": "1"}


SLEEPER = [sys.executable, "-c", "import time; time.sleep(3600)"]

INNER_RUN = """
import threading
import time
from pathlib import Path

from tests.harness.common import ManagedProcess

SLEEPER = {sleeper!r}
OUT = Path({out!r})


def test_starts_children_then_hangs() -> None:
    main = ManagedProcess("from-main-thread", SLEEPER, OUT.parent / "main.log").start()
    box = []
    # A child started from a thread that then ends must live on (the kernel's parent-death signal
    # follows the forking *thread*), yet still die with the run.
    t = threading.Thread(
        target=lambda: box.append(ManagedProcess("from-thread", SLEEPER, OUT.parent / "t.log").start())
    )
    t.start()
    t.join()
    # Like the process kubelet and its pods: a child that starts its own child through `popen`.
    grandchild_pid = OUT.parent / "grandchild"
    starter = (
        "import time; from pathlib import Path; from tests.harness.common import popen; "
        f"Path({{str(grandchild_pid)!r}}).write_text(str(popen({{SLEEPER!r}}).pid)); time.sleep(3600)"
    )
    ManagedProcess("kubelet-like", [SLEEPER[0], "-c", starter], OUT.parent / "k.log").start()
    while not grandchild_pid.exists() or not grandchild_pid.read_text():
        time.sleep(0.1)
    OUT.write_text(f"{{main.pid}} {{box[0].pid}} {{grandchild_pid.read_text()}}")
    time.sleep(3600)
"""


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """PIDs to SIGKILL at the end whatever happened, so a failing test leaves nothing either."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _running(pid):
            stop_pid(pid, grace=0)


def test_harness_children_die_when_pytest_is_killed(tmp_path: Path, reaper: list[int]) -> None:
    out = tmp_path / "pids"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(INNER_RUN.format(sleeper=SLEEPER, out=str(out)))
    inner = popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.harness.hygiene",
            "-p",
            "no:cacheprovider",
            str(test_file),
        ],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    reaper.append(inner.pid)
    wait_until(lambda: out.exists() and out.read_text() != "", timeout=120, what="the inner run's children")
    children = [int(p) for p in out.read_text().split()]
    reaper.extend(children)
    assert all(_running(pid) for pid in children), "a child died before its parent did"
    os.kill(inner.pid, signal.SIGKILL)
    inner.wait()
    wait_until(
        lambda: not any(_running(pid) for pid in children),
        timeout=30,
        what=f"children {children} to die with the killed pytest",
    )


def test_outside_pytest_children_outlive_their_starter(tmp_path: Path, reaper: list[int]) -> None:
    """`make up` and `make cluster` start processes that must outlive the command: without the pytest
    plugin, ManagedProcess does not tie children to their parent."""
    script = (
        "from pathlib import Path; from tests.harness.common import ManagedProcess; "
        f"p = ManagedProcess('detached', {SLEEPER!r}, Path({str(tmp_path / 'd.log')!r})).start(); "
        "print(p.pid)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.strip())
    reaper.append(pid)
    assert _running(pid), "a child of `make up` died with the command that started it"


INNER_FAILING = """
from pathlib import Path

from tests.harness.common import ManagedProcess


def test_fails_after_its_child_logged() -> None:
    child = ManagedProcess(
        "chatty", [{python!r}, "-c", "print('the child explains the failure', flush=True)"], Path({log!r})
    ).start()
    assert child.popen is not None
    child.popen.wait()
    assert False, "boom"


def test_passes_quietly() -> None:
    quiet = [{python!r}, "-c", "print('nobody needs to see this')"]
    ManagedProcess("quiet", quiet, Path({log2!r})).start().stop()
"""


def test_a_failing_test_reports_the_logs_of_the_processes_it_started(tmp_path: Path) -> None:
    test_file = tmp_path / "test_inner.py"
    log, log2 = tmp_path / "chatty.log", tmp_path / "quiet.log"
    test_file.write_text(INNER_FAILING.format(python=sys.executable, log=str(log), log2=str(log2)))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.harness.hygiene",
            "-p",
            "no:cacheprovider",
            str(test_file),
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"log of chatty (started by this test): {log}" in result.stdout, result.stdout
    assert "the child explains the failure" in result.stdout, result.stdout
    assert "nobody needs to see this" not in result.stdout, result.stdout


def _occupy(port: int) -> socket.socket:
    """Take `port` the way another program would: bound and listening, no SO_REUSEPORT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, port))
    sock.listen()
    return sock


def test_replica_start_moves_to_a_new_port_when_its_port_was_taken(tmp_path: Path) -> None:
    # Kafka need not run: a replica listens (NOT_SERVING) while it cannot reach Kafka.
    with socket.socket() as closed:
        closed.bind((LOOPBACK, 0))
        nowhere = f"{LOOPBACK}:{closed.getsockname()[1]}"
    replica = ReplicaProcess(nowhere, "t", tmp_path / "data", tmp_path / "replica.log")
    taken = replica.port
    with _occupy(taken):
        replica.start()
        try:
            assert replica.port != taken
            assert f"cannot listen on {LOOPBACK}:{taken}" in replica.log_text()  # the first attempt
            assert replica.process is not None and replica.process.alive()
            assert replica.health() == "NOT_SERVING"
        finally:
            replica.stop()


def test_replica_restart_keeps_its_port_and_says_when_it_is_taken(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind((LOOPBACK, 0))
        nowhere = f"{LOOPBACK}:{closed.getsockname()[1]}"
    replica = ReplicaProcess(nowhere, "t", tmp_path / "data", tmp_path / "replica.log").start()
    port = replica.port
    replica.stop()
    with _occupy(port), pytest.raises(RuntimeError, match="the port is in use"):
        replica.start()
    assert replica.port == port  # clients of the restarted replica keep their address


@pytest.mark.parametrize("check_first", [True, False], ids=["pre-check", "jvm-bind"])
def test_broker_start_moves_to_new_ports_when_its_port_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check_first: bool
) -> None:
    """The harness's own bind check sees a port taken before the JVM starts; a port taken while the JVM
    boots is seen in Kafka's log ("Address already in use"). Both start again on new ports."""
    if not check_first:
        monkeypatch.setattr("tests.harness.kafka._check_bindable", lambda port: None)
    broker = KafkaBroker(tmp_path / "kafka")
    taken = broker.port
    with _occupy(taken):
        broker.start()
        try:
            assert broker.port != taken
            assert admin_round_trip(broker.bootstrap_servers)
            if not check_first:
                assert "Address already in use" in broker.log_path.read_text(errors="replace")
        finally:
            broker.stop()
