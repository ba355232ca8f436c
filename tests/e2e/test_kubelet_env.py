"""The process kubelet's pure rules (no cluster): Kubernetes' `$(VAR)` expansion, env assembly from the
downward API / Secrets / ConfigMaps, mount-path rewriting, and Service-name resolution."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import pytest

from tests.harness.kubelet_env import ConfigError, container_env, expand, resolve_services, rewrite_paths


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)z", "x1y2z"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("cost: $5", "cost: $5"),
        ("$(A", "$(A"),
        ("end$", "end$"),
        ("$(A)$(A)", "11"),
    ],
)
def test_expand_follows_kubernetes(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == expected


POD: dict[str, Any] = {
    "metadata": {"name": "db-0", "namespace": "shop", "uid": "u-1", "labels": {"app": "db"}},
    "spec": {"nodeName": "kvs2-node-0", "serviceAccountName": "default"},
    "status": {"podIP": "127.0.10.7", "podIPs": [{"ip": "127.0.10.7"}], "hostIP": "127.0.0.1"},
}
OBJECTS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("Secret", "shop", "creds"): {"data": {"user": base64.b64encode(b"alice").decode()}},
    ("ConfigMap", "shop", "cfg"): {"data": {"mode": "fast", "level": "3"}},
}


def _lookup(kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
    return OBJECTS.get((kind, namespace, name))


def test_env_resolves_references_in_order_and_expands_only_plain_values() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "USER", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
            {"name": "LISTEN", "value": "$(POD_IP):50051"},
            {"name": "EARLY", "value": "$(LATE)"},  # defined later: stays literal, as in Kubernetes
            {"name": "LATE", "value": "x"},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
            {"name": "MODE", "value": "$(CFG_mode)"},
        ],
    }
    env = container_env(POD, container, _lookup, {"PATH": "/bin"})
    assert env == {
        "PATH": "/bin",
        "CFG_mode": "fast",
        "CFG_level": "3",
        "POD_IP": "127.0.10.7",
        "NAME": "db-0",
        "APP": "db",
        "USER": "alice",
        "LISTEN": "127.0.10.7:50051",
        "EARLY": "$(LATE)",
        "LATE": "x",
        "MODE": "fast",
    }


@pytest.mark.parametrize(
    "ref",
    [
        {"secretKeyRef": {"name": "nope", "key": "user"}},
        {"secretKeyRef": {"name": "creds", "key": "nope"}},
        {"configMapKeyRef": {"name": "cfg", "key": "nope"}},
        {"fieldRef": {"fieldPath": "spec.nothing"}},
    ],
)
def test_missing_references_are_config_errors(ref: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        container_env(POD, {"env": [{"name": "X", "valueFrom": ref}]}, _lookup, {})


def test_mount_paths_are_rewritten_as_whole_paths_only() -> None:
    mounts = [
        ("/var/lib/kvs2", "/state/pv/a"),
        ("/tmp", "/state/pod/tmp"),
        ("/var/lib/kvs2/cache", "/state/c"),
    ]
    assert rewrite_paths("/var/lib/kvs2", mounts) == "/state/pv/a"
    assert rewrite_paths("--data-dir=/var/lib/kvs2/db", mounts) == "--data-dir=/state/pv/a/db"
    assert rewrite_paths("/var/lib/kvs2/cache/x", mounts) == "/state/c/x"  # the longest mount wins
    assert rewrite_paths("/var/lib/kvs22", mounts) == "/var/lib/kvs22"
    assert rewrite_paths("/opt/var/lib/kvs2", mounts) == "/opt/var/lib/kvs2"
    assert rewrite_paths("/tmp:/var/lib/kvs2", mounts) == "/state/pod/tmp:/state/pv/a"
    # one pass: a replaced directory is not rewritten again by a shorter mount
    assert rewrite_paths("/tmp", [("/tmp", "/tmp/x"), ("/tmp/x", "/never")]) == "/tmp/x"


def test_service_names_resolve_to_a_ready_backend_or_stay() -> None:
    seen: list[tuple[str, str, int | None]] = []

    def resolve(namespace: str, name: str, port: int | None) -> str | None:
        seen.append((namespace, name, port))
        return "127.0.10.3:50051" if name == "demo" else None

    assert resolve_services("demo.default.svc:50051", resolve) == "127.0.10.3:50051"
    assert (
        resolve_services("dns:///demo.default.svc.cluster.local:50051", resolve) == "dns:///127.0.10.3:50051"
    )
    assert resolve_services("gone.default.svc:50051", resolve) == "gone.default.svc:50051"
    assert resolve_services("demo.default.svc.example.com", resolve) == "demo.default.svc.example.com"
    assert seen == [("default", "demo", 50051), ("default", "demo", 50051), ("default", "gone", 50051)]
