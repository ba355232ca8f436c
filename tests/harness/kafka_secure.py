"""A real Kafka with security on: a SASL_SSL listener (SCRAM users) and an SSL listener that requires a
client certificate, next to the plain listener the harness itself uses to create topics.

What is real: the broker is tests/harness/kafka.py's KRaft node (same jars, same settings); SCRAM users
are created by Kafka's own `kafka-storage format --add-scram` (credentials in the bootstrap metadata,
as a production cluster created with users would have them); the CA, the broker's certificate and the
client certificates are generated here with `cryptography` and handed to Kafka as PEM key and trust
stores (`ssl.keystore.type=PEM`, Kafka >= 2.7), with the broker certificate naming 127.0.0.1 so
clients verify the host name as they would in production.

Why the plain listener stays: the harness's readiness check and topic helpers use it; the tests prove
security on the secured listeners, which is what a replica or the operator is pointed at.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.harness.common import LOOPBACK, free_port
from tests.harness.kafka import KAFKA_VERSION, KafkaBroker, KafkaHarnessError, _random_cluster_id
from tests.harness.pki import CertificateAuthority, Leaf

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
_PLAIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"


@dataclass(frozen=True)
class ClientFiles:
    """What a Kafka client needs, as files (the layout of mounted Secrets)."""

    ca: Path
    username: Path | None = None
    password: Path | None = None
    cert: Path | None = None
    key: Path | None = None


class SecureKafkaBroker(KafkaBroker):
    """A KafkaBroker with SASL_SSL (`sasl_bootstrap`) and mutual-TLS (`mtls_bootstrap`) listeners.

    `users` maps SCRAM user names to passwords; each user exists for both SCRAM-SHA-256 and -512, and
    for PLAIN (the broker's JAAS list, which is how Kafka configures PLAIN users).
    """

    def __init__(self, workdir: Path, users: Mapping[str, str], *, version: str = KAFKA_VERSION) -> None:
        super().__init__(workdir, version=version)
        self.users = dict(users)
        self.sasl_port = free_port()
        self.mtls_port = free_port()
        self.ca = CertificateAuthority("kafka test CA")
        self.client_ca = CertificateAuthority("kafka client CA")
        self.tls_dir = self.workdir / "tls"

    @property
    def sasl_bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.sasl_port}"

    @property
    def mtls_bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.mtls_port}"

    # -- files for clients ------------------------------------------------------------------------

    def ca_file(self) -> Path:
        return self.tls_dir / "ca.crt"

    def sasl_files(self, directory: Path, user: str, password: str | None = None) -> ClientFiles:
        """A user's SASL credentials (`password` overrides the real one, for negative tests) and the CA."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "username").write_text(user + "\n")
        (directory / "password").write_text((self.users[user] if password is None else password) + "\n")
        (directory / "password").chmod(0o600)
        return ClientFiles(
            self.ca.write(directory / "ca.crt"), directory / "username", directory / "password"
        )

    def client_certificate(self, directory: Path, name: str) -> ClientFiles:
        """A client certificate the mTLS listener accepts, and the CA to verify the broker."""
        leaf = self.client_ca.issue(name, server=False)
        cert, key = leaf.write(directory / "tls.crt", directory / "tls.key")
        return ClientFiles(self.ca.write(directory / "ca.crt"), cert=cert, key=key)

    # -- broker configuration ---------------------------------------------------------------------

    def _write_stores(self) -> tuple[Path, Path]:
        leaf: Leaf = self.ca.issue("kafka broker", dns=("localhost",), ips=(LOOPBACK,))
        self.tls_dir.mkdir(parents=True, exist_ok=True)
        keystore = self.tls_dir / "broker-keystore.pem"  # key first, then the chain: Kafka's PEM store
        keystore.write_bytes(leaf.key_pem + leaf.cert_pem)
        keystore.chmod(0o600)
        self.ca.write(self.ca_file())
        return keystore, self.client_ca.write(self.tls_dir / "client-ca.crt")

    def settings(self) -> dict[str, str]:
        base = super().settings()
        keystore, client_ca = self._write_stores()
        plain_users = " ".join(f'user_{u}="{p}"' for u, p in sorted(self.users.items()))
        extra = {
            "listeners": base["listeners"]
            + f",SASL_SSL://{LOOPBACK}:{self.sasl_port},SSL://{LOOPBACK}:{self.mtls_port}",
            "advertised.listeners": base["advertised.listeners"]
            + f",SASL_SSL://{LOOPBACK}:{self.sasl_port},SSL://{LOOPBACK}:{self.mtls_port}",
            "listener.security.protocol.map": base["listener.security.protocol.map"]
            + ",SASL_SSL:SASL_SSL,SSL:SSL",
            "sasl.enabled.mechanisms": ",".join((*SCRAM_MECHANISMS, "PLAIN")),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(client_ca),
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.sasl_ssl.ssl.client.auth": "none",
            "listener.name.sasl_ssl.plain.sasl.jaas.config": f"{_PLAIN_MODULE} required {plain_users};",
        }
        for mechanism in SCRAM_MECHANISMS:
            key = f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config"
            extra[key] = f"{_SCRAM_MODULE} required;"
        return {**base, **extra}

    def _format(self, jvm: list[str], properties: Path) -> None:
        """`kafka-storage format` with `--add-scram` for every user and mechanism (Kafka's own tool)."""
        cluster_id = _random_cluster_id()
        (self.workdir / "cluster-id").write_text(cluster_id + "\n")
        scram: list[str] = []
        for user, password in sorted(self.users.items()):
            for mechanism in SCRAM_MECHANISMS:
                scram += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
        argv = [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties), *scram]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=self.workdir)
        output = result.stdout + result.stderr
        (self.workdir / "format.log").write_text(output)
        if result.returncode != 0:
            raise KafkaHarnessError(f"formatting {self.data_dir} with SCRAM users failed:\n{output}")
