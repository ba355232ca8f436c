"""Fixtures for the security tests: one secured Kafka for the module run, TLS replicas as real processes.

`secure_kafka` is tests/harness/kafka_secure.py's broker (SASL_SSL with SCRAM users, an mTLS listener,
and the plain listener the harness creates topics through). `start_secure_replica` runs `kvs2 serve`
with any flags and a plaintext health port (`--health-listen`), which is how it is probed — exactly
what the kubelet does when the gRPC port requires TLS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kvs2.client import Client

from tests.harness.common import LOOPBACK, free_port, progress, wait_until
from tests.harness.kafka import create_topic
from tests.harness.kafka_secure import SecureKafkaBroker
from tests.harness.replica import ReplicaProcess

# The operator tests' fixtures (a real API server, the CRD, `kvs2 operator` for the test's namespace).
from tests.integration.operator.conftest import (  # noqa: F401 - fixtures and the report hook, by name
    crd,
    operator,
    pytest_runtest_makereport,
    stores,
)

USERS = {"kvs2": "kvs2-pa55word", "other": "other-pa55word"}
PARTITIONS = 3


@pytest.fixture(scope="session")
def secure_kafka(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureKafkaBroker]:
    broker = SecureKafkaBroker(tmp_path_factory.mktemp("secure-kafka"), USERS)
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    live = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with live:
        progress(f"secured broker: run directory {broker.workdir} (log: {broker.log_path})")
        broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def secure_topic(secure_kafka: SecureKafkaBroker, topic_name: str) -> str:
    create_topic(secure_kafka.bootstrap_servers, topic_name, PARTITIONS, config={"cleanup.policy": "compact"})
    return topic_name


@dataclass
class SecureReplica:
    process: ReplicaProcess
    health_port: int

    @property
    def target(self) -> str:
        return self.process.target

    def health(self) -> str:
        """Over the plaintext health port: no certificate needed, as for the kubelet."""
        with Client(f"{LOOPBACK}:{self.health_port}", timeout=2.0, retries=0) as c:
            return c.health()

    def wait_serving(self, timeout: float = 90.0) -> None:
        def serving() -> bool:
            if not self.process.process or not self.process.process.alive():
                raise RuntimeError(f"replica exited; log {self.process.log_path}:\n{self.log()}")
            try:
                return self.health() == "SERVING"
            except Exception:
                return False

        try:
            wait_until(serving, timeout=timeout, what=f"replica {self.target} to be SERVING")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; log:\n{self.log()[-4000:]}") from exc

    def log(self) -> str:
        return self.process.log_text()


StartSecureReplica = Callable[..., SecureReplica]


@pytest.fixture
def start_secure_replica(tmp_path: Path) -> Iterator[StartSecureReplica]:
    """`start_secure_replica(bootstrap, topic, *flags, name="a", wait=True)` → a running replica."""
    started: list[SecureReplica] = []

    def start(bootstrap: str, topic: str, *flags: str, name: str = "a", wait: bool = True) -> SecureReplica:
        health_port = free_port()
        process = ReplicaProcess(
            bootstrap_servers=bootstrap,
            topic=topic,
            data_dir=tmp_path / f"replica-{name}",
            log_path=tmp_path / f"replica-{name}.log",
            extra_args=(*flags, "--health-listen", f"{LOOPBACK}:{health_port}"),
        )
        replica = SecureReplica(process.start(), health_port)
        started.append(replica)
        if wait:
            replica.wait_serving()
        return replica

    yield start
    for replica in started:
        replica.process.stop()
