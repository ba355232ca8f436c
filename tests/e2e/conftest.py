"""Helpers for the end-to-end tests: kubectl the way a person uses it, and patient waits that explain
themselves (the last object seen and the relevant logs) when they time out."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.cluster import Cluster
from tests.harness.common import repo_root, wait_until
from tests.harness.kubelet import KubeletProcess
from tests.protogen import generate

pytestmark = pytest.mark.e2e


@dataclass
class Kube:
    """kubectl against one namespace, plus the process kubelet's view of the pods there."""

    cluster: Cluster
    kubelet: KubeletProcess
    namespace: str

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> str:
        result = self.cluster.kubectl("-n", self.namespace, *args, check=check, input=input, timeout=timeout)
        return result.stdout + (result.stderr if not check else "")

    def apply(self, *manifests: dict[str, Any]) -> str:
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.cluster.get_object(self.namespace, kind, name)

    def items(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        loaded: list[dict[str, Any]] = json.loads(self.kubectl(*args))["items"]
        return loaded

    def pod_logs(self, pod: str, container: str) -> str:
        return self.kubelet.container_log(self.namespace, pod, container)

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = 60.0, dump: str = "pods") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.3)
        state = self.kubectl("get", dump, "-o", "wide", check=False)
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}\n{state}\n"
            f"--- process kubelet log ---\n{self.kubelet.log_tail(40)}"
        )


def pod_ready(pod: dict[str, Any] | None) -> bool:
    conditions = (pod or {}).get("status", {}).get("conditions") or ()
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def container_status(pod: dict[str, Any] | None, name: str) -> dict[str, Any]:
    for status in (pod or {}).get("status", {}).get("containerStatuses") or ():
        if status["name"] == name:
            return dict(status)
    return {}


@pytest.fixture
def kube(cluster: Cluster, kubelet: KubeletProcess, namespace: str) -> Kube:
    return Kube(cluster, kubelet, namespace)


# ------------------------------------------------------------------------------------------- stores

SEED_PROTO = repo_root() / "tests" / "fixtures" / "seed" / "kvs2.proto"
SEED_CLIENT = Path(__file__).with_name("seed_client.py")
DEPLOY = repo_root() / "deploy"
OPERATOR_NAMESPACE = "kvs2-system"


@pytest.fixture(scope="session")
def seed_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python code generated from the seed's kvs2.proto alone."""
    out = tmp_path_factory.mktemp("seedgen")
    generate(SEED_PROTO, out)
    return out


def seed(seed_code: Path, *ops: list[Any]) -> list[Any]:
    """Run operations with the seed-proto client in an isolated interpreter (see seed_client.py)."""
    result = subprocess.run(
        [sys.executable, "-I", str(SEED_CLIENT), str(seed_code)],
        input=json.dumps(list(ops)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[Any] = json.loads(result.stdout)
    return loaded


def store_manifest(name: str, bootstrap: str, replicas: int = 2, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kvs2.io/v1alpha1",
        "kind": "KeyValueStore",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "image": "kvs2:e2e",  # ignored by the process kubelet; the command is `kvs2 serve`
            "shutdownGraceSeconds": 3,
            "kafka": {"bootstrapServers": bootstrap, "topic": {"partitions": 3, "replicationFactor": 1}},
        },
    }
    body["spec"].update(spec)
    return body


def store_condition(store: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in (store or {}).get("status", {}).get("conditions") or ():
        if cond["type"] == type_:
            return dict(cond)
    return {}


def store_pods(kube: Kube, name: str) -> list[dict[str, Any]]:
    pods = kube.items("pods", f"app.kubernetes.io/instance={name}")
    return sorted(pods, key=lambda p: int(p["metadata"]["name"].rsplit("-", 1)[1]))


def target(pod: dict[str, Any]) -> str:
    return f"{pod['status']['podIP']}:50051"


@dataclass
class OperatorPod:
    """The operator as `kubectl apply -f deploy/` installs it: a pod of its Deployment, under its RBAC."""

    kube: Kube

    replicas: int = 1

    def names(self) -> list[str]:
        pods = self.kube.items("pods", "app.kubernetes.io/name=kvs2-operator")
        return sorted(str(p["metadata"]["name"]) for p in pods)

    def name(self) -> str:
        names = self.names()
        return names[0] if names else "(none)"

    def log(self, lines: int = 60) -> str:
        """Every operator pod's log (with several replicas, one leads and the others stand by)."""
        return "\n".join(
            f"--- {pod} ---\n{self.kube.kubelet.container_log(self.kube.namespace, pod, 'operator', lines)}"
            for pod in self.names()
        )

    def wait_healthy(self, timeout: float = 90.0) -> None:
        """Until every replica's liveness endpoint answers on its pod IP: the operator really runs (a
        crash-looping pod can look Ready for a moment, its Deployment having no readiness probe)."""

        def healthy() -> bool:
            pods = self.kube.items("pods", "app.kubernetes.io/name=kvs2-operator")
            if len(pods) != self.replicas or not all(p["status"].get("podIP") for p in pods):
                return False
            try:
                for pod in pods:
                    url = f"http://{pod['status']['podIP']}:8080/healthz"
                    with urllib.request.urlopen(url, timeout=2) as resp:
                        if int(resp.status) != 200:
                            return False
                return True
            except OSError:
                return False

        try:
            self.kube.wait("the operator's /healthz", healthy, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{self.log()}") from exc


def install_deploy(cluster: Cluster, kubelet: KubeletProcess) -> OperatorPod:
    """deploy/ exactly as a person installs it (server-side, the command the README documents), once the
    operator's pod is healthy."""

    def namespace_usable() -> bool:
        # Another module's teardown deletes deploy/'s namespace without waiting: applying into a
        # namespace that is still terminating is refused (Forbidden), so wait until it is gone.
        ns = cluster.get_object("default", "namespace", OPERATOR_NAMESPACE)
        return ns is None or ns.get("status", {}).get("phase") != "Terminating"

    wait_until(namespace_usable, timeout=180, what=f"namespace {OPERATOR_NAMESPACE} to finish terminating")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(DEPLOY))

    def established() -> bool:
        # Not `kubectl wait`: on a CRD created a moment ago it fails outright (".status.conditions
        # accessor error") instead of waiting for the conditions to appear.
        crd = cluster.get_object("default", "crd", "keyvaluestores.kvs2.io") or {}
        conditions = crd.get("status", {}).get("conditions") or ()
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_until(established, timeout=60, what="the KeyValueStore CRD to be Established")
    cluster.kubectl("-n", OPERATOR_NAMESPACE, "rollout", "status", "deployment/kvs2-operator",
                    "--timeout=120s", timeout=150)  # fmt: skip
    operator = OperatorPod(Kube(cluster, kubelet, OPERATOR_NAMESPACE))
    operator.wait_healthy()
    return operator
