"""The Kafka harness against a real broker: compacted topics round-trip, the cleaner runs, data
survives graceful and crash restarts, and the `up`/`down` CLI manages exactly one background PID."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource  # confluent_kafka.admin re-exports it untyped

from tests.harness.common import free_port, repo_root, wait_until
from tests.harness.kafka import (
    KafkaBroker,
    KafkaHarnessError,
    admin_round_trip,
    create_topic,
    delete_topic,
)

pytestmark = pytest.mark.integration

Record = tuple[bytes, bytes | None]


def produce(bootstrap: str, topic: str, records: list[Record]) -> None:
    """Produce with the settings the data plane uses (acks=all, idempotence) and fail on any error."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0, "records still in flight after 30s"
    assert failures == []


def read_all(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> list[Record]:
    """Every record in the topic, partition by partition in offset order, by assignment (no group)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "kvs2-harness-test",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    by_partition: dict[int, list[Record]] = defaultdict(list)
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"read only to the end of partitions {sorted(at_end)}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err, partition, key = msg.error(), msg.partition(), msg.key()
            assert partition is not None
            if err is not None:
                assert err.code() == KafkaError._PARTITION_EOF, str(err)
                at_end.add(partition)
                continue
            assert key is not None, "every record the harness writes has a key"
            by_partition[partition].append((key, msg.value()))
    finally:
        consumer.close()
    return [record for p in sorted(by_partition) for record in by_partition[p]]


def history(records: list[Record]) -> dict[bytes, list[bytes | None]]:
    """Values per key in write order: what a partition-ordered log must preserve."""
    out: dict[bytes, list[bytes | None]] = defaultdict(list)
    for key, value in records:
        out[key].append(value)
    return dict(out)


def test_compacted_topic_round_trip(kafka: KafkaBroker, topic_name: str) -> None:
    create_topic(kafka.bootstrap_servers, topic_name, 3, config={"cleanup.policy": "compact"})

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic_name)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["cleanup.policy"].value == "compact"

    written: list[Record] = [(f"k{i % 50}".encode(), f"v{i}".encode()) for i in range(300)]
    written += [(b"k7", None), (b"empty", b"")]  # a tombstone and an empty value are distinct
    produce(kafka.bootstrap_servers, topic_name, written)

    read = read_all(kafka.bootstrap_servers, topic_name, 3)
    assert len(read) == len(written)
    assert history(read) == history(written)
    assert history(read)[b"empty"] == [b""]
    assert history(read)[b"k7"][-1] is None

    delete_topic(kafka.bootstrap_servers, topic_name)
    create_topic(kafka.bootstrap_servers, topic_name, 1)  # the name is free again, and empty
    assert read_all(kafka.bootstrap_servers, topic_name, 1) == []


def test_log_cleaner_compacts(kafka: KafkaBroker, topic_name: str) -> None:
    """The broker's cleaner really runs: superseded values disappear from closed segments."""
    config = {
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
    }
    create_topic(kafka.bootstrap_servers, topic_name, 1, config=config)
    written: list[Record] = [(f"k{i % 10}".encode(), f"v{i}".encode()) for i in range(1000)]
    produce(kafka.bootstrap_servers, topic_name, written)
    time.sleep(0.3)
    produce(kafka.bootstrap_servers, topic_name, [(b"roll", b"x")])  # rolls the 1000-record segment

    def compacted() -> bool:
        return len(read_all(kafka.bootstrap_servers, topic_name, 1)) <= 20

    wait_until(compacted, timeout=90, interval=1.0, what="the log cleaner to compact the closed segment")
    latest = {key: values[-1] for key, values in history(written).items()}
    read = read_all(kafka.bootstrap_servers, topic_name, 1)
    assert {key: values[-1] for key, values in history(read).items() if key != b"roll"} == latest


def test_restart_keeps_data(private_kafka: KafkaBroker, topic_name: str) -> None:
    bootstrap = private_kafka.bootstrap_servers
    create_topic(bootstrap, topic_name, 2, config={"cleanup.policy": "compact"})
    written: list[Record] = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(200)]
    produce(bootstrap, topic_name, written)

    first_pid = private_kafka.pid
    private_kafka.restart()
    assert private_kafka.pid != first_pid
    assert private_kafka.bootstrap_servers == bootstrap
    assert history(read_all(bootstrap, topic_name, 2)) == history(written)

    # A crash: acknowledged records are in the page cache and must survive a SIGKILL too.
    more: list[Record] = [(f"k{i}".encode(), f"w{i}".encode()) for i in range(50)]
    produce(bootstrap, topic_name, more)
    private_kafka.kill()
    assert not admin_round_trip(bootstrap, timeout=1.0)
    private_kafka.start()
    assert history(read_all(bootstrap, topic_name, 2)) == history(written + more)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.harness.kafka", *args],
        cwd=repo_root(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_cli_up_is_idempotent_and_down_stops_that_pid(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    port = free_port()
    started = _cli("up", "--port", str(port), "--state-dir", str(state))
    try:
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip()
        assert bootstrap == f"127.0.0.1:{port}"
        pid = int((state / "kafka.pid").read_text())
        assert admin_round_trip(bootstrap)  # the broker outlived the command that started it

        again = _cli("up", "--port", str(port), "--state-dir", str(state))
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == bootstrap
        assert "already running" in again.stderr
        assert int((state / "kafka.pid").read_text()) == pid
    finally:
        stopped = _cli("down", "--state-dir", str(state))
    assert stopped.returncode == 0, stopped.stderr
    assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    assert not (state / "kafka.pid").exists()
    assert not admin_round_trip(bootstrap, timeout=1.0)


def _is_zombie(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def test_start_on_a_taken_port_fails_clearly(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = KafkaBroker(tmp_path / "kafka", port=squatter.getsockname()[1])
        with pytest.raises(KafkaHarnessError, match="already in use"):
            broker.start(timeout=30)
        assert not broker.alive()
