"""Fixtures for data-plane tests: a fresh compacted topic and replicas as real `kvs2 serve` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.kafka import KafkaBroker, create_topic
from tests.harness.replica import ReplicaProcess

PARTITIONS = 4

StartReplica = Callable[..., ReplicaProcess]


@pytest.fixture
def topic(kafka: KafkaBroker, topic_name: str) -> str:
    create_topic(kafka.bootstrap_servers, topic_name, PARTITIONS, config={"cleanup.policy": "compact"})
    return topic_name


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator[StartReplica]:
    """`start_replica(bootstrap, topic, name="a", wait=True, extra_args=())` → a running replica.

    Every replica started is stopped at the end of the test; its log is named in failures.
    """
    started: list[ReplicaProcess] = []

    def start(
        bootstrap: str,
        topic: str,
        name: str = "a",
        *,
        wait: bool = True,
        extra_args: tuple[str, ...] = (),
        port: int | None = None,
    ) -> ReplicaProcess:
        replica = ReplicaProcess(
            bootstrap_servers=bootstrap,
            topic=topic,
            data_dir=tmp_path / f"replica-{name}",
            log_path=tmp_path / f"replica-{name}.log",
            extra_args=extra_args,
        )
        if port is not None:
            replica.port = port
        replica.start()
        started.append(replica)
        if wait:
            replica.wait_serving()
        return replica

    yield start
    for replica in started:
        replica.stop()
