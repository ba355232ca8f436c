"""A store's network-facing protection objects: a cert-manager `Certificate` and a `NetworkPolicy`.

`spec.tls.certManager.issuerRef` → a `Certificate` (cert-manager.io/v1) whose Secret is `spec.tls.secretName`
— the Secret the pods already mount — and whose dnsNames are every name a client or a peer dials: the client
Service and the headless Service (short, namespaced, `.svc`, `.svc.cluster.local`) and each pod's name under
the headless Service (a wildcard). Usages include client auth because replicas dial each other (snapshot
bootstrap). cert-manager renews the Secret in place; replicas pick the new files up per connection. When the
cluster does not serve the Certificate kind (cert-manager absent), applying it answers 404: the pass reports
`CertManagerMissing` and retries, and nothing else of the store is touched until it can be created (the pods
would only wait for a Secret nobody writes).

`spec.networkPolicy` → a NetworkPolicy selecting the store's pods and admitting, on the ports that exist:
- the store's own pods on gRPC and the snapshot data port (peers send each other snapshots);
- `allowFrom` (NetworkPolicyPeer objects as Kubernetes defines them: podSelector, namespaceSelector,
  ipBlock) on gRPC and, when enabled, the Redis port;
- the operator's namespace on the metrics port (it reads each pod's phase and lag there), and `metricsFrom`
  (e.g. Prometheus's namespace); nobody else.
The kubelet's probes (health port) come from the node, which NetworkPolicy implementations let through.
Enforcement is the CNI plugin's job: without a NetworkPolicy-capable plugin the object has no effect.

Both objects are owned by the store (garbage-collected with it) and deleted by `prune` when the spec stops
asking for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvs2_operator.crd import client_service_name, headless_service_name
from kvs2_operator.errors import KubernetesNotFoundError, Reason, SpecError, TransientError
from kvs2_operator.kube import KubeApi, Ref

CERTIFICATE_API = "cert-manager.io/v1"
NETWORK_POLICY_API = "networking.k8s.io/v1"
PEER_KEYS = ("podSelector", "namespaceSelector", "ipBlock")
ISSUER_KINDS = ("Issuer", "ClusterIssuer")


class CertManagerMissingError(TransientError):
    """spec.tls.certManager, but the cluster does not serve cert-manager's Certificate kind."""

    reason = Reason.CERT_MANAGER_MISSING


# Set by Kubernetes on every namespace (since 1.22): selects one namespace by name.
NAMESPACE_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class IssuerRef:
    name: str
    kind: str = "Issuer"
    group: str = "cert-manager.io"


@dataclass(frozen=True)
class NetworkPolicySpec:
    allow_from: tuple[Mapping[str, Any], ...] = ()
    metrics_from: tuple[Mapping[str, Any], ...] = ()
    operator_namespace: str | None = None  # admitted to the metrics port (the operator reads it)


def parse_issuer_ref(raw: Any) -> IssuerRef | None:
    """spec.tls.certManager → its issuerRef, or None without certManager."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("issuerRef"), Mapping):
        raise SpecError("spec.tls.certManager must be an object with issuerRef: {name, kind, group}")
    ref = raw["issuerRef"]
    name, kind, group = ref.get("name"), ref.get("kind", "Issuer"), ref.get("group", "cert-manager.io")
    if not isinstance(name, str) or not name:
        raise SpecError(f"spec.tls.certManager.issuerRef.name must be a non-empty string, got {name!r}")
    if kind not in ISSUER_KINDS and group == "cert-manager.io":
        raise SpecError(f"spec.tls.certManager.issuerRef.kind must be Issuer or ClusterIssuer, got {kind!r}")
    if not isinstance(kind, str) or not isinstance(group, str) or not kind or not group:
        raise SpecError("spec.tls.certManager.issuerRef.kind and .group must be non-empty strings")
    return IssuerRef(name, kind, group)


def _peers(raw: Any, where: str) -> tuple[Mapping[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(
            f"{where} must be a list of NetworkPolicy peers (podSelector/namespaceSelector/ipBlock)"
        )
    for i, peer in enumerate(raw):
        if not isinstance(peer, Mapping) or not peer or any(k not in PEER_KEYS for k in peer):
            raise SpecError(
                f"{where}[{i}] must be an object with podSelector, namespaceSelector and/or ipBlock, "
                f"got {peer!r}"
            )
    return tuple(dict(p) for p in raw)


def parse_network_policy(raw: Any, operator_namespace: str | None = None) -> NetworkPolicySpec | None:
    """spec.networkPolicy → NetworkPolicySpec, or None (no NetworkPolicy)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError(f"spec.networkPolicy must be an object, got {type(raw).__name__}")
    return NetworkPolicySpec(
        allow_from=_peers(raw.get("allowFrom"), "spec.networkPolicy.allowFrom"),
        metrics_from=_peers(raw.get("metricsFrom"), "spec.networkPolicy.metricsFrom"),
        operator_namespace=operator_namespace,
    )


def certificate_name(store: str) -> str:
    return f"{store}-tls"


def network_policy_name(store: str) -> str:
    return store


def dns_names(store: str, namespace: str) -> list[str]:
    """Every name a client or peer dials: both Services in all their forms, and each pod's name under the
    headless one."""
    names: list[str] = []
    for service in (client_service_name(store), headless_service_name(store)):
        base = f"{service}.{namespace}"
        names += [service, base, f"{base}.svc", f"{base}.svc.cluster.local"]
    headless = f"{headless_service_name(store)}.{namespace}.svc"
    names += [f"*.{headless}", f"*.{headless}.cluster.local"]
    return names


def render_certificate(
    store: str, namespace: str, metadata: Mapping[str, Any], secret_name: str, issuer: IssuerRef
) -> dict[str, Any]:
    return {
        "apiVersion": CERTIFICATE_API,
        "kind": "Certificate",
        "metadata": {**metadata, "name": certificate_name(store)},
        "spec": {
            "secretName": secret_name,
            "dnsNames": dns_names(store, namespace),
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        },
    }


def render_network_policy(
    store: str,
    metadata: Mapping[str, Any],
    pod_labels: Mapping[str, str],
    policy: NetworkPolicySpec,
    ports: Mapping[str, int],
) -> dict[str, Any]:
    """`ports`: name → number of grpc, redis (if enabled), metrics and snapshot-data (the store's own pods
    send each other snapshots' data on it, kvs2.datachannel)."""

    def tcp(*names: str) -> list[dict[str, Any]]:
        return [{"protocol": "TCP", "port": ports[n]} for n in names if n in ports]

    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": dict(pod_labels)}}], "ports": tcp("grpc", "snapshot-data")}
    ]
    if policy.allow_from:
        ingress.append({"from": [dict(p) for p in policy.allow_from], "ports": tcp("grpc", "redis")})
    if policy.operator_namespace:
        operator = {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: policy.operator_namespace}}}
        ingress.append({"from": [operator], "ports": tcp("metrics")})
    if policy.metrics_from:
        ingress.append({"from": [dict(p) for p in policy.metrics_from], "ports": tcp("metrics")})
    return {
        "apiVersion": NETWORK_POLICY_API,
        "kind": "NetworkPolicy",
        "metadata": {**metadata, "name": network_policy_name(store)},
        "spec": {
            "podSelector": {"matchLabels": dict(pod_labels)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


async def apply_certificate(kube: KubeApi, certificate: Mapping[str, Any]) -> dict[str, Any]:
    """Apply; a 404 means the Certificate kind is not served: cert-manager is not installed."""
    try:
        return await kube.apply(certificate)
    except KubernetesNotFoundError as exc:
        meta = certificate["metadata"]
        raise CertManagerMissingError(
            f"spec.tls.certManager needs cert-manager: this cluster does not serve {CERTIFICATE_API} "
            f"Certificate, so Certificate {meta['namespace']}/{meta['name']} (for Secret "
            f"{certificate['spec']['secretName']}) cannot be created. Install cert-manager, or create the "
            "kubernetes.io/tls Secret yourself and remove spec.tls.certManager"
        ) from exc


async def prune(kube: KubeApi, namespace: str, store: str, owner_uid: str, wanted: set[str]) -> None:
    """Delete this store's Certificate / NetworkPolicy when the spec no longer asks for it (`wanted`:
    the kinds rendered this pass). Only objects the store owns; an unserved kind counts as absent."""
    for api, kind, name in (
        (CERTIFICATE_API, "Certificate", certificate_name(store)),
        (NETWORK_POLICY_API, "NetworkPolicy", network_policy_name(store)),
    ):
        if kind in wanted:
            continue
        ref = Ref(api, kind, namespace, name)
        try:
            existing = await kube.get(ref)
        except KubernetesNotFoundError:
            continue
        owners = (existing or {}).get("metadata", {}).get("ownerReferences") or ()
        if any(o.get("uid") == owner_uid for o in owners):
            await kube.delete(ref)
