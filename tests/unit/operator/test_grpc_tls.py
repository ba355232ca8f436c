"""spec.tls in the operator: the Secret mounted as `--tls-dir`, the readiness probe on the plaintext
health port, the authorization map as KVS2_AUTHZ, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest
from kvs2.authz import parse_entries
from kvs2_operator.errors import SpecError
from kvs2_operator.model import parse_store
from kvs2_operator.render import render_statefulset


def _container(body: dict[str, Any]) -> dict[str, Any]:
    pod = render_statefulset(parse_store(body))["spec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    container["_volumes"] = pod.get("volumes", [])
    return container


def test_tls_mounts_the_secret_and_moves_the_probe_to_the_health_port(body: dict[str, Any]) -> None:
    body["spec"]["tls"] = {
        "secretName": "orders-grpc-cert",
        "authorization": {"checkout": ["read", "write"], "reports": ["read"]},
    }
    container = _container(body)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KVS2_TLS_DIR"] == "/etc/kvs2/tls"
    assert env["KVS2_HEALTH_LISTEN"] == "$(POD_IP):8081"
    # The value the data plane parses (kvs2.authz) means what the spec says.
    assert parse_entries(env["KVS2_AUTHZ"].split(";")) == {
        "checkout": frozenset({"read", "write"}),
        "reports": frozenset({"read"}),
    }
    assert container["readinessProbe"]["grpc"] == {"port": 8081}
    assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    volume = next(v for v in container["_volumes"] if v["name"] == "grpc-tls")
    assert volume["secret"]["secretName"] == "orders-grpc-cert"
    assert [i["key"] for i in volume["secret"]["items"]] == ["tls.crt", "tls.key", "ca.crt"]
    assert {"name": "grpc-tls", "mountPath": "/etc/kvs2/tls", "readOnly": True} in container["volumeMounts"]


def test_without_tls_nothing_changes(body: dict[str, Any]) -> None:
    container = _container(body)
    assert container["readinessProbe"]["grpc"] == {"port": 50051}
    assert not any(e["name"] in ("KVS2_TLS_DIR", "KVS2_HEALTH_LISTEN") for e in container["env"])


def test_tls_without_client_certificates_leaves_out_the_ca(body: dict[str, Any]) -> None:
    body["spec"]["tls"] = {"secretName": "public-cert", "mutual": False}
    volume = next(v for v in _container(body)["_volumes"] if v["name"] == "grpc-tls")
    assert [i["key"] for i in volume["secret"]["items"]] == ["tls.crt", "tls.key"]


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({}, "secretName must be a non-empty string"),
        ({"secretName": "s", "mutual": False, "authorization": {"a": ["read"]}}, "needs mutual TLS"),
        ({"secretName": "s", "authorization": {"a": ["admin"]}}, "list of read/write"),
        ({"secretName": "s", "authorization": {"a=b": ["read"]}}, "must not contain"),
    ],
)
def test_refused(body: dict[str, Any], tls: dict[str, Any], message: str) -> None:
    body["spec"]["tls"] = tls
    with pytest.raises(SpecError, match=message):
        parse_store(body)
