"""Kafka TLS/SASL settings from files (kvs2.kafka_security): what librdkafka gets, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvs2.config import kafka_config_from_env
from kvs2.errors import ConfigError
from kvs2.kafka_security import KafkaSecurity, librdkafka_settings, security_from_options


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {name: tmp_path / name for name in ("ca.crt", "tls.crt", "tls.key", "username", "password")}
    for name, path in out.items():
        path.write_text(f"{name}-content\n")
    return out


def test_sasl_and_a_ca_make_sasl_ssl_with_credentials_read_from_the_files(files: dict[str, Path]) -> None:
    security = security_from_options(
        str(files["ca.crt"]), "", "", str(files["username"]), str(files["password"])
    )
    assert librdkafka_settings(security, {}) == {
        "ssl.ca.location": str(files["ca.crt"]),
        "sasl.username": "username-content",  # the Secret's trailing newline is not part of it
        "sasl.password": "password-content",
        "sasl.mechanism": "SCRAM-SHA-512",
        "security.protocol": "SASL_SSL",
    }


def test_client_certificate_only_is_ssl_and_the_mechanism_comes_from_pass_through(
    files: dict[str, Path],
) -> None:
    mtls = KafkaSecurity(ca_file=files["ca.crt"], cert_file=files["tls.crt"], key_file=files["tls.key"])
    assert librdkafka_settings(mtls, {})["security.protocol"] == "SSL"
    assert librdkafka_settings(mtls, {})["ssl.key.location"] == str(files["tls.key"])
    sasl = KafkaSecurity(sasl_username_file=files["username"], sasl_password_file=files["password"])
    settings = librdkafka_settings(sasl, {"sasl.mechanism": "PLAIN"})
    assert settings["sasl.mechanism"] == "PLAIN"
    assert settings["security.protocol"] == "SASL_SSL"  # never a password in the clear by default
    assert "security.protocol" not in librdkafka_settings(sasl, {"security.protocol": "SASL_PLAINTEXT"})
    assert librdkafka_settings(KafkaSecurity(), {"security.protocol": "SASL_PLAINTEXT"}) == {}
    password_only = KafkaSecurity(sasl_password_file=files["password"])
    assert librdkafka_settings(password_only, {"sasl.username": "strimzi-user"})["sasl.password"] == (
        "password-content"
    )


@pytest.mark.parametrize(
    ("security", "explicit", "message"),
    [
        ({"sasl_username_file": "username"}, {}, "needs --kafka-sasl-password-file"),
        ({"sasl_password_file": "password"}, {}, "needs a user name"),
        ({"cert_file": "tls.crt"}, {}, "go together"),
        ({"ca_file": "missing"}, {}, "does not exist"),
        ({"sasl_username_file": "username", "sasl_password_file": "missing"}, {}, "cannot read"),
        ({"ca_file": "ca.crt"}, {"ssl.ca.location": "/elsewhere"}, "given both as files"),
        (
            {"sasl_username_file": "username", "sasl_password_file": "password"},
            {"sasl.password": "inline"},
            "given both as files",
        ),
        (
            {"sasl_username_file": "username", "sasl_password_file": "password"},
            {"sasl.mechanism": "GSSAPI"},
            "is not one of",
        ),
        ({"ca_file": "ca.crt"}, {"security.protocol": "PLAINTEXT"}, "contradicts"),
        (
            {"ca_file": "ca.crt", "sasl_username_file": "username", "sasl_password_file": "password"},
            {"security.protocol": "SASL_PLAINTEXT"},
            "contradicts",
        ),
    ],
)
def test_refused(
    files: dict[str, Path], tmp_path: Path, security: dict[str, str], explicit: dict[str, str], message: str
) -> None:
    given = KafkaSecurity(**{k: files.get(v, tmp_path / v) for k, v in security.items()})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        librdkafka_settings(given, explicit)


def test_an_empty_password_file_is_refused(files: dict[str, Path]) -> None:
    files["password"].write_text("\n")
    security = KafkaSecurity(sasl_username_file=files["username"], sasl_password_file=files["password"])
    with pytest.raises(ConfigError, match="is empty"):
        librdkafka_settings(security, {})


def test_file_variables_are_not_passed_to_librdkafka() -> None:
    env = {"KVS2_KAFKA_CA_FILE": "/ca", "KVS2_KAFKA_SASL_PASSWORD_FILE": "/p", "KVS2_KAFKA_LINGER_MS": "5"}
    assert kafka_config_from_env(env) == {"linger.ms": "5"}
