"""spec.kafka.tls / spec.kafka.sasl in the operator: parsing, what the pods get (files, never secret
values in env), what the operator's admin client gets, and what is refused."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import pytest
from kvs2_operator.errors import CredentialsUnavailableError, SpecError
from kvs2_operator.kafka_security import admin_settings, parse_sasl, parse_tls
from kvs2_operator.model import parse_store
from kvs2_operator.render import render_statefulset

SECURITY = {
    "tls": {
        "ca": {"secretName": "my-cluster-cluster-ca-cert"},
        "clientCertificate": {"secretName": "kvs2-user", "certificateKey": "user.crt", "keyKey": "user.key"},
    },
    "sasl": {"mechanism": "SCRAM-SHA-256", "secretName": "kvs2-user", "username": "kvs2"},
}


def _sts(body: dict[str, Any], **kafka: Any) -> dict[str, Any]:
    body["spec"]["kafka"].update(kafka)
    return render_statefulset(parse_store(body))


def test_tls_and_sasl_are_mounted_files_and_no_secret_value_is_in_the_pod_spec(body: dict[str, Any]) -> None:
    sts = _sts(body, **SECURITY)
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["KVS2_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["KVS2_KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-256"
    assert env["KVS2_KAFKA_SASL_USERNAME"]["value"] == "kvs2"
    assert env["KVS2_KAFKA_CA_FILE"]["value"] == "/etc/kvs2/kafka/ca/ca.crt"
    assert env["KVS2_KAFKA_CERT_FILE"]["value"] == "/etc/kvs2/kafka/client-cert/tls.crt"
    assert env["KVS2_KAFKA_KEY_FILE"]["value"] == "/etc/kvs2/kafka/client-cert/tls.key"
    assert env["KVS2_KAFKA_SASL_PASSWORD_FILE"]["value"] == "/etc/kvs2/kafka/sasl/password"
    assert not any("valueFrom" in e for e in container["env"] if e["name"].startswith("KVS2_KAFKA"))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kafka-ca"]["secret"]["secretName"] == "my-cluster-cluster-ca-cert"
    assert volumes["kafka-ca"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert volumes["kafka-client-cert"]["secret"]["items"] == [
        {"key": "user.crt", "path": "tls.crt"},
        {"key": "user.key", "path": "tls.key"},
    ]
    assert volumes["kafka-sasl"]["secret"]["items"] == [{"key": "password", "path": "password"}]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["kafka-sasl"] == {
        "name": "kafka-sasl",
        "mountPath": "/etc/kvs2/kafka/sasl",
        "readOnly": True,
    }
    assert mounts["data"]["mountPath"] == "/var/lib/kvs2"


def test_a_ca_from_a_config_map_and_a_username_key(body: dict[str, Any]) -> None:
    sts = _sts(
        body,
        tls={"ca": {"configMapName": "kafka-ca", "key": "bundle.pem"}},
        sasl={"secretName": "creds"},
    )
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kafka-ca"]["configMap"]["items"] == [{"key": "bundle.pem", "path": "ca.crt"}]
    assert volumes["kafka-sasl"]["secret"]["items"] == [
        {"key": "password", "path": "password"},
        {"key": "username", "path": "username"},
    ]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
    assert env["KVS2_KAFKA_SASL_USERNAME_FILE"] == "/etc/kvs2/kafka/sasl/username"
    assert env["KVS2_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"


def test_tls_only_is_ssl_and_an_ephemeral_store_keeps_its_data_volume(body: dict[str, Any]) -> None:
    body["spec"]["storage"] = {"ephemeral": True}
    sts = _sts(body, tls={})
    pod = sts["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KVS2_KAFKA_SECURITY_PROTOCOL"] == "SSL"
    assert "KVS2_KAFKA_CA_FILE" not in env  # the system's CAs
    names = [v["name"] for v in pod["volumes"]]
    assert "data" in names and not any(n.startswith("kafka-") for n in names)


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        ({"tls": {}, "clientConfig": {"ssl.ca.location": "/x"}}, "must not set ssl.ca.location"),
        ({"sasl": {"secretName": "s"}, "clientConfig": {"sasl.password": "x"}}, r"sasl\.password"),
        ({"sasl": {"secretName": "s"}, "authentication": {"secretName": "s"}}, "not both"),
        ({"tls": {"ca": {"secretName": "a", "configMapName": "b"}}}, "exactly one of"),
        ({"sasl": {"secretName": "s", "mechanism": "GSSAPI"}}, "must be one of"),
        ({"sasl": {"secretName": "s", "username": "u", "usernameKey": "k"}}, "not both"),
    ],
)
def test_refused_specs(body: dict[str, Any], kafka: dict[str, Any], message: str) -> None:
    body["spec"]["kafka"].update(kafka)
    with pytest.raises(SpecError, match=message):
        parse_store(body)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_the_admin_client_reads_pem_and_password_through_the_api() -> None:
    objects: dict[tuple[str, str], Mapping[str, Any]] = {
        ("Secret", "my-cluster-cluster-ca-cert"): {"data": {"ca.crt": _b64("CA PEM")}},
        ("Secret", "kvs2-user"): {
            "data": {"user.crt": _b64("CERT"), "user.key": _b64("KEY"), "password": _b64("pw\n")}
        },
    }

    async def get(kind: str, name: str) -> Mapping[str, Any] | None:
        return objects.get((kind, name))

    settings = await admin_settings(parse_tls(SECURITY["tls"]), parse_sasl(SECURITY["sasl"]), "shop", get)
    assert settings == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.pem": "CA PEM",
        "ssl.certificate.pem": "CERT",
        "ssl.key.pem": "KEY",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "kvs2",
        "sasl.password": "pw",
    }
    del objects[("Secret", "my-cluster-cluster-ca-cert")]
    with pytest.raises(CredentialsUnavailableError, match="Secret shop/my-cluster-cluster-ca-cert"):
        await admin_settings(parse_tls(SECURITY["tls"]), None, "shop", get)
    config_map_ca = parse_tls({"ca": {"configMapName": "ca", "key": "ca.pem"}})
    objects[("ConfigMap", "ca")] = {"data": {"other": "x"}}
    with pytest.raises(CredentialsUnavailableError, match=r"has no key 'ca\.pem'"):
        await admin_settings(config_map_ca, None, "shop", get)
    objects[("ConfigMap", "ca")] = {"data": {"ca.pem": "PLAIN PEM"}}
    assert (await admin_settings(config_map_ca, None, "shop", get))["ssl.ca.pem"] == "PLAIN PEM"
