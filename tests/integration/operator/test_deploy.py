"""deploy/ is `kubectl apply`-ready, and the operator works with exactly the RBAC it ships."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.harness.cluster import Cluster
from tests.harness.common import repo_root
from tests.harness.kafka import KafkaBroker

from .conftest import Stores, describe_topic, start_operator, stop_operator, store_manifest

DEPLOY = repo_root() / "deploy"


@pytest.fixture
def rbac(cluster: Cluster, crd: Path) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(DEPLOY / "10-rbac.yaml"))


def test_every_manifest_is_accepted_by_the_api_server(cluster: Cluster, rbac: None) -> None:
    """Server-side dry run: schema, defaults and admission, without starting an operator pod."""
    result = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(DEPLOY))
    applied = result.stdout
    for what in (
        "namespace/kvs2-system",
        "serviceaccount/kvs2-operator",
        "clusterrole.rbac.authorization.k8s.io/kvs2-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/kvs2-operator",
        "deployment.apps/kvs2-operator",
        "customresourcedefinition.apiextensions.k8s.io/keyvaluestores.kvs2.io",
    ):
        assert f"{what} serverside-applied (server dry run)" in applied, applied
    example = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-n", "default", "-f", str(DEPLOY / "examples")
    )
    assert "keyvaluestore.kvs2.io/example serverside-applied (server dry run)" in example.stdout, (
        example.stdout
    )


def service_account_kubeconfig(cluster: Cluster, tmp_path: Path) -> Path:
    """A kubeconfig holding a token of deploy/'s ServiceAccount: the operator's own identity."""
    token = cluster.kubectl(
        "-n", "kvs2-system", "create", "token", "kvs2-operator", "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": admin["clusters"],
                "users": [{"name": "kvs2-operator", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "sa",
                        "context": {"cluster": admin["clusters"][0]["name"], "user": "kvs2-operator"},
                    }
                ],
                "current-context": "sa",
            }
        )
    )
    kubeconfig.chmod(0o600)
    return kubeconfig


def test_operator_works_with_only_its_service_account(
    cluster: Cluster,
    rbac: None,
    stores: Stores,
    kafka: KafkaBroker,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    kubeconfig = service_account_kubeconfig(cluster, tmp_path)
    # Sanity: the token really is the service account, not an admin.
    denied = cluster.kubectl("--kubeconfig", str(kubeconfig), "get", "secrets", "-A", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr

    proc = start_operator(stores.namespace, kubeconfig, tmp_path / "operator.log")
    try:
        stores.apply(store_manifest("scoped", kafka.bootstrap_servers, topicDeletionPolicy="Delete"))
        stores.wait_condition("scoped", "TopicReady", "True", "TopicCreated")
        stores.wait_condition("scoped", "WorkloadReady", "False", "ReplicasNotReady")
        for kind, name in (("statefulset", "scoped"), ("service", "scoped"), ("pdb", "scoped")):
            assert stores.get(kind, name) is not None, f"{kind}/{name}"
        assert {"TopicCreated", "ReplicasNotReady"} <= {e["reason"] for e in stores.events("scoped")}
        stores.wait(
            "the finalizer",
            lambda: (
                "kvs2.io/topic-deletion"
                in ((stores.get("kvs", "scoped") or {})["metadata"].get("finalizers") or [])
            ),
        )
        stores.kubectl("delete", "kvs", "scoped", "--timeout=60s")
        assert describe_topic(kafka.bootstrap_servers, f"{stores.namespace}.scoped") is None
        log = proc.log_path.read_text(errors="replace")
        assert not re.search(r'HTTP/1\.1" 403 ', log) and "forbidden" not in log.lower(), log
    finally:
        stop_operator(proc, request)


def deployment_args() -> list[str]:
    """The operator's arguments exactly as deploy/20-operator.yaml passes them."""
    deployment = yaml.safe_load((DEPLOY / "20-operator.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return [str(arg) for arg in container["args"]]


def uninstall_args() -> list[str]:
    """deploy/'s flags that concern its own uninstall (the rest need a pod: its IP, its Lease)."""
    args = deployment_args()
    picked: list[str] = []
    for flag in ("--guard-service-account", "--guard-cluster-role"):
        assert flag in args, f"deploy/20-operator.yaml does not pass {flag}: {args}"
        picked += [flag, args[args.index(flag) + 1]]
    return picked


def test_kubectl_delete_of_deploy_completes_while_a_store_deletes_its_topic(
    cluster: Cluster,
    crd: Path,
    stores: Stores,
    kafka: KafkaBroker,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """`kubectl delete -f deploy/` deletes the CRD (so every store), the operator and its RBAC at once.

    The store's finalizer still runs, under the operator's own ServiceAccount: its topic is deleted, the
    finalizer removed, and the command completes with nothing left behind. (The operator runs as a
    process here, not a pod: the pod's own end is the e2e suite's; the identity and RBAC are the same.)
    """
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(DEPLOY))
    kubeconfig = service_account_kubeconfig(cluster, tmp_path)
    proc = start_operator(
        stores.namespace, kubeconfig, tmp_path / "operator.log", extra_args=tuple(uninstall_args())
    )
    try:
        stores.apply(store_manifest("uninstalled", kafka.bootstrap_servers, topicDeletionPolicy="Delete"))
        stores.wait_condition("uninstalled", "TopicReady", "True", "TopicCreated")
        topic = f"{stores.namespace}.uninstalled"
        assert describe_topic(kafka.bootstrap_servers, topic) is not None
        stores.wait(
            "the finalizer",
            lambda: (
                "kvs2.io/topic-deletion"
                in ((stores.get("kvs", "uninstalled") or {})["metadata"].get("finalizers") or [])
            ),
        )
        # The operator arms its uninstall guard (a finalizer on its ServiceAccount, a CRD-owned copy of its
        # rights) a moment after it starts; an uninstall before that is not drained (deploy/README.md).
        stores.wait(
            "the operator's uninstall guard",
            lambda: (
                "kvs2.io/uninstall-drain"
                in (
                    (cluster.get_object("kvs2-system", "serviceaccount", "kvs2-operator") or {})
                    .get("metadata", {})
                    .get("finalizers")
                    or []
                )
            ),
        )
        result = cluster.kubectl("delete", "-f", str(DEPLOY), "--timeout=150s", check=False, timeout=200)
        assert result.returncode == 0, (
            f"kubectl delete -f deploy/ did not complete: {result.stderr}{result.stdout}\n"
            f"{cluster.kubectl('get', 'kvs,crd,ns,clusterrole,clusterrolebinding', '-A', check=False).stdout}"
        )
        assert stores.get("kvs", "uninstalled") is None
        assert cluster.get_object("default", "crd", "keyvaluestores.kvs2.io") is None
        assert cluster.get_object("default", "namespace", "kvs2-system") is None
        assert describe_topic(kafka.bootstrap_servers, topic) is None, "the store's topic was left behind"
        # Nothing of the operator's own is left once the CRD is gone (garbage collection is asynchronous).
        stores.wait(
            "no kvs2-operator ClusterRole or ClusterRoleBinding",
            lambda: (
                "kvs2-operator"
                not in cluster.kubectl("get", "clusterrole,clusterrolebinding", "-o", "name").stdout
            ),
        )
    finally:
        stop_operator(proc, request)
        # A failed uninstall leaves the CRD terminating behind a store's finalizer: release it as an admin
        # would, so that the CRD can go and be re-created (else every later operator test fails with it).
        leftover = cluster.kubectl("get", "kvs", "-A", "-o", "name", check=False)
        if leftover.returncode == 0 and leftover.stdout.strip():
            cluster.kubectl("-n", stores.namespace, "patch", "kvs", "uninstalled", "--type=merge",
                            "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
            cluster.kubectl(
                "wait", "--for=delete", "crd/keyvaluestores.kvs2.io", "--timeout=120s", check=False
            )
        # The session's other tests need the CRD (and deploy/'s namespace gone, or re-created by them).
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        cluster.kubectl("wait", "--for=condition=Established", "-f", str(crd), "--timeout=60s")
