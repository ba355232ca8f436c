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

from kvs2_operator import grpc_tls, protection
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
from kvs2_operator.kafka_security import pod_parts
from kvs2_operator.model import DEFAULT_RESOURCES, Store

CONTAINER_NAME = "kvs2"
VOLUME_NAME = "data"
TMP_VOLUME_NAME = "tmp"
HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"
ZONE_TOPOLOGY_KEY = "topology.kubernetes.io/zone"
#: Pod annotation carrying a hash of the credentials Secret's keys: a changed Secret rolls the pods.
CREDENTIALS_HASH_ANNOTATION = "kvs2.io/credentials-hash"
#: Seconds beyond the data plane's own shutdown grace before the kubelet sends SIGKILL.
TERMINATION_MARGIN_SECONDS = 10
#: Where each replica serves Prometheus metrics (`kvs2 serve --metrics-listen`), named "metrics" on the pod
#: and on the headless Service so a PodMonitor/ServiceMonitor selects it by name.
METRICS_PORT = 9464
#: Where each replica sends snapshots' data bytes to a bootstrapping peer (`kvs2 serve
#: --snapshot-data-listen`, kvs2.datachannel): a fixed port, so that the NetworkPolicy can admit it
#: between the store's own pods (the port travels in the Snapshot RPC; nothing else dials it).
SNAPSHOT_DATA_PORT = 50052


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
        {"name": "KVS2_BOOTSTRAP_PEERS", "value": bootstrap_peers(store)},
        {"name": "KVS2_METRICS_LISTEN", "value": f"$(POD_IP):{METRICS_PORT}"},
        {"name": "KVS2_SNAPSHOT_DATA_LISTEN", "value": f"$(POD_IP):{SNAPSHOT_DATA_PORT}"},
    ]
    if spec.redis.enabled:
        env.append({"name": "KVS2_REDIS_LISTEN", "value": f"$(POD_IP):{spec.redis.port}"})
        env += grpc_tls.redis_users_parts(spec.redis.users_secret)[0]
    if kafka.client_config:
        joined = ",".join(f"{k}={v}" for k, v in sorted(kafka.client_config.items()))
        env.append({"name": "KVS2_KAFKA_CONFIG", "value": joined})
    env += pod_parts(kafka.tls, kafka.sasl)[0] + grpc_tls.pod_parts(spec.tls)[0]
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


def bootstrap_peers(store: Store) -> str:
    """The headless Service's name: it resolves to every replica's pod address (ready or not), which a
    new or rebuilt replica asks in turn for a snapshot instead of replaying the topic (kvs2.bootstrap
    expands the name and skips itself). One name, not one per pod: scaling must not change the pod
    template, or every replica would be restarted."""
    return f"{headless_service_name(store.name)}.{store.namespace}.svc:{GRPC_PORT}"


def _container(store: Store) -> dict[str, Any]:
    spec = store.spec
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["kvs2", "serve"],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            *grpc_tls.pod_parts(spec.tls)[3],
            *(
                [{"name": "redis", "containerPort": spec.redis.port, "protocol": "TCP"}]
                if spec.redis.enabled
                else []
            ),
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "snapshot-data", "containerPort": SNAPSHOT_DATA_PORT, "protocol": "TCP"},
        ],
        "env": container_env(store),
        "volumeMounts": [
            {"name": VOLUME_NAME, "mountPath": DATA_DIR},
            *pod_parts(spec.kafka.tls, spec.kafka.sasl)[2],
            *grpc_tls.pod_parts(spec.tls)[2],
            *grpc_tls.redis_users_parts(spec.redis.users_secret if spec.redis.enabled else None)[2],
            {"name": TMP_VOLUME_NAME, "mountPath": "/tmp"},
        ],
        # Pod Security "restricted": nothing to escalate to, no capabilities, an immutable image.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "readinessProbe": {
            "grpc": {"port": grpc_tls.probe_port(spec.tls, GRPC_PORT)},
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
    # Requests by default, so a replica is never BestEffort (first to be evicted under memory pressure).
    container["resources"] = dict(spec.resources) if spec.resources else dict(DEFAULT_RESOURCES)
    return container


def _pod_security_context(store: Store) -> dict[str, Any]:
    """Pod Security "restricted" without hard-coding a UID: the image's numeric USER (65532) runs, and a
    platform that assigns UIDs (OpenShift's restricted-v2) may. fsGroup makes volumes writable for the
    image's group; the operator omits it where the platform assigns one (`--pod-fs-group ''`)."""
    context: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if store.spec.fs_group is not None:
        context["fsGroup"] = store.spec.fs_group
        context["fsGroupChangePolicy"] = "OnRootMismatch"
    return context


def _default_spread(selector: dict[str, Any]) -> list[dict[str, Any]]:
    """Replicas spread over zones, then nodes — soft, so a one-node or zone-less cluster schedules all."""
    return [
        {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": selector}
        for key in (ZONE_TOPOLOGY_KEY, HOSTNAME_TOPOLOGY_KEY)
    ]


def _pod_spec(store: Store) -> dict[str, Any]:
    selector = {"matchLabels": selector_labels(store.name)}
    knobs = store.spec.pod
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": store.spec.shutdown_grace_seconds + TERMINATION_MARGIN_SECONDS,
        "enableServiceLinks": False,
        # A replica never talks to the Kubernetes API: no token in its filesystem.
        "automountServiceAccountToken": False,
        "securityContext": _pod_security_context(store),
        "containers": [_container(store)],
        "affinity": dict(knobs.affinity)
        if knobs.affinity is not None
        else {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {"topologyKey": HOSTNAME_TOPOLOGY_KEY, "labelSelector": selector},
                    }
                ]
            }
        },
        "topologySpreadConstraints": [dict(c) for c in knobs.topology_spread_constraints]
        if knobs.topology_spread_constraints is not None
        else _default_spread(selector),
    }
    if knobs.node_selector:
        pod["nodeSelector"] = dict(knobs.node_selector)
    if knobs.tolerations:
        pod["tolerations"] = [dict(t) for t in knobs.tolerations]
    if knobs.priority_class_name:
        pod["priorityClassName"] = knobs.priority_class_name
    if knobs.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in knobs.image_pull_secrets]
    if knobs.service_account_name:
        pod["serviceAccountName"] = knobs.service_account_name
    volumes: list[dict[str, Any]] = [{"name": TMP_VOLUME_NAME, "emptyDir": {}}]
    if store.spec.storage.ephemeral:
        volumes.insert(0, {"name": VOLUME_NAME, "emptyDir": {}})
    volumes += (
        pod_parts(store.spec.kafka.tls, store.spec.kafka.sasl)[1] + grpc_tls.pod_parts(store.spec.tls)[1]
    )
    redis = store.spec.redis
    volumes += grpc_tls.redis_users_parts(redis.users_secret if redis.enabled else None)[1]
    pod["volumes"] = volumes
    return pod


def _pod_metadata(store: Store, credentials_hash: str | None) -> dict[str, Any]:
    knobs = store.spec.pod
    metadata: dict[str, Any] = {"labels": {**knobs.labels, **common_labels(store.name)}}
    annotations = dict(knobs.annotations)
    if credentials_hash:
        annotations[CREDENTIALS_HASH_ANNOTATION] = credentials_hash
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def render_statefulset(store: Store, credentials_hash: str | None = None) -> dict[str, Any]:
    """`credentials_hash`: a digest of the credentials Secret's data; when it changes the pods roll."""
    storage = store.spec.storage
    spec: dict[str, Any] = {
        "replicas": store.spec.replicas,
        "serviceName": headless_service_name(store.name),
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate"},
        "selector": {"matchLabels": selector_labels(store.name)},
        "template": {"metadata": _pod_metadata(store, credentials_hash), "spec": _pod_spec(store)},
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
        spec["persistentVolumeClaimRetentionPolicy"] = {
            "whenDeleted": "Delete",
            "whenScaled": store.spec.pvc_retention_on_scale_down,
        }
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


def _ports(store: Store) -> list[dict[str, Any]]:
    """gRPC, and the Redis protocol when `spec.redis.enabled`."""
    if not store.spec.redis.enabled:
        return [_grpc_port()]
    redis = {"name": "redis", "port": store.spec.redis.port, "targetPort": "redis", "protocol": "TCP"}
    return [_grpc_port(), redis]


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
            "ports": [*_ports(store), {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}],
        },
    }


def render_client_service(store: Store) -> dict[str, Any]:
    """The Service clients dial: only ready (caught-up) replicas are behind it."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(store, client_service_name(store.name)),
        "spec": {"type": "ClusterIP", "selector": selector_labels(store.name), "ports": _ports(store)},
    }


def render_pdb(store: Store) -> dict[str, Any] | None:
    """None when disabled: the reconciler then deletes a PDB it created earlier."""
    pdb = store.spec.pdb
    if not pdb.enabled:
        return None
    # AlwaysAllow: a replica that is not ready (crash-looping, catching up) may always be evicted — it serves
    # nothing, and a drain must not hang on it.
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(store.name)},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
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


def render_children(store: Store, credentials_hash: str | None = None) -> list[dict[str, Any]]:
    """Every child in apply order: the Certificate first (its Secret is what the pods mount), Services
    before the StatefulSet so its serviceName exists."""
    children = [
        *render_protection(store),
        render_headless_service(store),
        render_client_service(store),
        render_statefulset(store, credentials_hash),
    ]
    pdb = render_pdb(store)
    if pdb is not None:
        children.append(pdb)
    return children


def render_protection(store: Store) -> list[dict[str, Any]]:
    """spec.tls.certManager's Certificate and spec.networkPolicy's NetworkPolicy (see protection.py)."""
    spec, out = store.spec, []
    if spec.tls is not None and spec.tls.cert_manager is not None:
        metadata = _metadata(store, store.name)
        out.append(
            protection.render_certificate(
                store.name, store.namespace, metadata, spec.tls.secret_name, spec.tls.cert_manager
            )
        )
    if spec.network_policy is not None:
        ports = {"grpc": GRPC_PORT, "metrics": METRICS_PORT, "snapshot-data": SNAPSHOT_DATA_PORT}
        if spec.redis.enabled:
            ports["redis"] = spec.redis.port
        out.append(
            protection.render_network_policy(
                store.name,
                _metadata(store, store.name),
                selector_labels(store.name),
                spec.network_policy,
                ports,
            )
        )
    return out
