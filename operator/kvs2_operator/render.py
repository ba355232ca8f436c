"""Pure functions: a parsed KeyValueStore → the manifests of its children.

Nothing here talks to an API; everything is a function of the `Store`, so the whole shape of the
workload is unit-tested byte for byte. The manifests are server-side-apply intents: they contain only
the fields the operator has an opinion on, so server defaults never look like drift.

Choices worth knowing:
- `kvs2 serve` is configured through env vars only (every flag has one, see notes/serve-contract.md),
  so the command line stays fixed and the pod spec diff of a change reads like the change.
- The replica listens on `$(POD_IP):50051` (downward API), i.e. on the address Services and probes use.
- Readiness is the native gRPC probe on the health service: NOT_SERVING until the replica has caught
  up with the topic, so a Service never sends reads to a replica that is behind. Liveness and startup
  use a TCP check on purpose: a replica catching up on a big topic is NOT_SERVING for a long time and
  must not be killed for it; the TCP check still catches a process that stopped accepting connections.
- Pod management is Parallel: replicas are independent full copies, there is no start order to keep.
- Replicas prefer distinct nodes (anti-affinity + topology spread, both soft so a one-node cluster
  still schedules every replica).
- PVCs are deleted with the StatefulSet and on scale-down: a replica is a cache of the topic and
  rebuilds from Kafka, keeping stale LMDB files would only waste space.
"""

from __future__ import annotations

from typing import Any

from kvs2_operator.crd import (
    APP_NAME,
    DATA_DIR,
    FIELD_MANAGER,
    GRPC_PORT,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    client_service_name,
    headless_service_name,
    pdb_name,
    statefulset_name,
)
from kvs2_operator.model import Store

CONTAINER_NAME = "kvs2"
VOLUME_NAME = "data"
HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"
#: Seconds beyond the data plane's own shutdown grace before the kubelet sends SIGKILL.
TERMINATION_MARGIN_SECONDS = 10
#: Where each replica serves Prometheus metrics (`kvs2 serve --metrics-listen`), named "metrics" on the pod
#: and on the headless Service so a PodMonitor/ServiceMonitor selects it by name.
METRICS_PORT = 9464


def selector_labels(store_name: str) -> dict[str, str]:
    """The labels that select a store's pods (also its scale subresource's selector)."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: store_name}


def selector_string(store_name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(store_name).items())


def common_labels(store_name: str) -> dict[str, str]:
    return {**selector_labels(store_name), LABEL_COMPONENT: "store", LABEL_MANAGED_BY: FIELD_MANAGER}


def endpoint(store: Store) -> str:
    return f"{client_service_name(store.name)}.{store.namespace}.svc:{GRPC_PORT}"


def _metadata(store: Store, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": store.namespace,
        "labels": common_labels(store.name),
        "ownerReferences": [store.ref.owner_reference()],
    }


def container_env(store: Store) -> list[dict[str, Any]]:
    spec = store.spec
    kafka = spec.kafka
    env: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "KVS2_LISTEN", "value": f"$(POD_IP):{GRPC_PORT}"},
        {"name": "KVS2_BOOTSTRAP_SERVERS", "value": kafka.bootstrap_servers},
        {"name": "KVS2_TOPIC", "value": kafka.topic.name},
        {"name": "KVS2_DATA_DIR", "value": DATA_DIR},
        {"name": "KVS2_LOG_LEVEL", "value": spec.log_level},
        {"name": "KVS2_SHUTDOWN_GRACE", "value": str(spec.shutdown_grace_seconds)},
        {"name": "KVS2_WORKERS", "value": str(spec.workers)},
        {"name": "KVS2_METRICS_LISTEN", "value": f"$(POD_IP):{METRICS_PORT}"},
    ]
    if kafka.client_config:
        joined = ",".join(f"{k}={v}" for k, v in sorted(kafka.client_config.items()))
        env.append({"name": "KVS2_KAFKA_CONFIG", "value": joined})
    auth = kafka.authentication
    if auth is not None:
        env += [
            {"name": "KVS2_KAFKA_SECURITY_PROTOCOL", "value": auth.security_protocol},
            {"name": "KVS2_KAFKA_SASL_MECHANISM", "value": auth.mechanism},
            {
                "name": "KVS2_KAFKA_SASL_USERNAME",
                "valueFrom": {"secretKeyRef": {"name": auth.secret_name, "key": auth.username_key}},
            },
            {
                "name": "KVS2_KAFKA_SASL_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": auth.secret_name, "key": auth.password_key}},
            },
        ]
    return env


def _container(store: Store) -> dict[str, Any]:
    spec = store.spec
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["kvs2", "serve"],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": container_env(store),
        "volumeMounts": [{"name": VOLUME_NAME, "mountPath": DATA_DIR}],
        "readinessProbe": {
            "grpc": {"port": GRPC_PORT},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "startupProbe": {
            "tcpSocket": {"port": GRPC_PORT},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 90,
        },
        "livenessProbe": {
            "tcpSocket": {"port": GRPC_PORT},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
    }
    if spec.resources:
        container["resources"] = dict(spec.resources)
    return container


IMAGE_UID = 65532  # the `kvs2` user of the Dockerfile


def _pod_spec(store: Store) -> dict[str, Any]:
    selector = {"matchLabels": selector_labels(store.name)}
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": store.spec.shutdown_grace_seconds + TERMINATION_MARGIN_SECONDS,
        "enableServiceLinks": False,
        # The image runs as the unprivileged user 65532 (Dockerfile); fsGroup makes the volume writable
        # for it on real clusters.
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
        },
        "containers": [_container(store)],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {"topologyKey": HOSTNAME_TOPOLOGY_KEY, "labelSelector": selector},
                    }
                ]
            }
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": HOSTNAME_TOPOLOGY_KEY,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": selector,
            }
        ],
    }
    if store.spec.storage.ephemeral:
        pod["volumes"] = [{"name": VOLUME_NAME, "emptyDir": {}}]
    return pod


def render_statefulset(store: Store) -> dict[str, Any]:
    storage = store.spec.storage
    spec: dict[str, Any] = {
        "replicas": store.spec.replicas,
        "serviceName": headless_service_name(store.name),
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate"},
        "selector": {"matchLabels": selector_labels(store.name)},
        "template": {"metadata": {"labels": common_labels(store.name)}, "spec": _pod_spec(store)},
    }
    if not storage.ephemeral:
        claim_spec: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": storage.size}},
        }
        if storage.storage_class_name is not None:
            claim_spec["storageClassName"] = storage.storage_class_name
        spec["volumeClaimTemplates"] = [
            {"metadata": {"name": VOLUME_NAME, "labels": selector_labels(store.name)}, "spec": claim_spec}
        ]
        spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Delete", "whenScaled": "Delete"}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(store, statefulset_name(store.name)),
        "spec": spec,
    }


def _grpc_port() -> dict[str, Any]:
    return {
        "name": "grpc",
        "port": GRPC_PORT,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "kubernetes.io/h2c",
    }


def render_headless_service(store: Store) -> dict[str, Any]:
    """The StatefulSet's governing Service: per-pod DNS, not-ready pods published (peers, debugging)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(store, headless_service_name(store.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(store.name),
            "ports": [_grpc_port(), {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}],
        },
    }


def render_client_service(store: Store) -> dict[str, Any]:
    """The Service clients dial: only ready (caught-up) replicas are behind it."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(store, client_service_name(store.name)),
        "spec": {"type": "ClusterIP", "selector": selector_labels(store.name), "ports": [_grpc_port()]},
    }


def render_pdb(store: Store) -> dict[str, Any] | None:
    """None when disabled: the reconciler then deletes a PDB it created earlier."""
    pdb = store.spec.pdb
    if not pdb.enabled:
        return None
    spec: dict[str, Any] = {"selector": {"matchLabels": selector_labels(store.name)}}
    if pdb.min_available is not None:
        spec["minAvailable"] = pdb.min_available
    else:
        spec["maxUnavailable"] = pdb.max_unavailable if pdb.max_unavailable is not None else 1
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(store, pdb_name(store.name)),
        "spec": spec,
    }


def render_children(store: Store) -> list[dict[str, Any]]:
    """Every child in apply order: Services first so the StatefulSet's serviceName exists."""
    children = [render_headless_service(store), render_client_service(store), render_statefulset(store)]
    pdb = render_pdb(store)
    if pdb is not None:
        children.append(pdb)
    return children
