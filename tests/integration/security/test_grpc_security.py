"""`kvs2 serve` with mutual TLS, as a real process: who is refused, rotation of the certificate files
on disk (the way the kubelet updates a Secret volume), the authorization map per RPC, the plaintext
health port, and the `kvs2` CLI's --tls-* flags. The replica itself talks SASL_SSL to the secured Kafka."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc
import pytest
from kvs2.client import Client
from kvs2.credentials import ClientTls

from tests.harness.kafka_secure import SecureKafkaBroker
from tests.harness.pki import CertificateAuthority, Leaf
from tests.harness.replica import kvs2_command
from tests.integration.security.conftest import SecureReplica, StartSecureReplica

SERVER_NAME = "kvs2-client.store.svc"


class SecretVolume:
    """A directory laid out like a Kubernetes Secret volume: files are symlinks through `..data`, and an
    update writes a new timestamped directory and swaps `..data` atomically (the kubelet's AtomicWriter)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self._version = 0

    def write(self, files: dict[str, bytes]) -> None:
        self._version += 1
        target = self.root / f"..{self._version}"
        target.mkdir()
        for name, data in files.items():
            (target / name).write_bytes(data)
        link = self.root / "..data_tmp"
        link.symlink_to(target.name)
        os.replace(link, self.root / "..data")
        for name in files:
            path = self.root / name
            if not path.is_symlink():
                path.symlink_to(f"..data/{name}")


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.server_ca = CertificateAuthority("server CA")
        self.client_ca = CertificateAuthority("client CA")

    def server_leaf(self, ca: CertificateAuthority | None = None) -> Leaf:
        return (ca or self.server_ca).issue("kvs2 replica", dns=(SERVER_NAME,), client=False)

    def client(
        self, name: str, *, ca: CertificateAuthority | None = None, trust: Path | None = None
    ) -> ClientTls:
        leaf = (ca or self.client_ca).issue(name, server=False)
        cert, key = leaf.write(self.tmp / "clients" / f"{name}.crt", self.tmp / "clients" / f"{name}.key")
        trust = trust or self.server_ca.write(self.tmp / "clients" / "server-ca.crt")
        return ClientTls(ca=trust, cert=cert, key=key, server_name=SERVER_NAME)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _sasl(secure_kafka: SecureKafkaBroker, tmp_path: Path) -> list[str]:
    files = secure_kafka.sasl_files(tmp_path / "kafka-secret", "kvs2")
    return [
        "--kafka-ca-file", str(files.ca),
        "--kafka-sasl-username-file", str(files.username),
        "--kafka-sasl-password-file", str(files.password),
    ]  # fmt: skip


def _mtls_replica(
    secure_kafka: SecureKafkaBroker,
    topic: str,
    start: StartSecureReplica,
    tmp_path: Path,
    pki: Pki,
    *flags: str,
) -> tuple[SecureReplica, SecretVolume]:
    volume = SecretVolume(tmp_path / "grpc-tls")
    leaf = pki.server_leaf()
    volume.write({"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": pki.client_ca.cert_pem})
    replica = start(
        secure_kafka.sasl_bootstrap,
        topic,
        *_sasl(secure_kafka, tmp_path),
        "--tls-dir",
        str(volume.root),
        *flags,
    )
    return replica, volume


def _code(target: str, tls: ClientTls | None) -> grpc.StatusCode | None:
    """The status of one Set (None: it succeeded). A new client is a new channel and a new handshake."""
    try:
        with Client(target, timeout=10, tls=tls, retries=0) as c:
            c.set(b"k", b"v")
    except grpc.RpcError as exc:
        return exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    return None


def test_an_mtls_replica_refuses_clients_without_a_trusted_certificate(
    secure_kafka: SecureKafkaBroker,
    secure_topic: str,
    start_secure_replica: StartSecureReplica,
    tmp_path: Path,
    pki: Pki,
) -> None:
    replica, _ = _mtls_replica(secure_kafka, secure_topic, start_secure_replica, tmp_path, pki)
    alice = pki.client("alice")
    assert _code(replica.target, alice) is None
    assert _code(replica.target, None) == grpc.StatusCode.UNAVAILABLE  # plaintext
    anonymous = ClientTls(ca=alice.ca, server_name=SERVER_NAME)
    assert _code(replica.target, anonymous) == grpc.StatusCode.UNAVAILABLE  # no client certificate
    mallory = pki.client("mallory", ca=CertificateAuthority("some other CA"))
    assert _code(replica.target, mallory) == grpc.StatusCode.UNAVAILABLE  # untrusted client certificate
    assert replica.health() == "SERVING"  # the plaintext health port needs nothing


def test_certificate_rotation_on_disk_is_used_by_the_next_connection(
    secure_kafka: SecureKafkaBroker,
    secure_topic: str,
    start_secure_replica: StartSecureReplica,
    tmp_path: Path,
    pki: Pki,
) -> None:
    replica, volume = _mtls_replica(secure_kafka, secure_topic, start_secure_replica, tmp_path, pki)
    old_trust = pki.client("alice")
    assert _code(replica.target, old_trust) is None
    # A renewal by a new CA, and a new client CA too: the kubelet swaps the whole volume at once.
    new_server_ca = CertificateAuthority("renewed server CA")
    new_client_ca = CertificateAuthority("renewed client CA")
    leaf = pki.server_leaf(new_server_ca)
    volume.write({"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": new_client_ca.cert_pem})
    renewed = pki.client("bob", ca=new_client_ca, trust=new_server_ca.write(tmp_path / "new-server-ca.crt"))
    assert _code(replica.target, renewed) is None
    assert _code(replica.target, pki.client("carol")) == grpc.StatusCode.UNAVAILABLE  # the old CAs
    assert "TLS: reloaded the certificate" in replica.log()
    assert replica.process.process is not None and replica.process.process.alive()  # no restart


def test_the_authorization_map_is_enforced_per_rpc(
    secure_kafka: SecureKafkaBroker,
    secure_topic: str,
    start_secure_replica: StartSecureReplica,
    tmp_path: Path,
    pki: Pki,
) -> None:
    rules = tmp_path / "authz.yaml"
    rules.write_text("writer: [read, write]\nreader: [read]\n")
    replica, _ = _mtls_replica(
        secure_kafka, secure_topic, start_secure_replica, tmp_path, pki, "--authz-file", str(rules)
    )
    with Client(replica.target, timeout=10, tls=pki.client("writer"), retries=0) as writer:
        written = writer.set(b"doc", b"1")
        writer.delete_if(b"doc", written.offset + 1)
        writer.set(b"doc", b"2")
    with Client(replica.target, timeout=10, tls=pki.client("reader"), retries=0) as reader:
        assert reader.get(b"doc", consistency="linearizable") is not None
        assert [i.key for i in reader.scan(prefix=b"d")] == [b"doc"]
        for write in (lambda: reader.set(b"doc", b"3"), lambda: reader.delete(b"doc"),
                      lambda: reader.set_if(b"doc", b"3", 0)):  # fmt: skip
            with pytest.raises(grpc.RpcError) as info:
                write()
            assert isinstance(info.value, grpc.Call)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "client 'reader' lacks the 'write' right" in (info.value.details() or "")
    with Client(replica.target, timeout=10, tls=pki.client("stranger"), retries=0) as stranger:
        with pytest.raises(grpc.RpcError) as info:
            stranger.get(b"doc")
        assert isinstance(info.value, grpc.Call)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details() == "client 'stranger' lacks the 'read' right needed for Get"
        assert stranger.health() == "SERVING"
    # The map is a file (a ConfigMap volume): editing it changes the rights without a restart (the new
    # content has another size, so the change is seen whatever the file system's time granularity).
    rules.write_text("writer: [read, write]\nreader: [read, write]\n")
    assert _code(replica.target, pki.client("reader")) is None


def test_the_cli_talks_mtls_with_its_tls_flags(
    secure_kafka: SecureKafkaBroker,
    secure_topic: str,
    start_secure_replica: StartSecureReplica,
    tmp_path: Path,
    pki: Pki,
) -> None:
    replica, _ = _mtls_replica(secure_kafka, secure_topic, start_secure_replica, tmp_path, pki)
    tls = pki.client("cli")
    assert tls.ca and tls.cert and tls.key

    def cli(*args: str, with_cert: bool = True) -> subprocess.CompletedProcess[str]:
        flags = ["--tls-ca", str(tls.ca), "--tls-server-name", SERVER_NAME]
        if with_cert:
            flags += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        return subprocess.run(
            [*kvs2_command(), *args, "--target", replica.target, "--timeout", "10", *flags],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    assert cli("set", "greeting", "hello").returncode == 0
    got = cli("get", "greeting", "--consistency", "linearizable")
    assert (got.returncode, got.stdout.strip()) == (0, "hello")
    refused = cli("get", "greeting", with_cert=False)
    assert refused.returncode == 3
    assert "UNAVAILABLE" in refused.stderr
