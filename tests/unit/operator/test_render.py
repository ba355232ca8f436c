"""render.py is pure: these pin the fields that matter for correctness and operations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from kvs2_operator.model import parse_store
from kvs2_operator.render import (
    endpoint,
    render_children,
    render_client_service,
    render_headless_service,
    render_pdb,
    render_statefulset,
    selector_string,
)

SELECTOR = {"app.kubernetes.io/name": "kvs2", "app.kubernetes.io/instance": "orders"}


def _env(sts: dict[str, Any]) -> dict[str, Any]:
    container = sts["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_statefulset_identity_and_ownership(body: dict[str, Any]) -> None:
    sts = render_statefulset(parse_store(body))
    assert (sts["apiVersion"], sts["kind"]) == ("apps/v1", "StatefulSet")
    meta = sts["metadata"]
    assert (meta["name"], meta["namespace"]) == ("orders", "shop")
    assert meta["ownerReferences"][0]["uid"] == "uid-1"
    assert meta["ownerReferences"][0]["controller"] is True
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "kvs2-operator"
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["serviceName"] == "orders-peers"
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["selector"] == {"matchLabels": SELECTOR}
    assert SELECTOR.items() <= spec["template"]["metadata"]["labels"].items()


def test_container_runs_kvs2_serve_on_the_pod_ip(body: dict[str, Any]) -> None:
    sts = render_statefulset(parse_store(body))
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "kvs2:test"
    assert container["command"] == ["kvs2", "serve"]
    assert container["ports"] == [
        {"name": "grpc", "containerPort": 50051, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9464, "protocol": "TCP"},
        {"name": "snapshot-data", "containerPort": 50052, "protocol": "TCP"},
    ]
    names = [e["name"] for e in container["env"]]
    # $(POD_IP) only expands if POD_IP is defined earlier in the list.
    assert names.index("POD_IP") < names.index("KVS2_LISTEN")
    env = _env(sts)
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["KVS2_LISTEN"] == "$(POD_IP):50051"
    assert env["KVS2_METRICS_LISTEN"] == "$(POD_IP):9464"  # metrics on in Kubernetes
    # A fixed data-channel port (NetworkPolicy admits it between the store's pods), after POD_IP.
    assert env["KVS2_SNAPSHOT_DATA_LISTEN"] == "$(POD_IP):50052"
    assert names.index("POD_IP") < names.index("KVS2_SNAPSHOT_DATA_LISTEN")
    assert env["KVS2_BOOTSTRAP_SERVERS"] == "kafka-0.test:19092,kafka-1.test:19092"
    assert env["KVS2_TOPIC"] == "shop.orders"
    assert env["KVS2_DATA_DIR"] == "/var/lib/kvs2"
    assert env["KVS2_SHUTDOWN_GRACE"] == "10"
    assert "KVS2_KAFKA_CONFIG" not in env
    assert container["volumeMounts"][0] == {"name": "data", "mountPath": "/var/lib/kvs2"}


def test_probes_readiness_is_grpc_health_liveness_tolerates_catch_up(body: dict[str, Any]) -> None:
    container = render_statefulset(parse_store(body))["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["grpc"] == {"port": 50051}
    assert "tcpSocket" in container["livenessProbe"]
    assert "tcpSocket" in container["startupProbe"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def test_graceful_termination_exceeds_the_data_plane_grace(body: dict[str, Any]) -> None:
    body["spec"]["shutdownGraceSeconds"] = 25
    pod = render_statefulset(parse_store(body))["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 25
    assert _env(render_statefulset(parse_store(body)))["KVS2_SHUTDOWN_GRACE"] == "25"


def test_replicas_spread_across_nodes_softly(body: dict[str, Any]) -> None:
    pod = render_statefulset(parse_store(body))["spec"]["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert anti["podAffinityTerm"]["labelSelector"] == {"matchLabels": SELECTOR}
    spread = pod["topologySpreadConstraints"][-1]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["topologyKey"] == "kubernetes.io/hostname"


def test_volume_claim_template_carries_size_and_class(body: dict[str, Any]) -> None:
    body["spec"]["storage"] = {"size": "5Gi", "storageClassName": "fast"}
    sts = render_statefulset(parse_store(body))
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "5Gi"}},
        "storageClassName": "fast",
    }
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Delete",
        "whenScaled": "Delete",
    }
    assert all(v["name"] != "data" for v in sts["spec"]["template"]["spec"]["volumes"])


def test_ephemeral_storage_uses_empty_dir(body: dict[str, Any]) -> None:
    body["spec"]["storage"] = {"ephemeral": True}
    sts = render_statefulset(parse_store(body))
    assert "volumeClaimTemplates" not in sts["spec"]
    assert sts["spec"]["template"]["spec"]["volumes"][0] == {"name": "data", "emptyDir": {}}


def test_credentials_come_from_the_secret_never_inline(body: dict[str, Any]) -> None:
    body["spec"]["kafka"]["authentication"] = {
        "secretName": "kafka-user",
        "usernameKey": "user",
        "mechanism": "PLAIN",
        "securityProtocol": "SASL_PLAINTEXT",
    }
    env = _env(render_statefulset(parse_store(body)))
    assert env["KVS2_KAFKA_SASL_USERNAME"] == {"secretKeyRef": {"name": "kafka-user", "key": "user"}}
    assert env["KVS2_KAFKA_SASL_PASSWORD"] == {"secretKeyRef": {"name": "kafka-user", "key": "password"}}
    assert env["KVS2_KAFKA_SASL_MECHANISM"] == "PLAIN"
    assert env["KVS2_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"


def test_client_config_is_passed_sorted(body: dict[str, Any]) -> None:
    body["spec"]["kafka"]["clientConfig"] = {"linger.ms": "5", "compression.type": "zstd"}
    env = _env(render_statefulset(parse_store(body)))
    assert env["KVS2_KAFKA_CONFIG"] == "compression.type=zstd,linger.ms=5"


def test_resources_are_copied(body: dict[str, Any]) -> None:
    body["spec"]["resources"] = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    container = render_statefulset(parse_store(body))["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == body["spec"]["resources"]


def test_services(body: dict[str, Any]) -> None:
    store = parse_store(body)
    headless = render_headless_service(store)
    assert headless["metadata"]["name"] == "orders-peers"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"] == SELECTOR
    client = render_client_service(store)
    assert client["metadata"]["name"] == "orders"
    assert client["spec"]["type"] == "ClusterIP"
    assert client["spec"]["selector"] == SELECTOR
    assert client["spec"]["ports"][0]["port"] == 50051
    assert client["spec"]["ports"][0]["targetPort"] == "grpc"
    assert endpoint(store) == "orders.shop.svc:50051"


def test_pdb_defaults_to_max_unavailable_one(body: dict[str, Any]) -> None:
    pdb = render_pdb(parse_store(body))
    assert pdb is not None
    assert (pdb["apiVersion"], pdb["metadata"]["name"]) == ("policy/v1", "orders")
    assert pdb["spec"]["selector"] == {"matchLabels": SELECTOR} and pdb["spec"]["maxUnavailable"] == 1


def test_pdb_min_available_and_disabled(body: dict[str, Any]) -> None:
    body["spec"]["podDisruptionBudget"] = {"minAvailable": "50%"}
    pdb = render_pdb(parse_store(body))
    assert pdb is not None and pdb["spec"]["minAvailable"] == "50%" and "maxUnavailable" not in pdb["spec"]
    body["spec"]["podDisruptionBudget"] = {"enabled": False}
    assert render_pdb(parse_store(body)) is None
    kinds = [c["kind"] for c in render_children(parse_store(body))]
    assert kinds == ["Service", "Service", "StatefulSet"]


def test_children_order_and_selector_string(body: dict[str, Any]) -> None:
    kinds = [c["kind"] for c in render_children(parse_store(body))]
    assert kinds == ["Service", "Service", "StatefulSet", "PodDisruptionBudget"]
    assert selector_string("orders") == "app.kubernetes.io/name=kvs2,app.kubernetes.io/instance=orders"


def _full(body: dict[str, Any]) -> dict[str, Any]:
    """A spec that uses every mapping render copies or joins, so their order could leak into the output."""
    spec = body["spec"]
    spec["kafka"]["clientConfig"] = {"linger.ms": "5", "compression.type": "zstd", "client.id": "orders"}
    spec["kafka"]["authentication"] = {
        "secretName": "kafka-user",
        "usernameKey": "user",
        "mechanism": "PLAIN",
        "securityProtocol": "SASL_PLAINTEXT",
    }
    spec["resources"] = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    spec["storage"] = {"size": "2Gi", "storageClassName": "fast"}
    spec["podDisruptionBudget"] = {"minAvailable": 2}
    return body


def _reversed(value: Any) -> Any:
    """The same document with every mapping's keys in the opposite order (lists keep theirs)."""
    if isinstance(value, dict):
        return {k: _reversed(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed(v) for v in value]
    return value


def test_render_depends_on_the_spec_not_on_the_order_of_its_mappings(body: dict[str, Any]) -> None:
    """The operator re-renders on every event and applies the result: a render that changed with the
    order of the user's mappings would roll every pod (the env list is part of the pod template)."""
    forward = _full(body)
    backward = _reversed(forward)
    assert list(backward["spec"]["kafka"]["clientConfig"]) != list(forward["spec"]["kafka"]["clientConfig"])
    assert render_children(parse_store(backward)) == render_children(parse_store(forward))


_RENDER_SCRIPT = """
import json, sys
from kvs2_operator.model import parse_store
from kvs2_operator.render import render_children
print(json.dumps(render_children(parse_store(json.loads(sys.stdin.read())))))
"""


def test_render_is_the_same_in_every_process(body: dict[str, Any]) -> None:
    """Two operator processes (a restart, a new leader) must render the same bytes: nothing may depend on
    str hashing (set or frozenset iteration), which differs between interpreters."""
    document = json.dumps(_full(body))
    outputs = {
        subprocess.run(
            [sys.executable, "-c", _RENDER_SCRIPT],
            input=document,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert outputs == {json.dumps(render_children(parse_store(json.loads(document)))) + "\n"}


def test_pods_run_as_the_images_unprivileged_user(body: dict[str, Any]) -> None:
    pod = render_statefulset(parse_store(body))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["fsGroup"] == 65532


def test_workers_become_the_data_planes_worker_processes(body: dict[str, Any]) -> None:
    assert _env(render_statefulset(parse_store(body)))["KVS2_WORKERS"] == "1"
    body["spec"]["workers"] = 4
    assert _env(render_statefulset(parse_store(body)))["KVS2_WORKERS"] == "4"
