"""spec.tls.certManager → a cert-manager Certificate; spec.networkPolicy → a NetworkPolicy;
spec.redis.usersSecret → the Redis users mounted as files. Rendering and validation; against the real API
server: tests/integration/security/test_operator_protection.py."""

from __future__ import annotations

from typing import Any

import pytest
from kvs2_operator.errors import SpecError
from kvs2_operator.model import OperatorDefaults, parse_store
from kvs2_operator.render import render_children, render_protection, render_statefulset


def _tls(body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    body["spec"]["tls"] = {"secretName": "db-tls", **extra}
    return body


def test_cert_manager_certificate_names_every_service_and_pod(body: dict[str, Any]) -> None:
    body = _tls(body, certManager={"issuerRef": {"name": "ca-issuer", "kind": "ClusterIssuer"}})
    store = parse_store(body)
    children = render_children(store)
    assert children[0]["kind"] == "Certificate"  # first: its Secret is what the pods mount
    cert = children[0]
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["metadata"]["name"] == f"{store.name}-tls"
    assert cert["metadata"]["ownerReferences"][0]["uid"] == store.ref.uid
    spec = cert["spec"]
    assert spec["secretName"] == "db-tls"
    assert spec["issuerRef"] == {"name": "ca-issuer", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    ns, name = store.namespace, store.name
    for dns in (
        name,
        f"{name}.{ns}",
        f"{name}.{ns}.svc",
        f"{name}.{ns}.svc.cluster.local",
        f"{name}-peers.{ns}.svc",
        f"*.{name}-peers.{ns}.svc",
    ):
        assert dns in spec["dnsNames"]
    assert {"server auth", "client auth"} <= set(spec["usages"])


def test_no_certificate_without_cert_manager(body: dict[str, Any]) -> None:
    assert render_protection(parse_store(_tls(body))) == []


@pytest.mark.parametrize(
    ("cert_manager", "message"),
    [
        ({}, "issuerRef"),
        ({"issuerRef": {"kind": "Issuer"}}, "issuerRef.name"),
        ({"issuerRef": {"name": "x", "kind": "Nope"}}, "Issuer or ClusterIssuer"),
    ],
)
def test_bad_cert_manager_settings(body: dict[str, Any], cert_manager: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_store(_tls(body, certManager=cert_manager))


def test_network_policy_admits_peers_clients_and_metrics_scrapers_on_their_ports(
    body: dict[str, Any],
) -> None:
    clients = {"podSelector": {"matchLabels": {"role": "app"}}}
    scrapers = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    body["spec"]["redis"] = {"enabled": True, "port": 16379}
    body["spec"]["networkPolicy"] = {"allowFrom": [clients], "metricsFrom": [scrapers]}
    store = parse_store(body)
    [policy] = [c for c in render_children(store) if c["kind"] == "NetworkPolicy"]
    pods = {"app.kubernetes.io/name": "kvs2", "app.kubernetes.io/instance": store.name}
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": pods}
    assert spec["policyTypes"] == ["Ingress"]
    peers, apps, metrics = spec["ingress"]
    assert peers == {  # gRPC, and the snapshot data channel peers send each other snapshots on
        "from": [{"podSelector": {"matchLabels": pods}}],
        "ports": [{"protocol": "TCP", "port": 50051}, {"protocol": "TCP", "port": 50052}],
    }
    assert apps["from"] == [clients]
    assert [p["port"] for p in apps["ports"]] == [50051, 16379]
    assert metrics["from"] == [scrapers]
    assert [p["port"] for p in metrics["ports"]] == [9464]


def test_network_policy_without_clients_admits_only_peers(body: dict[str, Any]) -> None:
    body["spec"]["networkPolicy"] = {}
    [policy] = render_protection(parse_store(body))
    assert len(policy["spec"]["ingress"]) == 1


def test_network_policy_admits_the_operators_namespace_to_the_metrics_port(body: dict[str, Any]) -> None:
    """The operator reads each pod's phase and lag from its metrics port (kvs2_operator.replicas): a policy
    that shut it out would turn every pod `Unknown` in status."""
    body["spec"]["networkPolicy"] = {}
    [policy] = render_protection(parse_store(body, OperatorDefaults(operator_namespace="kvs2-system")))
    _peers, operator = policy["spec"]["ingress"]
    assert operator["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kvs2-system"}}}
    ]
    assert [p["port"] for p in operator["ports"]] == [9464]


@pytest.mark.parametrize("allow_from", [{"podSelector": {}}, [{}], [{"nodeSelector": {}}], ["app"]])
def test_bad_network_policy_peers(body: dict[str, Any], allow_from: Any) -> None:
    body["spec"]["networkPolicy"] = {"allowFrom": allow_from}
    with pytest.raises(SpecError, match=r"spec\.networkPolicy\.allowFrom"):
        parse_store(body)


def test_redis_users_secret_is_mounted_and_named_to_the_replica(body: dict[str, Any]) -> None:
    body = _tls(body)
    body["spec"]["redis"] = {"enabled": True, "usersSecret": "redis-users"}
    pod = render_statefulset(parse_store(body))["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KVS2_REDIS_USERS"] == "/etc/kvs2/redis-users"
    assert env["KVS2_TLS_DIR"] == "/etc/kvs2/tls"  # the Redis port takes the same certificate
    assert {"name": "redis-users", "mountPath": "/etc/kvs2/redis-users", "readOnly": True} in container[
        "volumeMounts"
    ]
    [volume] = [v for v in pod["volumes"] if v["name"] == "redis-users"]
    assert volume["secret"]["secretName"] == "redis-users"


def test_redis_users_are_ignored_while_redis_is_off(body: dict[str, Any]) -> None:
    body["spec"]["redis"] = {"enabled": False, "usersSecret": "redis-users"}
    pod = render_statefulset(parse_store(body))["spec"]["template"]["spec"]
    assert "KVS2_REDIS_USERS" not in {e["name"] for e in pod["containers"][0]["env"]}
    assert "redis-users" not in {v["name"] for v in pod["volumes"]}
