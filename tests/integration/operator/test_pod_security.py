"""Pod Security "restricted" and honest status, judged by the real API server's admission.

Every pod the operator or the chart creates is created (server-side dry run, so admission runs in full)
in a namespace that enforces `restricted`; a pod that would fail the profile proves the check can fail.
A namespace whose ResourceQuota forbids pods shows that the StatefulSet controller's FailedCreate
reason reaches the store's Ready message."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kvs2_operator import render
from kvs2_operator.model import OperatorDefaults, parse_store

from tests.harness.cluster import Cluster
from tests.harness.common import ManagedProcess, repo_root
from tests.harness.kafka import KafkaBroker

from .conftest import Stores, store_manifest

DEPLOY = repo_root() / "deploy"
CHART = repo_root() / "charts" / "kvs2"


def _restrict(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )


def _as_pod(name: str, template: dict[str, Any]) -> dict[str, Any]:
    """A Pod from a pod template, made creatable in a bare namespace without changing what PodSecurity
    judges: the namespace's `default` ServiceAccount, and a PVC volume where a StatefulSet's volume claim
    template would have provided one."""
    spec = {**template["spec"], "serviceAccountName": "default"}
    volumes = list(spec.get("volumes") or ())
    mounted = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts") or ()}
    for missing in sorted(mounted - {v["name"] for v in volumes}):
        volumes.append({"name": missing, "persistentVolumeClaim": {"claimName": f"{missing}-{name}"}})
    if volumes:
        spec["volumes"] = volumes
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template.get("metadata", {}).get("labels", {})},
        "spec": spec,
    }


def _dry_run(stores: Stores, pod: dict[str, Any]) -> tuple[int, str]:
    result = stores.cluster.kubectl(
        "-n",
        stores.namespace,
        "create",
        "--dry-run=server",
        "-f",
        "-",
        input=yaml.safe_dump(pod),
        check=False,
    )
    return result.returncode, result.stderr + result.stdout


def _chart_pods(helm: Path) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [str(helm), "template", "kvs2", str(CHART), "--kube-version", "1.37.2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pods = []
    for doc in yaml.safe_load_all(rendered):
        if doc and doc["kind"] == "Deployment":
            pods.append(_as_pod("chart-operator", doc["spec"]["template"]))
        elif doc and doc["kind"] == "Pod":
            pods.append(_as_pod("chart-test", doc))
    return pods


def test_every_pod_the_operator_or_the_chart_creates_passes_restricted(
    cluster: Cluster, stores: Stores, helm_binary: Path
) -> None:
    _restrict(cluster, stores.namespace)
    stores.wait("the namespace's default ServiceAccount", lambda: stores.get("serviceaccount", "default"))
    body = store_manifest("hardened", "127.0.0.1:9")
    body["metadata"].update(namespace=stores.namespace, uid="u", generation=1)
    pods = []
    for label, spec in (
        ("store", {}),
        ("store-ephemeral-auth", {"storage": {"ephemeral": True}, "kafka": {
            **body["spec"]["kafka"], "authentication": {"secretName": "creds"}}}),
    ):  # fmt: skip
        variant = {**body, "spec": {**body["spec"], **spec}}
        store = parse_store(variant, OperatorDefaults(image="kvs2:test"))
        pods.append(_as_pod(label, render.render_statefulset(store)["spec"]["template"]))
    operator = next(
        d for d in yaml.safe_load_all((DEPLOY / "20-operator.yaml").read_text()) if d["kind"] == "Deployment"
    )
    pods.append(_as_pod("deploy-operator", operator["spec"]["template"]))
    pods += _chart_pods(helm_binary)
    assert len(pods) == 5
    for pod in pods:
        code, output = _dry_run(stores, pod)
        assert code == 0, f"{pod['metadata']['name']}: {output}"
    # The check can fail: today's pods without seccompProfile and capabilities were rejected.
    weak = _as_pod("weak", pods[0])
    weak["spec"] = {**pods[0]["spec"], "securityContext": {"runAsNonRoot": True}}
    code, output = _dry_run(stores, weak)
    assert code != 0 and 'violates PodSecurity "restricted:latest"' in output, output


def test_the_deploy_namespace_enforces_restricted() -> None:
    namespace = next(
        d for d in yaml.safe_load_all((DEPLOY / "10-rbac.yaml").read_text()) if d["kind"] == "Namespace"
    )
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_failed_pod_creation_is_quoted_in_the_ready_message(
    cluster: Cluster, stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-pods"},
        "spec": {"hard": {"pods": "0"}},
    }
    stores.apply(quota)
    stores.wait(
        "the quota's status",
        lambda: ((stores.get("resourcequota", "no-pods") or {}).get("status") or {}).get("hard"),
    )
    stores.apply(store_manifest("starved", kafka.bootstrap_servers))
    ready = stores.wait(
        "Ready quoting the StatefulSet controller",
        lambda: (
            (c := stores.condition("starved", "Ready")).get("reason") == "ReplicasNotReady"
            and "cannot create pods" in c.get("message", "")
            and c
        ),
    )
    assert "exceeded quota" in ready["message"] and "no-pods" in ready["message"], ready


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("podDisruptionBudget", "maxUnavailable"), -1, "greater than or equal to 0"),
        (("resources", "requests", "memory"), "lots", "should match"),
        (("kafka", "clientConfig"), {"acks": "1"}, "cannot override bootstrap.servers, acks"),
        (("kafka", "clientConfig"), {"sasl.password": "x"}, "nor credentials"),
        (("kafka", "clientConfig"), {"max.in.flight.requests.per.connection": "5"}, "cannot override"),
        (("kafka", "clientConfig"), {"allow.auto.create.topics": "true"}, "cannot override"),
        (("kafka", "topic", "config"), {"min.insync.replicas": "2"}, "between 1 and"),
    ],
)
def test_more_invalid_specs_are_rejected_by_the_api_server(
    stores: Stores, crd: Path, path: tuple[str, ...], value: Any, expected: str
) -> None:
    manifest = store_manifest("strict", "127.0.0.1:9")
    manifest["spec"]["kafka"]["topic"]["replicationFactor"] = 1
    node = manifest["spec"]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    code, output = stores.apply(manifest, check=False)
    assert code != 0, output
    assert expected in output, output
