"""The `kvs2` command line against a real replica: output, `--json`, compare-and-set, exit codes, errors.

Exit codes are the contract scripts rely on: 0 done, 1 a negative answer (not found, condition failed,
not serving), 2 a bad command line, 3 an error from the replica (the gRPC status and its message on
stderr).
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kvs2.partitioner import partition_for

from tests.harness.common import LOOPBACK, CheckedThread, popen, wait_until
from tests.harness.kafka import KafkaBroker, create_topic
from tests.harness.replica import ReplicaProcess, kvs2_command
from tests.integration.dataplane.conftest import PARTITIONS


@pytest.fixture(scope="module")
def replica(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProcess]:
    """One replica for the module: every test uses keys of its own."""
    workdir = tmp_path_factory.mktemp("cli")
    topic = f"t-cli-{workdir.name}"
    create_topic(kafka.bootstrap_servers, topic, PARTITIONS, config={"cleanup.policy": "compact"})
    replica = ReplicaProcess(
        kafka.bootstrap_servers, topic, workdir / "data", workdir / "replica.log"
    ).start()
    try:
        replica.wait_serving()
        yield replica
    finally:
        replica.stop()


def kvs2(*args: str, target: str | None = None) -> subprocess.CompletedProcess[str]:
    command, *rest = args
    argv = [*kvs2_command(), command, *(["--target", target] if target else []), *rest]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str], code: int = 0) -> Any:
    return json.loads(ok(result, code))


def test_set_then_get_in_text_and_json(replica: ReplicaProcess) -> None:
    t = replica.target
    out = ok(kvs2("set", "cli-hello", "world", target=t))
    assert out.startswith("PUBLISHED partition=")
    fields = dict(part.split("=") for part in out.split()[1:])
    assert int(fields["partition"]) == partition_for(b"cli-hello", PARTITIONS)
    token = f"{fields['partition']}:{fields['offset']}"
    assert ok(kvs2("get", "cli-hello", "--after", token, target=t)) == "world\n"
    got = as_json(kvs2("get", "cli-hello", "--json", "--consistency", "linearizable", target=t))
    assert got == {
        "key": "cli-hello",
        "status": "OK",
        "revision": int(fields["offset"]) + 1,
        "value": "world",
    }

    written = as_json(kvs2("set", "cli-hello", "again", "--json", target=t))
    assert written["status"] == "PUBLISHED"
    assert written["partition"] == int(fields["partition"])
    assert written["offset"] > int(fields["offset"])


def test_missing_key_exits_1(replica: ReplicaProcess) -> None:
    t = replica.target
    assert ok(kvs2("get", "cli-never-written", target=t), code=1) == "(not found)\n"
    assert as_json(kvs2("get", "cli-never-written", "--json", target=t), code=1) == {
        "key": "cli-never-written",
        "status": "NOT_FOUND",
    }


def test_if_revision_sets_and_deletes_only_on_a_match(replica: ReplicaProcess) -> None:
    t = replica.target
    created = as_json(kvs2("set", "cli-lock", "me", "--if-revision", "0", "--json", target=t))
    assert created["status"] == "PUBLISHED"
    assert created["revision"] == created["offset"] + 1

    refused = kvs2("set", "cli-lock", "you", "--if-revision", "0", target=t)
    assert refused.returncode == 1
    assert refused.stdout.startswith(f"status=CONDITION_FAILED revision={created['revision']} ")
    stale = as_json(kvs2("del", "cli-lock", "--if-revision", "1", "--json", target=t), code=1)
    assert (stale["status"], stale["revision"]) == ("CONDITION_FAILED", created["revision"])
    assert ok(kvs2("get", "cli-lock", "--consistency", "linearizable", target=t)) == "me\n"

    moved = as_json(
        kvs2("set", "cli-lock", "you", "--if-revision", str(created["revision"]), "--json", target=t)
    )
    assert moved["status"] == "PUBLISHED"
    assert moved["revision"] > created["revision"]
    gone = as_json(kvs2("del", "cli-lock", "--if-revision", str(moved["revision"]), "--json", target=t))
    assert gone["status"] == "PUBLISHED"
    assert gone["revision"] == 0  # absent after the delete
    ok(kvs2("get", "cli-lock", "--consistency", "linearizable", target=t), code=1)


def test_plain_delete_and_mget(replica: ReplicaProcess) -> None:
    t = replica.target
    ok(kvs2("set", "cli-m1", "one", target=t))
    last = as_json(kvs2("set", "cli-m2", "two", "--json", target=t))
    ok(kvs2("del", "cli-m1", target=t))
    parts = as_json(kvs2("mget", "cli-m1", "cli-m2", "--json", "--consistency", "linearizable", target=t))
    assert parts == [
        {"key": "cli-m1", "status": "NOT_FOUND"},
        {"key": "cli-m2", "status": "OK", "revision": last["offset"] + 1, "value": "two"},
    ]
    text = ok(kvs2("mget", "cli-m1", "cli-m2", "--consistency", "linearizable", target=t))
    assert text == "cli-m1\t(not found)\ncli-m2\ttwo\n"


def test_scan_lists_counts_and_pages(replica: ReplicaProcess) -> None:
    t = replica.target
    for i in range(5):
        ok(kvs2("set", f"cli-scan/{i}", f"v{i}", target=t))
    ok(kvs2("set", "cli-scan0", "outside the prefix", target=t))
    lines = ok(kvs2("scan", "--prefix", "cli-scan/", "--consistency", "linearizable", target=t)).splitlines()
    assert lines == [f"cli-scan/{i}\tv{i}" for i in range(5)]
    keys = ok(kvs2("scan", "--prefix", "cli-scan/", "--keys-only", "--limit", "3", target=t)).splitlines()
    assert keys == ["cli-scan/0", "cli-scan/1", "cli-scan/2"]
    assert as_json(kvs2("scan", "--prefix", "cli-scan/", "--count", "--json", target=t)) == {"count": 5}
    items = [
        json.loads(line)
        for line in ok(kvs2("scan", "--prefix", "cli-scan/", "--json", target=t)).split("\n")
        if line
    ]
    assert [(i["key"], i["value"]) for i in items] == [(f"cli-scan/{i}", f"v{i}") for i in range(5)]
    assert all(i["revision"] > 0 for i in items)


def test_bytes_that_are_not_utf8_come_out_as_base64(replica: ReplicaProcess) -> None:
    with replica.client() as c:
        written = c.set(b"cli-binary", b"\xff\x00\xfe")
    got = as_json(
        kvs2(
            "get",
            "cli-binary",
            "--json",
            "--after",
            f"{written.partition}:{written.offset}",
            target=replica.target,
        )
    )
    assert got["value_b64"] == "/wD+"
    assert "value" not in got


def test_health(replica: ReplicaProcess) -> None:
    assert ok(kvs2("health", target=replica.target)) == "SERVING\n"
    assert as_json(kvs2("health", "--json", target=replica.target)) == {"status": "SERVING"}


def test_watch_prints_changes_from_positions(replica: ReplicaProcess) -> None:
    with replica.client() as c:
        first = c.set(b"cli-w/a", b"1")
        c.set(b"cli-w/b", b"2")
        c.delete(b"cli-w/a")
        c.set(b"cli-w-not-watched", b"x")
    starts = [f"--from={p}:{first.offset if p == first.partition else 0}" for p in range(PARTITIONS)]
    watch = popen(
        [*kvs2_command(), "watch", "--target", replica.target, "--prefix", "cli-w/", "--json", *starts],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events: list[dict[str, Any]] = []

    def read() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:
            events.append(json.loads(line))

    reader = CheckedThread(read, name="watch-reader")
    reader.start()
    try:
        wait_until(lambda: len(events) >= 3 or watch.poll() is not None, timeout=60, what="3 watch events")
    finally:
        watch.kill()
        watch.wait()
        reader.join(timeout=30)
    by_key: dict[str, list[tuple[str, str | None]]] = {}
    for e in events:
        assert e["partition"] in range(PARTITIONS) and e["offset"] >= 0
        by_key.setdefault(e["key"], []).append((e["type"], e.get("value")))
    assert by_key == {"cli-w/a": [("PUT", "1"), ("DELETE", None)], "cli-w/b": [("PUT", "2")]}


def test_bad_command_lines_exit_2_with_a_message(replica: ReplicaProcess) -> None:
    bad_token = kvs2("get", "k", "--after", "three:4", target=replica.target)
    assert bad_token.returncode == 2
    assert "--after takes PARTITION:OFFSET, got 'three:4'" in bad_token.stderr
    missing = kvs2("set", "only-a-key", target=replica.target)
    assert missing.returncode == 2
    assert "the following arguments are required: value" in missing.stderr
    not_a_number = kvs2("set", "k", "v", "--if-revision", "latest", target=replica.target)
    assert not_a_number.returncode == 2
    assert "--if-revision" in not_a_number.stderr


def test_errors_from_the_replica_exit_3_with_status_and_message(replica: ReplicaProcess) -> None:
    empty = kvs2("set", "", "v", target=replica.target)
    assert empty.returncode == 3, empty
    assert empty.stderr.startswith("kvs2: INVALID_ARGUMENT: "), empty.stderr
    too_long = kvs2("get", "k" * 600, target=replica.target)
    assert too_long.returncode == 3, too_long
    assert too_long.stderr.startswith("kvs2: INVALID_ARGUMENT: "), too_long.stderr
    assert "511" in too_long.stderr  # the message states the limit


def test_an_unreachable_replica_exits_3_unavailable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        nowhere = f"{LOOPBACK}:{s.getsockname()[1]}"  # closed again: nothing listens there
    read = kvs2("get", "k", "--timeout", "5", target=nowhere)
    assert read.returncode == 3
    assert read.stderr.startswith("kvs2: UNAVAILABLE: "), read.stderr
    write = kvs2("set", "k", "v", "--timeout", "5", target=nowhere)
    assert write.returncode == 3
    assert write.stderr.startswith("kvs2: UNAVAILABLE: "), write.stderr
    health = kvs2("health", target=nowhere)
    assert (health.returncode, health.stdout) == (1, "UNREACHABLE\n")


def test_serve_on_a_port_in_use_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    """A taken --listen address is a bad input like any other: one line saying so, not a traceback."""
    with socket.socket() as taken, socket.socket() as closed:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        closed.bind((LOOPBACK, 0))
        listen = f"{LOOPBACK}:{taken.getsockname()[1]}"
        argv = [
            *kvs2_command(),
            "serve",
            "--bootstrap-servers",
            f"{LOOPBACK}:{closed.getsockname()[1]}",  # bound, never listening: Kafka is not needed here
            "--topic",
            "t",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            listen,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert f"kvs2: cannot listen on {listen}" in result.stderr
    assert "Traceback" not in result.stderr
