"""TLS and SASL to Kafka, from files: the CA, an optional client certificate, SASL credentials.

Why files: in Kubernetes they are Secret (or ConfigMap) volumes, so a password never appears as a
plaintext value in the pod spec or in `kubectl describe`, and the same flags work for Strimzi
(`<cluster>-cluster-ca-cert` → `ca.crt`), cert-manager and hand-made Secrets.

These settings win over `--kafka-config`/`KVS2_KAFKA_*` pass-through: giving the same librdkafka
setting both ways is a ConfigError, not a silent override. The security protocol follows from what is
given (SASL + TLS → SASL_SSL, TLS only → SSL, SASL only → SASL_SSL against the system's CAs) unless
`security.protocol` is set explicitly, which must then agree.

All of it is loaded at start (librdkafka builds its TLS context once): a renewed Kafka CA, client
certificate or password takes a restart — roll the StatefulSet (README "Security", rotation).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kvs2.errors import ConfigError

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_SASL_MECHANISM = "SCRAM-SHA-512"

# The librdkafka settings these options own; pass-through config may not set them too.
OWNED = {
    "ca": "ssl.ca.location",
    "cert": "ssl.certificate.location",
    "key": "ssl.key.location",
    "username": "sasl.username",
    "password": "sasl.password",
}


@dataclass(frozen=True)
class KafkaSecurity:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    sasl_username_file: Path | None = None
    sasl_password_file: Path | None = None
    tls: bool = False  # TLS even without a CA file (the system's roots)

    @property
    def sasl(self) -> bool:
        return self.sasl_username_file is not None or self.sasl_password_file is not None

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    @property
    def empty(self) -> bool:
        return not (self.sasl or self.uses_tls)


def security_from_options(
    ca: str, cert: str, key: str, username_file: str, password_file: str, tls: bool = False
) -> KafkaSecurity:
    def path(value: str) -> Path | None:
        return Path(value) if value else None

    return KafkaSecurity(path(ca), path(cert), path(key), path(username_file), path(password_file), tls)


def _must_exist(path: Path, what: str) -> str:
    if not path.is_file():
        raise ConfigError(f"the Kafka {what} {path} does not exist or is not a file")
    return str(path)


def _secret(path: Path, what: str) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the Kafka {what} {path}: {exc.strerror or exc}") from exc
    # A Secret created with `kubectl create secret --from-file` often keeps the file's final newline.
    value = text.rstrip("\r\n")
    if not value:
        raise ConfigError(f"the Kafka {what} file {path} is empty")
    return value


def librdkafka_settings(security: KafkaSecurity, explicit: Mapping[str, str]) -> dict[str, str]:
    """The librdkafka settings for `security`, checked against the pass-through `explicit` settings."""
    if security.empty:
        return {}
    out: dict[str, str] = {}
    if (security.cert_file is None) != (security.key_file is None):
        raise ConfigError("--kafka-cert-file and --kafka-key-file go together (client certificate and key)")
    if security.ca_file is not None:
        out["ssl.ca.location"] = _must_exist(security.ca_file, "CA file (--kafka-ca-file)")
    if security.cert_file is not None and security.key_file is not None:
        out["ssl.certificate.location"] = _must_exist(security.cert_file, "client certificate")
        out["ssl.key.location"] = _must_exist(security.key_file, "client key")
    if security.sasl:
        if security.sasl_password_file is None:
            raise ConfigError("--kafka-sasl-username-file needs --kafka-sasl-password-file")
        if security.sasl_username_file is not None:
            out["sasl.username"] = _secret(security.sasl_username_file, "SASL username")
        elif not explicit.get("sasl.username"):
            # A user name is no secret (Strimzi's KafkaUser Secret does not even hold it): it may come
            # as plain config, but it must come from somewhere.
            raise ConfigError(
                "--kafka-sasl-password-file needs a user name: --kafka-sasl-username-file or sasl.username"
            )
        out["sasl.password"] = _secret(security.sasl_password_file, "SASL password")
        mechanism = explicit.get("sasl.mechanism", explicit.get("sasl.mechanisms", DEFAULT_SASL_MECHANISM))
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"sasl.mechanism {mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}")
        out["sasl.mechanism"] = mechanism
    clash = sorted(k for k in OWNED.values() if k in out and k in explicit)
    if clash:
        raise ConfigError(
            f"Kafka setting(s) {', '.join(clash)} are given both as files (--kafka-*-file) and as "
            "pass-through config; give them once, as files"
        )
    # SASL without a CA file still means TLS (the system's roots): a password is never sent in the
    # clear unless security.protocol=SASL_PLAINTEXT says so explicitly.
    wanted = "SASL_SSL" if security.sasl else "SSL"
    protocol = explicit.get("security.protocol", "").upper()
    if protocol:
        if security.sasl:
            allowed = {"SASL_SSL"} if security.uses_tls else {"SASL_SSL", "SASL_PLAINTEXT"}
        else:
            allowed = {"SSL", "SASL_SSL"}
        if protocol not in allowed:
            raise ConfigError(
                f"security.protocol={protocol} contradicts the Kafka TLS/SASL files given "
                f"(expected {' or '.join(sorted(allowed))})"
            )
    else:
        out["security.protocol"] = wanted
    return out


class ConnectionProblems:
    """The latest TLS or SASL failure librdkafka reported for a connection, for error messages.

    Why: a wrong password or an untrusted CA shows up in request results only as "timed out" (the
    client keeps retrying the connection); the reason is in librdkafka's error callback. Appending it
    to the timeout's message turns "Local: Timed out" into something a person can act on.
    """

    def __init__(self, max_age: float = 120.0) -> None:
        self._max_age = max_age
        self._lock = threading.Lock()
        self._latest: tuple[float, str] | None = None

    def note(self, message: str) -> None:
        with self._lock:
            self._latest = (time.monotonic(), message)

    def hint(self) -> str:
        """`; last connection error: …` when one was seen recently, else ''."""
        with self._lock:
            latest = self._latest
        if latest is None or time.monotonic() - latest[0] > self._max_age:
            return ""
        return f"; last connection error: {latest[1]}"
