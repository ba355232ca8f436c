"""spec.kafka.tls and spec.kafka.sasl: Kafka TLS (a custom CA, a client certificate) and SASL from
Secrets, for the replicas (mounted files) and for the operator's own admin client (read through the API).

Why files for the pods: a Secret volume keeps the password out of the pod spec and `kubectl describe`
(an env value from a secretKeyRef is visible to anyone who can exec or read /proc/<pid>/environ).
The data plane's `--kafka-*-file` flags (kvs2.kafka_security) take the mounted paths.

Why the operator reads the Secrets itself: it runs in another namespace and pod, and a store's Secrets
live in the store's namespace; it passes the PEM text to librdkafka (`ssl.ca.pem`, ...), never a file.

spec.kafka.clientConfig may not set what these own (refused by the CRD's CEL rules and by `parse`).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kvs2_operator.errors import CredentialsUnavailableError, SpecError

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MOUNT_ROOT = "/etc/kvs2/kafka"
CA_VOLUME, CLIENT_VOLUME, SASL_VOLUME = "kafka-ca", "kafka-client-cert", "kafka-sasl"
# Owned librdkafka settings: with spec.kafka.tls or .sasl, clientConfig may not set any of them.
OWNED_SETTINGS = (
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.certificate.pem",
    "ssl.key.location",
    "ssl.key.pem",
    "ssl.key.password",
)
# Readable by the pod's fsGroup (the image's user), by nobody else.
FILE_MODE = 0o440


@dataclass(frozen=True)
class KeyRef:
    """One key of a Secret (or ConfigMap) in the store's namespace."""

    kind: str  # "Secret" or "ConfigMap"
    name: str
    key: str


@dataclass(frozen=True)
class KafkaTls:
    ca: KeyRef | None  # None: the system's CAs
    client_cert: KeyRef | None
    client_key: KeyRef | None


@dataclass(frozen=True)
class KafkaSasl:
    mechanism: str
    secret_name: str
    password_key: str
    username_key: str | None
    username: str | None  # a literal user name (Strimzi's KafkaUser Secret holds only the password)


def _text(raw: Mapping[str, Any], name: str, path: str, default: str | None = None) -> str:
    value = raw.get(name, default)
    if not isinstance(value, str) or not value:
        raise SpecError(f"{path}.{name} must be a non-empty string, got {value!r}")
    return value


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{path} must be an object, got {type(value).__name__}")
    return value


def parse_tls(raw: Any) -> KafkaTls | None:
    if raw is None:
        return None
    tls = _mapping(raw, "spec.kafka.tls")
    ca: KeyRef | None = None
    if tls.get("ca") is not None:
        ref = _mapping(tls["ca"], "spec.kafka.tls.ca")
        secret, config_map = ref.get("secretName"), ref.get("configMapName")
        if (secret is None) == (config_map is None):
            raise SpecError("spec.kafka.tls.ca needs exactly one of secretName and configMapName")
        kind, field = ("Secret", "secretName") if secret is not None else ("ConfigMap", "configMapName")
        ca = KeyRef(
            kind, _text(ref, field, "spec.kafka.tls.ca"), _text(ref, "key", "spec.kafka.tls.ca", "ca.crt")
        )
    cert = key = None
    if tls.get("clientCertificate") is not None:
        ref = _mapping(tls["clientCertificate"], "spec.kafka.tls.clientCertificate")
        path = "spec.kafka.tls.clientCertificate"
        name = _text(ref, "secretName", path)
        cert = KeyRef("Secret", name, _text(ref, "certificateKey", path, "tls.crt"))
        key = KeyRef("Secret", name, _text(ref, "keyKey", path, "tls.key"))
    return KafkaTls(ca, cert, key)


def parse_sasl(raw: Any) -> KafkaSasl | None:
    if raw is None:
        return None
    sasl = _mapping(raw, "spec.kafka.sasl")
    path = "spec.kafka.sasl"
    mechanism = _text(sasl, "mechanism", path, "SCRAM-SHA-512")
    if mechanism not in SASL_MECHANISMS:
        raise SpecError(f"{path}.mechanism must be one of {', '.join(SASL_MECHANISMS)}, got {mechanism!r}")
    username = sasl.get("username")
    username_key = sasl.get("usernameKey")
    if username is not None and username_key is not None:
        raise SpecError(f"{path}: give username or usernameKey, not both")
    return KafkaSasl(
        mechanism=mechanism,
        secret_name=_text(sasl, "secretName", path),
        password_key=_text(sasl, "passwordKey", path, "password"),
        username_key=None if username is not None else _text(sasl, "usernameKey", path, "username"),
        username=None if username is None else _text(sasl, "username", path),
    )


def check_client_config(
    client_config: Mapping[str, str], tls: KafkaTls | None, sasl: KafkaSasl | None
) -> None:
    """clientConfig must not override what spec.kafka.tls/sasl own (the CRD says the same in CEL)."""
    if tls is None and sasl is None:
        return
    clash = sorted(k for k in client_config if k in OWNED_SETTINGS)
    if clash:
        raise SpecError(
            f"spec.kafka.clientConfig must not set {', '.join(clash)} when spec.kafka.tls or spec.kafka.sasl "
            "is given: those come from the Secrets"
        )


def _protocol(tls: KafkaTls | None, sasl: KafkaSasl | None) -> str:
    # SASL always over TLS: the point of these fields is never to send a password in the clear.
    return "SASL_SSL" if sasl is not None else "SSL"


# ----- the pods ----------------------------------------------------------------------------------
def _volume(name: str, refs: list[tuple[KeyRef, str]]) -> dict[str, Any]:
    first = refs[0][0]
    items = [{"key": ref.key, "path": path} for ref, path in refs]
    if first.kind == "ConfigMap":
        return {"name": name, "configMap": {"name": first.name, "items": items, "defaultMode": FILE_MODE}}
    return {"name": name, "secret": {"secretName": first.name, "items": items, "defaultMode": FILE_MODE}}


def pod_parts(
    tls: KafkaTls | None, sasl: KafkaSasl | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, volumes, volumeMounts) for a replica: files under /etc/kvs2/kafka and the flags' env vars."""
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []

    def mount(volume: str, refs: list[tuple[KeyRef, str]]) -> str:
        directory = f"{MOUNT_ROOT}/{volume.removeprefix('kafka-')}"
        volumes.append(_volume(volume, refs))
        mounts.append({"name": volume, "mountPath": directory, "readOnly": True})
        return directory

    if tls is None and sasl is None:
        return env, volumes, mounts
    env.append({"name": "KVS2_KAFKA_SECURITY_PROTOCOL", "value": _protocol(tls, sasl)})
    if tls is not None and tls.ca is not None:
        directory = mount(CA_VOLUME, [(tls.ca, "ca.crt")])
        env.append({"name": "KVS2_KAFKA_CA_FILE", "value": f"{directory}/ca.crt"})
    if tls is not None and tls.client_cert is not None and tls.client_key is not None:
        directory = mount(CLIENT_VOLUME, [(tls.client_cert, "tls.crt"), (tls.client_key, "tls.key")])
        env.append({"name": "KVS2_KAFKA_CERT_FILE", "value": f"{directory}/tls.crt"})
        env.append({"name": "KVS2_KAFKA_KEY_FILE", "value": f"{directory}/tls.key"})
    if sasl is not None:
        refs = [(KeyRef("Secret", sasl.secret_name, sasl.password_key), "password")]
        if sasl.username_key is not None:
            refs.append((KeyRef("Secret", sasl.secret_name, sasl.username_key), "username"))
        directory = mount(SASL_VOLUME, refs)
        env.append({"name": "KVS2_KAFKA_SASL_MECHANISM", "value": sasl.mechanism})
        env.append({"name": "KVS2_KAFKA_SASL_PASSWORD_FILE", "value": f"{directory}/password"})
        if sasl.username is not None:
            env.append({"name": "KVS2_KAFKA_SASL_USERNAME", "value": sasl.username})  # not a secret
        else:
            env.append({"name": "KVS2_KAFKA_SASL_USERNAME_FILE", "value": f"{directory}/username"})
    return env, volumes, mounts


# ----- the operator's admin client ---------------------------------------------------------------
GetObject = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]


async def _value(get: GetObject, namespace: str, ref: KeyRef, field: str) -> str:
    obj = await get(ref.kind, ref.name)
    if obj is None:
        raise CredentialsUnavailableError(f"{ref.kind} {namespace}/{ref.name} ({field}) not found")
    data = obj.get("data") or {}
    if ref.key not in data:
        raise CredentialsUnavailableError(
            f"{ref.kind} {namespace}/{ref.name} has no key {ref.key!r} ({field})"
        )
    raw = data[ref.key]
    return base64.b64decode(raw).decode() if ref.kind == "Secret" else str(raw)


async def admin_settings(
    tls: KafkaTls | None, sasl: KafkaSasl | None, namespace: str, get: GetObject
) -> dict[str, str]:
    """librdkafka settings for the operator's AdminClient, with the PEM text and password read now."""
    if tls is None and sasl is None:
        return {}
    out = {"security.protocol": _protocol(tls, sasl)}
    if tls is not None and tls.ca is not None:
        out["ssl.ca.pem"] = await _value(get, namespace, tls.ca, "spec.kafka.tls.ca")
    if tls is not None and tls.client_cert is not None and tls.client_key is not None:
        out["ssl.certificate.pem"] = await _value(
            get, namespace, tls.client_cert, "spec.kafka.tls.clientCertificate"
        )
        out["ssl.key.pem"] = await _value(get, namespace, tls.client_key, "spec.kafka.tls.clientCertificate")
    if sasl is not None:
        out["sasl.mechanism"] = sasl.mechanism
        password = KeyRef("Secret", sasl.secret_name, sasl.password_key)
        out["sasl.password"] = (await _value(get, namespace, password, "spec.kafka.sasl")).rstrip("\r\n")
        if sasl.username is not None:
            out["sasl.username"] = sasl.username
        else:
            assert sasl.username_key is not None
            user = KeyRef("Secret", sasl.secret_name, sasl.username_key)
            out["sasl.username"] = (await _value(get, namespace, user, "spec.kafka.sasl")).rstrip("\r\n")
    return out
