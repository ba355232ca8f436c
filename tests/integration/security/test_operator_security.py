"""The operator against the secured Kafka: the store's CA and SCRAM credentials come from Secrets in its
namespace (read through the real API server), the topic is created over SASL_SSL, the StatefulSet mounts
them as files; a wrong password or an untrusted CA is reported in the status, and the CRD refuses a
clientConfig that would override them."""

from __future__ import annotations

import json
from typing import Any

from tests.harness.common import ManagedProcess
from tests.harness.kafka_secure import SecureKafkaBroker
from tests.harness.pki import CertificateAuthority
from tests.integration.operator.conftest import Stores, describe_topic, store_manifest
from tests.integration.security.conftest import USERS

SECURITY = {
    "tls": {"ca": {"secretName": "kafka-cluster-ca"}},
    "sasl": {"mechanism": "SCRAM-SHA-512", "secretName": "kvs2-kafka-user"},
}


def _secret(stores: Stores, name: str, **data: str) -> None:
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": data,
    }
    stores.apply(manifest)


def _secrets(
    stores: Stores, secure_kafka: SecureKafkaBroker, *, password: str, ca_pem: bytes | None = None
) -> None:
    _secret(stores, "kafka-cluster-ca", **{"ca.crt": (ca_pem or secure_kafka.ca.cert_pem).decode()})
    _secret(stores, "kvs2-kafka-user", username="kvs2", password=password)


def test_the_operator_creates_the_topic_over_sasl_ssl_with_credentials_from_secrets(
    stores: Stores, secure_kafka: SecureKafkaBroker, operator: ManagedProcess
) -> None:
    _secrets(stores, secure_kafka, password=USERS["kvs2"])
    stores.apply(store_manifest("secured", secure_kafka.sasl_bootstrap, **{"kafka": {
        "bootstrapServers": secure_kafka.sasl_bootstrap,
        "topic": {"partitions": 2, "replicationFactor": 1},
        **SECURITY,
    }}))  # fmt: skip
    stores.wait_condition("secured", "TopicReady", "True", timeout=90)
    facts = describe_topic(secure_kafka.bootstrap_servers, f"{stores.namespace}.secured")
    assert facts is not None and facts.partitions == 2 and facts.config["cleanup.policy"] == "compact"
    sts = stores.wait("the StatefulSet", lambda: stores.get("statefulset", "secured"))
    pod = sts["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} >= {"kafka-ca", "kafka-sasl"}
    assert USERS["kvs2"] not in json.dumps(sts)  # the password is a mounted file, never a value


def _reported(stores: Stores, name: str) -> dict[str, Any]:
    def failed() -> dict[str, Any] | None:
        cond = stores.condition(name, "TopicReady")
        return cond if cond.get("status") == "False" and cond.get("reason") else None

    result: dict[str, Any] = stores.wait(f"{name} to report the Kafka failure", failed, timeout=120)
    return result


def test_a_wrong_password_is_reported_in_the_status(
    stores: Stores, secure_kafka: SecureKafkaBroker, operator: ManagedProcess
) -> None:
    _secrets(stores, secure_kafka, password="not-the-password")
    stores.apply(store_manifest("badpass", secure_kafka.sasl_bootstrap, **{"kafka": {
        "bootstrapServers": secure_kafka.sasl_bootstrap, **SECURITY,
    }}))  # fmt: skip
    cond = _reported(stores, "badpass")
    assert "Authentication failed" in cond["message"] or "invalid credentials" in cond["message"], cond


def test_an_untrusted_broker_certificate_is_reported_in_the_status(
    stores: Stores, secure_kafka: SecureKafkaBroker, operator: ManagedProcess
) -> None:
    _secrets(stores, secure_kafka, password=USERS["kvs2"], ca_pem=CertificateAuthority("other").cert_pem)
    stores.apply(store_manifest("badca", secure_kafka.sasl_bootstrap, **{"kafka": {
        "bootstrapServers": secure_kafka.sasl_bootstrap, **SECURITY,
    }}))  # fmt: skip
    cond = _reported(stores, "badca")
    assert "certificate verify failed" in cond["message"], cond


def test_the_crd_refuses_client_config_that_overrides_the_secrets(
    stores: Stores, secure_kafka: SecureKafkaBroker, crd: Any
) -> None:
    manifest = store_manifest("override", secure_kafka.sasl_bootstrap, **{"kafka": {
        "bootstrapServers": secure_kafka.sasl_bootstrap,
        "clientConfig": {"sasl.password": "inline", "linger.ms": "5"},
        **SECURITY,
    }})  # fmt: skip
    code, output = stores.apply(manifest, check=False)
    assert code != 0
    assert "kafka.clientConfig must not set security.protocol, sasl.*" in output
