"""spec.tls: gRPC TLS (and mutual TLS, and per-subject rights) for a store's replicas.

The Secret is a `kubernetes.io/tls` one — what a cert-manager `Certificate` produces — mounted whole
at /etc/kvs2/tls, which is `kvs2 serve --tls-dir` (kvs2.credentials): `tls.crt` + `tls.key`, and with
`mutual: true` (the default) its `ca.crt` as the CA of client certificates. Renewals reach running
replicas: the kubelet swaps the volume's files and the replica re-reads them per connection.

Why a health port: with TLS the kubelet's gRPC readiness probe cannot reach the main port, so replicas
also serve `grpc.health.v1` in plaintext on HEALTH_PORT (`--health-listen`) and the probe goes there.

`authorization` maps certificate subjects (CN or SAN) to `read`/`write` (kvs2.authz); it is not secret,
so it travels as the `KVS2_AUTHZ` env value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvs2_operator.errors import SpecError
from kvs2_operator.protection import IssuerRef, parse_issuer_ref

MOUNT_PATH = "/etc/kvs2/tls"
REDIS_USERS_PATH = "/etc/kvs2/redis-users"
REDIS_USERS_VOLUME = "redis-users"
VOLUME = "grpc-tls"
HEALTH_PORT = 8081
RIGHTS = ("read", "write")
FILE_MODE = 0o440


@dataclass(frozen=True)
class GrpcTls:
    secret_name: str
    mutual: bool = True
    authorization: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # spec.tls.certManager.issuerRef: the operator creates a Certificate writing `secret_name`.
    cert_manager: IssuerRef | None = None


def parse_grpc_tls(raw: Any) -> GrpcTls | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError(f"spec.tls must be an object, got {type(raw).__name__}")
    name = raw.get("secretName")
    if not isinstance(name, str) or not name:
        raise SpecError(f"spec.tls.secretName must be a non-empty string, got {name!r}")
    mutual = raw.get("mutual", True)
    if not isinstance(mutual, bool):
        raise SpecError(f"spec.tls.mutual must be true or false, got {mutual!r}")
    authorization: dict[str, tuple[str, ...]] = {}
    for subject, rights in (raw.get("authorization") or {}).items():
        if not isinstance(rights, list) or not rights or any(r not in RIGHTS for r in rights):
            raise SpecError(
                f"spec.tls.authorization[{subject!r}] must be a list of read/write, got {rights!r}"
            )
        if any(c in str(subject) for c in ";="):
            raise SpecError(f"spec.tls.authorization: subject {subject!r} must not contain ';' or '='")
        authorization[str(subject)] = tuple(rights)
    if authorization and not mutual:
        raise SpecError("spec.tls.authorization needs mutual TLS (spec.tls.mutual: true)")
    return GrpcTls(name, mutual, authorization, parse_issuer_ref(raw.get("certManager")))


def probe_port(tls: GrpcTls | None, grpc_port: int) -> int:
    """Where the readiness probe asks for gRPC health: the plaintext health port when TLS is on."""
    return grpc_port if tls is None else HEALTH_PORT


def pod_parts(
    tls: GrpcTls | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, volumes, volumeMounts, container ports) for spec.tls; all empty without it."""
    if tls is None:
        return [], [], [], []
    items = [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]
    if tls.mutual:
        items.append({"key": "ca.crt", "path": "ca.crt"})
    env: list[dict[str, Any]] = [
        {"name": "KVS2_TLS_DIR", "value": MOUNT_PATH},
        {"name": "KVS2_HEALTH_LISTEN", "value": f"$(POD_IP):{HEALTH_PORT}"},
    ]
    if tls.authorization:
        rules = ";".join(f"{s}={','.join(r)}" for s, r in sorted(tls.authorization.items()))
        env.append({"name": "KVS2_AUTHZ", "value": rules})
    volume = {
        "name": VOLUME,
        "secret": {"secretName": tls.secret_name, "items": items, "defaultMode": FILE_MODE},
    }
    mount = {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True}
    port = {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}
    return env, [volume], [mount], [port]


def redis_users_parts(
    secret_name: str | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, volumes, volumeMounts) for spec.redis.usersSecret: the Secret mounted whole (one key per
    user, its value the password) as `kvs2 serve --redis-users`. The Redis port takes spec.tls's
    certificate (and client CA) by itself; spec.tls.authorization gives AUTH users their rights too."""
    if secret_name is None:
        return [], [], []
    env = [{"name": "KVS2_REDIS_USERS", "value": REDIS_USERS_PATH}]
    volume = {"name": REDIS_USERS_VOLUME, "secret": {"secretName": secret_name, "defaultMode": FILE_MODE}}
    mount = {"name": REDIS_USERS_VOLUME, "mountPath": REDIS_USERS_PATH, "readOnly": True}
    return env, [volume], [mount]
