"""Snapshot bootstrap between replicas that serve gRPC with mutual TLS (a store with spec.tls): the new
replica dials its peer with its own certificate and the store's CA, and — with an authorization map —
needs only the `read` right a snapshot discloses, like a Range over every key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from kvs2.client import Client
from kvs2.credentials import ClientTls

from tests.harness.common import LOOPBACK, wait_until
from tests.harness.kafka import KafkaBroker, create_topic
from tests.harness.pki import CertificateAuthority, write_tls_dir
from tests.integration.security.conftest import SecureReplica, StartSecureReplica

pytestmark = pytest.mark.integration

# The store's own name in its certificates: what a peer's certificate is mapped to in the rules.
STORE = "orders.shop.svc"


def _tls_dir(ca: CertificateAuthority, directory: Path) -> Path:
    """The layout cert-manager writes for a store: one CA issues every replica's certificate (its own
    name and the address dialled) and is also the CA clients must be signed by."""
    leaf = ca.issue(STORE, dns=(STORE,), ips=(LOOPBACK,))
    return write_tls_dir(directory, leaf, client_ca=ca)


@dataclass(frozen=True)
class MtlsStore:
    """A store with mutual TLS and an authorization map in which its own replicas hold only `read`
    (what a snapshot needs) and a `writer` client holds both rights."""

    kafka: KafkaBroker
    topic: str
    start: StartSecureReplica
    ca: CertificateAuthority
    writer: ClientTls
    rules: Path
    directory: Path

    @classmethod
    def make(cls, kafka: KafkaBroker, topic: str, start: StartSecureReplica, directory: Path) -> MtlsStore:
        ca = CertificateAuthority("store CA")
        rules = directory / "authz.yaml"
        rules.write_text(f"{STORE}: [read]\nwriter: [read, write]\n")
        cert, key = ca.issue("writer", server=False).write(directory / "writer.crt", directory / "writer.key")
        writer = ClientTls(ca=ca.write(directory / "ca.crt"), cert=cert, key=key)
        return cls(kafka, topic, start, ca, writer, rules, directory)

    def replica(self, name: str, *flags: str) -> SecureReplica:
        """Replica `name` of this store, with its own certificate from the store's CA."""
        return self.start(
            self.kafka.bootstrap_servers,
            self.topic,
            "--tls-dir",
            str(_tls_dir(self.ca, self.directory / f"{name}-tls")),
            "--authz-file",
            str(self.rules),
            *flags,
            name=name,
        )


def test_a_new_tls_replica_bootstraps_from_a_tls_peer_with_only_the_read_right(
    kafka: KafkaBroker, topic_name: str, start_secure_replica: StartSecureReplica, tmp_path: Path
) -> None:
    create_topic(kafka.bootstrap_servers, topic_name, 2)
    store = MtlsStore.make(kafka, topic_name, start_secure_replica, tmp_path)
    tls = store.writer
    a = store.replica("a")
    with Client(a.target, timeout=10, tls=tls, retries=0) as c:
        for i in range(30):
            c.set(f"k{i}".encode(), b"v" * 100)
        wait_until(lambda: c.count() == 30, timeout=30, what="a to apply the writes")
    b = store.replica("b", "--bootstrap-peers", a.target)
    log = b.process.log_text()
    assert "bootstrapped from a snapshot of peer" in log, log[-3000:]
    # The bytes came over the data channel, TLS like gRPC (a plaintext dial would have been refused).
    assert "snapshot bytes over the data channel" in log, log[-3000:]
    assert "snapshot data channel listening on" in a.process.log_text()
    assert "(TLS)" in a.process.log_text()
    with Client(b.target, timeout=10, tls=tls, retries=0) as c, Client(a.target, tls=tls, retries=0) as pc:
        assert c.count() == 30
        assert [(i.key, i.value, i.revision) for i in c.scan()] == [
            (i.key, i.value, i.revision) for i in pc.scan()
        ]
