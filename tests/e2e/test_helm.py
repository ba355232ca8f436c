"""The Helm chart: lint-clean, a strict values schema, the same CRD and RBAC as deploy/, and an install that
really runs — the operator as a pod under the chart's RBAC, a store that becomes Ready, and a `helm test`
hook whose pod asks that store's client Service for its gRPC health (and fails when there is no store)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import (
    DEPLOY,
    Kube,
    OperatorPod,
    pod_ready,
    seed,
    store_condition,
    store_manifest,
    store_pods,
    target,
)
from tests.harness.cluster import Cluster
from tests.harness.common import repo_root, wait_until
from tests.harness.gobuild import ensure_tool
from tests.harness.kafka import KafkaBroker
from tests.harness.kubelet import KubeletProcess

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("helm_binary")]

CHART = repo_root() / "charts" / "kvs2"
RELEASE = "kvs2-e2e"  # not "kvs2": its names must not collide with what deploy/ installs
RELEASE_NAMESPACE = "kvs2-helm"


def helm(*args: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(ensure_tool("helm")), *args] + ([f"--kubeconfig={kubeconfig}"] if kubeconfig else [])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


def _render(*sets: str) -> list[dict[str, Any]]:
    out = helm(
        "template", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--kube-version", "1.37.2", *sets
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_lint_is_clean_and_the_schema_is_strict() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout
    for bad, why in (
        ("operator.logLevel=LOUD", "logLevel"),
        ("operator.unknownKnob=1", "unknownKnob"),
        ("operator.resyncInterval=0", "resyncInterval"),
        ("tests.store.name=Not_A_Name", "name"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
    ):
        rejected = helm("lint", "--strict", str(CHART), "--set", bad, check=False)
        assert rejected.returncode != 0 and why in rejected.stdout + rejected.stderr, (bad, rejected.stdout)


def test_chart_crd_and_rbac_are_the_ones_in_deploy() -> None:
    # The CRD is a template (helm upgrade updates it), from a copy of deploy/'s, kept on uninstall.
    assert not (CHART / "crds").exists()
    assert (CHART / "files" / "keyvaluestores.kvs2.io.yaml").read_bytes() == (
        DEPLOY / "crd.yaml"
    ).read_bytes()
    crd = next(d for d in _render() if d["kind"] == "CustomResourceDefinition")
    deploy_crd = yaml.safe_load((DEPLOY / "crd.yaml").read_text())
    assert crd["spec"] == deploy_crd["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert (
        "annotations"
        not in next(
            d for d in _render("--set", "crds.keep=false") if d["kind"] == "CustomResourceDefinition"
        )["metadata"]
    )
    assert not any(d["kind"] == "CustomResourceDefinition" for d in _render("--set", "crds.enabled=false"))
    deploy_role = next(
        d for d in yaml.safe_load_all((DEPLOY / "10-rbac.yaml").read_text()) if d["kind"] == "ClusterRole"
    )
    # Named like deploy/'s, the chart's rules (some name the operator's own objects) are the same.
    chart_role = next(
        d for d in _render("--set", "fullnameOverride=kvs2-operator") if d["kind"] == "ClusterRole"
    )
    assert chart_role["rules"] == deploy_role["rules"]
    deployment = next(
        d for d in _render("--set", "operator.watchNamespaces={a,b}") if d["kind"] == "Deployment"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["kvs2", "operator"]
    assert container["args"][-4:] == ["--namespace", "a", "--namespace", "b"]
    assert "--leader-election" in container["args"]
    assert deployment["spec"]["replicas"] == 2  # one leads (holds the Lease), one stands by


def test_watch_namespaces_confine_the_operators_rules_to_them() -> None:
    docs = _render("--set", "operator.watchNamespaces={a,b}")
    main = next(d for d in docs if d["kind"] == "ClusterRole")["metadata"]["name"]
    assert not any(d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == main for d in docs)
    bindings = {d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding" and "leader" not in
                d["metadata"]["name"]}  # fmt: skip
    assert bindings == {"a", "b"}
    cluster_bound = {d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"}
    scoped = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] in cluster_bound)
    assert {g for r in scoped["rules"] for g in r["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
        "storageclasses",
    }


PREVIOUS_CHART = repo_root() / "tests" / "fixtures" / "charts" / "kvs2-0.1.0"
UPGRADE_RELEASE = "kvs2-upgrade"


def _crd(cluster: Cluster) -> dict[str, Any]:
    crd = cluster.get_object("default", "crd", "keyvaluestores.kvs2.io")
    assert crd is not None
    return crd


def _storage_rule(crd: dict[str, Any]) -> str:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return str(schema["properties"]["spec"]["properties"]["storage"]["x-kubernetes-validations"][0]["rule"])


def _established(cluster: Cluster) -> bool:
    conditions = _crd(cluster).get("status", {}).get("conditions") or ()
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def test_helm_upgrade_from_the_previous_chart_updates_the_crd_and_keeps_the_stores(cluster: Cluster) -> None:
    """Chart 0.1.0 shipped the CRD in crds/ (installed once, never upgraded); this chart templates it.
    `helm upgrade --take-ownership` from 0.1.0 applies the new CRD, an existing store stays, and
    `helm uninstall` keeps the CRD (helm.sh/resource-policy: keep) and so the store."""
    kubeconfig = cluster.kubeconfig
    namespace = UPGRADE_RELEASE
    old = yaml.safe_load((PREVIOUS_CHART / "crds" / "keyvaluestores.kvs2.io.yaml").read_text())
    assert yaml.safe_load((PREVIOUS_CHART / "Chart.yaml").read_text())["version"] == "0.1.0"
    # The cluster as chart 0.1.0 leaves it (its crds/ are installed only when the CRD is absent).
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(PREVIOUS_CHART / "crds"))
    wait_until(lambda: _established(cluster), timeout=60, what="the 0.1.0 CRD to be Established")
    assert _storage_rule(_crd(cluster)) == _storage_rule(old) and "oldSelf.size" in _storage_rule(old)
    # Confined to its namespace: it must not act on stores of other tests.
    confine = ["--set", f"operator.watchNamespaces={{{namespace}}}"]
    try:
        helm("install", UPGRADE_RELEASE, str(PREVIOUS_CHART), "-n", namespace, "--create-namespace",
             *confine, kubeconfig=kubeconfig)  # fmt: skip
        store = store_manifest("kept", "127.0.0.1:1")
        store["metadata"]["namespace"] = namespace
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(store))
        refused = cluster.kubectl("-n", namespace, "patch", "kvs", "kept", "--type=merge", "-p",
                                  '{"spec":{"storage":{"size":"2Gi"}}}', check=False)  # fmt: skip
        assert refused.returncode != 0 and "immutable" in refused.stderr, refused.stderr

        helm("upgrade", UPGRADE_RELEASE, str(CHART), "-n", namespace, "--take-ownership", *confine,
             kubeconfig=kubeconfig)  # fmt: skip
        crd = _crd(cluster)
        assert _storage_rule(crd) == _storage_rule(yaml.safe_load((DEPLOY / "crd.yaml").read_text()))
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == UPGRADE_RELEASE
        assert "2." in helm("list", "-n", namespace, kubeconfig=kubeconfig).stdout  # chart kvs2-0.2.x
        # The store is still there, and the new CRD's rules apply to it: its volumes may grow now.
        cluster.kubectl("-n", namespace, "patch", "kvs", "kept", "--type=merge", "-p",
                        '{"spec":{"storage":{"size":"2Gi"}}}')  # fmt: skip
        kept = cluster.get_object(namespace, "kvs", "kept")
        assert kept is not None and kept["spec"]["storage"]["size"] == "2Gi"

        helm("uninstall", UPGRADE_RELEASE, "-n", namespace, "--wait", kubeconfig=kubeconfig)
        assert cluster.get_object("default", "crd", "keyvaluestores.kvs2.io") is not None
        assert cluster.get_object(namespace, "kvs", "kept") is not None
    finally:
        helm("uninstall", UPGRADE_RELEASE, "-n", namespace, kubeconfig=kubeconfig, check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        # Leave the CRD as deploy/ has it, owned by no release.
        ownership = [
            "meta.helm.sh/release-name-",
            "meta.helm.sh/release-namespace-",
            "helm.sh/resource-policy-",
        ]
        cluster.kubectl("annotate", "crd", "keyvaluestores.kvs2.io", *ownership, check=False)
        cluster.kubectl(
            "label", "crd", "keyvaluestores.kvs2.io", "app.kubernetes.io/managed-by-", check=False
        )
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(DEPLOY / "crd.yaml"))


@pytest.fixture(scope="module")
def helm_operator(cluster: Cluster, kubelet: KubeletProcess) -> Iterator[OperatorPod]:
    # --take-ownership: the CRD may exist already (deploy/, another release); the release adopts it.
    install = [
        "install",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--take-ownership",
    ]
    helm(*install, "--timeout=3m", kubeconfig=cluster.kubeconfig)
    operator = OperatorPod(Kube(cluster, kubelet, RELEASE_NAMESPACE), replicas=2)
    operator.wait_healthy()
    try:
        yield operator
    finally:
        helm(
            "uninstall",
            RELEASE,
            "-n",
            RELEASE_NAMESPACE,
            "--wait",
            "--timeout=2m",
            kubeconfig=cluster.kubeconfig,
            check=False,
        )
        cluster.kubectl("delete", "namespace", RELEASE_NAMESPACE, "--wait=false", check=False)


def test_helm_install_store_ready_and_helm_test(
    kube: Kube, helm_operator: OperatorPod, kafka: KafkaBroker, seed_code: Path
) -> None:
    kubeconfig = kube.cluster.kubeconfig
    notes = helm("get", "notes", RELEASE, "-n", RELEASE_NAMESPACE, kubeconfig=kubeconfig).stdout
    assert "kind: KeyValueStore" in notes and "kubectl" in notes and "wait --for=condition=Ready" in notes

    name = "charted"
    kube.apply(store_manifest(name, kafka.bootstrap_servers, replicas=2))
    waited = kube.cluster.kubectl(
        "-n",
        kube.namespace,
        "wait",
        "--for=condition=Ready",
        f"kvs/{name}",
        "--timeout=180s",
        check=False,
        timeout=200,
    )
    assert waited.returncode == 0, (
        f"{waited.stderr}\n{kube.kubectl('get', 'kvs,pods', '-o', 'wide')}\n{helm_operator.log()}"
    )
    assert store_condition(kube.get("kvs", name), "Ready")["status"] == "True"
    pods = store_pods(kube, name)
    assert all(pod_ready(p) for p in pods)
    assert seed(seed_code, ["set", target(pods[0]), "chart", "works"]) == ["PUBLISHED"]
    kube.wait(
        "the write to reach pod 1",
        lambda: seed(seed_code, ["get", target(pods[1]), "chart"]) == [["OK", "works"]],
    )

    # helm test: the hook pod checks the store's client Service (the store lives in the test's namespace).
    sets = [
        "--reuse-values",
        "--set",
        f"tests.store.name={name}",
        "--set",
        f"tests.store.namespace={kube.namespace}",
    ]
    helm("upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, *sets, "--wait", kubeconfig=kubeconfig)
    passed = helm(
        "test", RELEASE, "-n", RELEASE_NAMESPACE, "--timeout=2m", kubeconfig=kubeconfig, check=False
    )
    hook_pod = f"{RELEASE}-operator-test-store-health"
    assert passed.returncode == 0, f"{passed.stdout}{passed.stderr}\n{kube.pod_logs(hook_pod, 'health')}"
    assert "Phase:          Succeeded" in passed.stdout, passed.stdout
    assert "SERVING" in kube.pod_logs(hook_pod, "health")

    # ...and the same hook fails when the store it checks does not exist: it is a real check.
    sets = ["--reuse-values", "--set", "tests.store.name=no-such-store"]
    helm("upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, *sets, "--wait", kubeconfig=kubeconfig)
    failed = helm(
        "test", RELEASE, "-n", RELEASE_NAMESPACE, "--timeout=2m", kubeconfig=kubeconfig, check=False
    )
    assert failed.returncode != 0 and "Failed" in failed.stdout + failed.stderr, failed.stdout + failed.stderr
    kube.kubectl("delete", "kvs", name, "--wait=true", timeout=120)
