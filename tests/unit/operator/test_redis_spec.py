"""spec.redis: off by default; when enabled the pods listen for Redis clients and both Services expose a
`redis` port; bad values are InvalidSpec naming the field; the CRD agrees with the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kvs2_operator.errors import SpecError
from kvs2_operator.model import DEFAULT_REDIS_PORT, parse_store
from kvs2_operator.render import render_client_service, render_headless_service, render_statefulset

ROOT = Path(__file__).resolve().parents[3]


def _container(body: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = render_statefulset(parse_store(body))["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def test_off_by_default(body: dict[str, Any]) -> None:
    store = parse_store(body)
    assert not store.spec.redis.enabled
    container = _container(body)
    assert "KVS2_REDIS_LISTEN" not in {e["name"] for e in container["env"]}
    assert [p["name"] for p in container["ports"]] == ["grpc", "metrics", "snapshot-data"]  # no redis
    assert [p["name"] for p in render_client_service(store)["spec"]["ports"]] == ["grpc"]


def test_enabled_listens_on_the_pod_ip_and_services_expose_it(body: dict[str, Any]) -> None:
    body["spec"]["redis"] = {"enabled": True, "port": 16379}
    store = parse_store(body)
    container = _container(body)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KVS2_REDIS_LISTEN"] == "$(POD_IP):16379"
    assert {"name": "redis", "containerPort": 16379, "protocol": "TCP"} in container["ports"]
    for service in (render_client_service(store), render_headless_service(store)):
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert ports["redis"] == {"name": "redis", "port": 16379, "targetPort": "redis", "protocol": "TCP"}
        assert "grpc" in ports
    body["spec"]["redis"] = {"enabled": True}
    assert parse_store(body).spec.redis.port == DEFAULT_REDIS_PORT


@pytest.mark.parametrize(
    ("redis", "message"),
    [
        ({"enabled": "yes"}, "spec.redis.enabled must be true or false"),
        ({"enabled": True, "port": 0}, "spec.redis.port"),
        ({"enabled": True, "port": 50051}, "must differ from the gRPC port 50051"),
        ("on", "spec.redis"),
    ],
)
def test_bad_values_name_the_field(body: dict[str, Any], redis: object, message: str) -> None:
    body["spec"]["redis"] = redis
    with pytest.raises(SpecError, match=message):
        parse_store(body)


@pytest.mark.parametrize("path", ["deploy/crd.yaml", "charts/kvs2/files/keyvaluestores.kvs2.io.yaml"])
def test_the_crd_schema_agrees(path: str) -> None:
    doc = yaml.safe_load((ROOT / path).read_text())
    (version,) = doc["spec"]["versions"]
    redis = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["redis"]
    assert redis["properties"]["enabled"] == {"type": "boolean", "default": False}
    port = redis["properties"]["port"]
    assert (port["default"], port["minimum"], port["maximum"]) == (DEFAULT_REDIS_PORT, 1, 65535)
