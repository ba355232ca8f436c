"""A replica against a secured Kafka (SASL_SSL with SCRAM/PLAIN users, TLS with client certificates):
credentials and CA from files, as mounted Secrets provide them; and clear failures, not hangs, when the
password is wrong or the broker's CA is not trusted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from kvs2.client import Client

from tests.harness.common import wait_until
from tests.harness.kafka_secure import SecureKafkaBroker
from tests.harness.pki import CertificateAuthority
from tests.harness.replica import kvs2_command
from tests.integration.security.conftest import SecureReplica, StartSecureReplica


def _sasl_flags(secure_kafka: SecureKafkaBroker, directory: Path, password: str | None = None) -> list[str]:
    files = secure_kafka.sasl_files(directory, "kvs2", password)
    return [
        "--kafka-ca-file", str(files.ca),
        "--kafka-sasl-username-file", str(files.username),
        "--kafka-sasl-password-file", str(files.password),
    ]  # fmt: skip


def _round_trip(target: str) -> None:
    with Client(target, timeout=15) as c:
        written = c.set(b"secret-key", b"over TLS")
        value = c.get(b"secret-key", after=[written])
        assert value is not None and value.data == b"over TLS"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_a_replica_follows_and_writes_over_sasl_ssl_with_files(
    secure_kafka: SecureKafkaBroker,
    secure_topic: str,
    start_secure_replica: StartSecureReplica,
    tmp_path: Path,
    mechanism: str,
) -> None:
    flags = _sasl_flags(secure_kafka, tmp_path / "kafka-secret")
    replica = start_secure_replica(
        secure_kafka.sasl_bootstrap, secure_topic, *flags, "--kafka-config", f"sasl.mechanism={mechanism}"
    )
    _round_trip(replica.target)
    assert "kvs2-pa55word" not in replica.log()


def test_a_replica_uses_a_client_certificate_for_mutual_tls_to_kafka(
    secure_kafka: SecureKafkaBroker,
    secure_topic: str,
    start_secure_replica: StartSecureReplica,
    tmp_path: Path,
) -> None:
    files = secure_kafka.client_certificate(tmp_path / "kafka-client-cert", "kvs2-replica")
    assert files.cert is not None and files.key is not None
    replica = start_secure_replica(
        secure_kafka.mtls_bootstrap,
        secure_topic,
        "--kafka-ca-file", str(files.ca),
        "--kafka-cert-file", str(files.cert),
        "--kafka-key-file", str(files.key),
    )  # fmt: skip
    _round_trip(replica.target)


def test_without_a_client_certificate_the_mtls_listener_refuses_the_replica(
    secure_kafka: SecureKafkaBroker,
    secure_topic: str,
    start_secure_replica: StartSecureReplica,
    tmp_path: Path,
) -> None:
    ca = secure_kafka.ca.write(tmp_path / "ca.crt")
    replica = start_secure_replica(
        secure_kafka.mtls_bootstrap, secure_topic, "--kafka-ca-file", str(ca), wait=False
    )
    wait_until(
        lambda: "replica cannot follow topic" in replica.log(), timeout=90, what="the replica to report why"
    )
    assert replica.health() == "NOT_SERVING"


def _reason(replica: SecureReplica, words: str) -> str:
    """The replica's `cannot follow topic` log line that names `words` (waits for it: no hang, a report)."""

    def line() -> str:
        found = [
            ln for ln in replica.log().splitlines() if "replica cannot follow topic" in ln and words in ln
        ]
        return found[0] if found else ""

    wait_until(lambda: bool(line()), timeout=90, what=f"the replica to log why it cannot follow ({words})")
    return line()


def _refused_write(target: str) -> grpc.RpcError:
    with Client(target, timeout=8) as c, pytest.raises(grpc.RpcError) as info:
        c.set(b"k", b"v")
    return info.value


def test_a_wrong_password_is_reported_not_hung(
    secure_kafka: SecureKafkaBroker,
    secure_topic: str,
    start_secure_replica: StartSecureReplica,
    tmp_path: Path,
) -> None:
    flags = _sasl_flags(secure_kafka, tmp_path / "kafka-secret", password="not-the-password")
    replica = start_secure_replica(secure_kafka.sasl_bootstrap, secure_topic, *flags, wait=False)
    # The reason is in the line that says why the replica is not serving, not only in librdkafka's noise.
    line = _reason(replica, "invalid credentials")
    assert "SASL authentication error" in line
    assert replica.health() == "NOT_SERVING"
    error = _refused_write(replica.target)
    assert isinstance(error, grpc.Call)
    assert error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE)
    assert "not-the-password" not in replica.log()


def test_an_untrusted_broker_certificate_is_reported_not_hung(
    secure_kafka: SecureKafkaBroker,
    secure_topic: str,
    start_secure_replica: StartSecureReplica,
    tmp_path: Path,
) -> None:
    flags = _sasl_flags(secure_kafka, tmp_path / "kafka-secret")
    CertificateAuthority("not Kafka's CA").write(tmp_path / "kafka-secret" / "ca.crt")  # replaces the real CA
    replica = start_secure_replica(secure_kafka.sasl_bootstrap, secure_topic, *flags, wait=False)
    line = _reason(replica, "certificate verify failed")
    assert "SSL handshake failed" in line
    assert replica.health() == "NOT_SERVING"
    error = _refused_write(replica.target)
    assert isinstance(error, grpc.Call)
    assert error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE)


def test_missing_secret_files_stop_the_replica_at_start_with_the_file_named(
    secure_kafka: SecureKafkaBroker, secure_topic: str, tmp_path: Path
) -> None:
    missing = tmp_path / "not-mounted" / "password"
    result = subprocess.run(
        [
            *kvs2_command(),
            "serve",
            "--bootstrap-servers",
            secure_kafka.sasl_bootstrap,
            "--topic",
            secure_topic,
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            "127.0.0.1:0",
            "--kafka-sasl-username-file",
            str(secure_kafka.sasl_files(tmp_path / "s", "kvs2").username),
            "--kafka-sasl-password-file",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"cannot read the Kafka SASL password {missing}" in result.stderr
