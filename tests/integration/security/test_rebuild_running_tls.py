"""A running TLS replica that must rebuild takes its TLS peer's snapshot (kvs2.restart): the restarted
process dials the peer with its own certificate, as at start (tests/integration/dataplane/
test_rebuild_running.py has the scenario and the plaintext, `--workers 2` case)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvs2.client import Client
from kvs2.credentials import ClientTls

from tests.harness.kafka import KafkaBroker, create_topic
from tests.harness.pki import CertificateAuthority
from tests.integration.dataplane.test_rebuild_running import Pair, rebuild_b_while_running
from tests.integration.security.conftest import StartSecureReplica
from tests.integration.security.test_snapshot_tls import STORE, _tls_dir

pytestmark = pytest.mark.integration

PARTITIONS = 2


def test_a_running_tls_replica_that_must_rebuild_takes_its_tls_peers_snapshot(
    kafka: KafkaBroker, topic_name: str, start_secure_replica: StartSecureReplica, tmp_path: Path
) -> None:
    ca = CertificateAuthority("store CA")
    rules = tmp_path / "authz.yaml"
    rules.write_text(f"{STORE}: [read]\nwriter: [read, write]\n")
    create_topic(kafka.bootstrap_servers, topic_name, PARTITIONS, config={"cleanup.policy": "compact"})
    cert, key = ca.issue("writer", server=False).write(tmp_path / "writer.crt", tmp_path / "writer.key")
    tls = ClientTls(ca=ca.write(tmp_path / "ca.crt"), cert=cert, key=key)
    flags = ("--authz-file", str(rules))
    a = start_secure_replica(
        kafka.bootstrap_servers,
        topic_name,
        "--tls-dir",
        str(_tls_dir(ca, tmp_path / "a-tls")),
        *flags,
        name="a",
    )
    b = start_secure_replica(
        kafka.bootstrap_servers,
        topic_name,
        "--tls-dir",
        str(_tls_dir(ca, tmp_path / "b-tls")),
        *flags,
        "--bootstrap-peers",
        a.target,
        name="b",
    )
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
