"""A running TLS replica that must rebuild takes its TLS peer's snapshot (kvs2.restart): the restarted
process dials the peer with its own certificate, as at start (tests/integration/dataplane/
test_rebuild_running.py has the scenario and the plaintext, `--workers 2` case)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvs2.client import Client

from tests.harness.kafka import KafkaBroker, create_topic
from tests.integration.dataplane.test_rebuild_running import Pair, rebuild_b_while_running
from tests.integration.security.conftest import StartSecureReplica
from tests.integration.security.test_snapshot_tls import MtlsStore

pytestmark = pytest.mark.integration

PARTITIONS = 2


def test_a_running_tls_replica_that_must_rebuild_takes_its_tls_peers_snapshot(
    kafka: KafkaBroker, topic_name: str, start_secure_replica: StartSecureReplica, tmp_path: Path
) -> None:
    create_topic(kafka.bootstrap_servers, topic_name, PARTITIONS, config={"cleanup.policy": "compact"})
    store = MtlsStore.make(kafka, topic_name, start_secure_replica, tmp_path)
    tls = store.writer
    a = store.replica("a")
    b = store.replica("b", "--bootstrap-peers", a.target)
    rebuild_b_while_running(
        Pair(
            kafka.bootstrap_servers,
            topic_name,
            PARTITIONS,
            a.target,
            b.process,
            lambda target: Client(target, timeout=10.0, tls=tls),
            lambda: a.wait_serving(timeout=120),
            lambda: b.wait_serving(timeout=180),
            tls,
        )
    )
