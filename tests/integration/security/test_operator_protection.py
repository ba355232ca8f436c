"""The operator's protection objects on the real API server: a cert-manager Certificate for spec.tls
.certManager (first without cert-manager — a clear CertManagerMissing — then with its Certificate CRD
installed from tests/fixtures; the test writes the Secret, as cert-manager would), a NetworkPolicy for
spec.networkPolicy (checked as an API object: the process kubelet of the e2e tests has no CNI plugin
that enforces NetworkPolicy), and both deleted when the spec stops asking for them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster
from tests.harness.common import ManagedProcess, repo_root
from tests.harness.kafka import KafkaBroker
from tests.harness.pki import CertificateAuthority
from tests.integration.operator.conftest import Stores, store_manifest

CERT_CRD = repo_root() / "tests" / "fixtures" / "cert-manager" / "certificate-crd.yaml"


@pytest.fixture
def cert_manager_crd(cluster: Cluster) -> Iterator[Path]:
    """cert-manager's Certificate kind, served for this test only (other tests see a cluster without it)."""
    yield CERT_CRD
    cluster.kubectl("delete", "-f", str(CERT_CRD), "--ignore-not-found", "--wait=true", check=False)


def test_cert_manager_certificate_missing_then_created(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess, cluster: Cluster, cert_manager_crd: Path
) -> None:
    issuer = {"issuerRef": {"name": "kvs2-ca", "kind": "ClusterIssuer"}}
    stores.apply(store_manifest(
        "certs", kafka.bootstrap_servers, replicas=0, tls={"secretName": "certs-tls", "certManager": issuer},
    ))  # fmt: skip
    missing = stores.wait_condition("certs", "Ready", "False", reason="CertManagerMissing", timeout=90)
    assert "cert-manager.io/v1 Certificate" in missing["message"]
    assert "certs-tls" in missing["message"]

    cluster.kubectl("apply", "-f", str(cert_manager_crd))
    cluster.kubectl("wait", "--for=condition=Established", "-f", str(cert_manager_crd), "--timeout=60s")
    cert = stores.wait("the Certificate", lambda: stores.get("certificates.cert-manager.io", "certs-tls"), 90)
    store = stores.get("kvs", "certs")
    assert store is not None
    assert cert["metadata"]["ownerReferences"][0]["uid"] == store["metadata"]["uid"]
    assert cert["spec"]["secretName"] == "certs-tls"
    assert cert["spec"]["issuerRef"]["name"] == "kvs2-ca"
    ns = stores.namespace
    assert {"certs", f"certs.{ns}.svc", f"certs-peers.{ns}.svc", f"*.certs-peers.{ns}.svc"} <= set(
        cert["spec"]["dnsNames"]
    )
    # Act as cert-manager: write the Secret the Certificate names; the store's pods mount it.
    ca = CertificateAuthority("issuer CA")
    leaf = ca.issue("certs", dns=tuple(cert["spec"]["dnsNames"]))
    stores.apply({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "certs-tls"},
        "stringData": {"tls.crt": leaf.cert_pem.decode(), "tls.key": leaf.key_pem.decode(),
                       "ca.crt": ca.cert_pem.decode()},
    })  # fmt: skip
    stores.wait_condition("certs", "WorkloadReady", "True", timeout=90)  # replicas: 0: the children exist
    sts = stores.get("statefulset", "certs")
    assert sts is not None
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["grpc-tls"]["secret"]["secretName"] == "certs-tls"

    body = stores.get("kvs", "certs")
    assert body is not None
    spec = body["spec"]
    spec["tls"] = {"secretName": "certs-tls"}  # the Secret is now managed by hand
    stores.apply({"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": {"name": "certs"},
                  "spec": spec})  # fmt: skip
    stores.wait(
        "the Certificate to be deleted",
        lambda: stores.get("certificates.cert-manager.io", "certs-tls") is None,
    )


def _key(peers: object) -> str:
    return json.dumps(peers, sort_keys=True)


def test_network_policy_admits_peers_and_the_given_clients(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    clients = {"podSelector": {"matchLabels": {"role": "kvs2-client"}}}
    scrapers = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    manifest = store_manifest(
        "fenced",
        kafka.bootstrap_servers,
        replicas=0,
        redis={"enabled": True, "port": 6380},
        networkPolicy={"allowFrom": [clients], "metricsFrom": [scrapers]},
    )
    stores.apply(manifest)
    policy = stores.wait("the NetworkPolicy", lambda: stores.get("networkpolicy", "fenced"), 90)
    spec = policy["spec"]
    pods = {"app.kubernetes.io/name": "kvs2", "app.kubernetes.io/instance": "fenced"}
    assert spec["podSelector"]["matchLabels"] == pods
    assert spec["policyTypes"] == ["Ingress"]
    by_source = {_key(rule["from"]): sorted(p["port"] for p in rule["ports"]) for rule in spec["ingress"]}
    assert by_source == {
        _key([{"podSelector": {"matchLabels": pods}}]): [50051, 50052],
        _key([clients]): [6380, 50051],
        _key([scrapers]): [9464],
    }
    del manifest["spec"]["networkPolicy"]
    stores.apply(manifest)
    stores.wait("the NetworkPolicy to be deleted", lambda: stores.get("networkpolicy", "fenced") is None, 90)
