"""The control-plane harness runs the real Kubernetes components, not a stand-in.

Each assertion is something only a working component can produce: `/readyz` from the API server, the stamped
release from the Go build, a ReplicaSet and Pods from the controller-manager's deployment and replicaset
controllers, an `Unschedulable` verdict from the scheduler (there are no nodes), and cascading deletion from
the garbage collector — the machinery the operator's ownerReferences rely on.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.harness.cluster import Cluster
from tests.harness.gobuild import KUBERNETES_VERSION

pytestmark = pytest.mark.integration

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: registry.invalid/never-pulled:1
"""


def _get(cluster: Cluster, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return result


def _eventually(check: Any, timeout: float = 60.0, what: str = "") -> Any:
    """Poll `check()` until it returns a truthy value; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def test_apiserver_is_ready_and_reports_the_built_release(cluster: Cluster) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert version["clientVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert cluster.api_url.startswith("https://127.0.0.1:")


def test_deployment_becomes_replicaset_and_pending_pods(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)
    deployment = _get(cluster, "-n", namespace, "deployment", "web")

    def replicaset() -> dict[str, Any] | None:
        items = _get(cluster, "-n", namespace, "replicasets")["items"]
        return items[0] if items else None

    rs = _eventually(replicaset, what="the deployment controller to create a ReplicaSet")
    owner = rs["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Deployment",
        "web",
        deployment["metadata"]["uid"],
    )
    assert owner["controller"] is True

    def pods() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = _get(cluster, "-n", namespace, "pods", "-l", "app=web")["items"]
        return items if len(items) == 2 else None

    created = _eventually(pods, what="the replicaset controller to create 2 Pods")
    for pod in created:
        pod_owner = pod["metadata"]["ownerReferences"][0]
        assert (pod_owner["kind"], pod_owner["uid"]) == ("ReplicaSet", rs["metadata"]["uid"])
        assert pod["status"]["phase"] == "Pending"
        assert not pod["spec"].get("nodeName")  # no nodes, no kubelet: nothing can run

    def unschedulable() -> bool:
        for pod in _get(cluster, "-n", namespace, "pods", "-l", "app=web")["items"]:
            conditions = {c["type"]: c for c in pod["status"].get("conditions", [])}
            scheduled = conditions.get("PodScheduled")
            if not scheduled or (scheduled["status"], scheduled.get("reason")) != ("False", "Unschedulable"):
                return False
        return True

    _eventually(unschedulable, what="the scheduler to mark both Pods Unschedulable (no nodes)")

    # The garbage collector removes the ReplicaSet and its Pods through their ownerReferences.
    cluster.kubectl("delete", "-n", namespace, "deployment", "web", "--cascade=background", "--wait=false")
    _eventually(
        lambda: (
            not _get(cluster, "-n", namespace, "replicasets")["items"]
            and not _get(cluster, "-n", namespace, "pods")["items"]
        ),
        what="garbage collection of the ReplicaSet and Pods",
    )


STATEFULSET = """
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  replicas: 2
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
        - name: db
          image: registry.invalid/never-pulled:1
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        resources:
          requests: {storage: 1Gi}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: db
spec:
  maxUnavailable: 1
  selector:
    matchLabels: {app: db}
"""


def test_statefulset_and_pdb_controllers_act(cluster: Cluster, namespace: str) -> None:
    """The kinds the operator creates: StatefulSet (ordered, with PVCs) and a PDB the disruption controller
    tracks. With no nodes pod 0 never becomes Ready, so OrderedReady must stop there."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=STATEFULSET)

    def first_pod_and_claim() -> bool:
        pods = [p["metadata"]["name"] for p in _get(cluster, "-n", namespace, "pods")["items"]]
        claims = [c["metadata"]["name"] for c in _get(cluster, "-n", namespace, "pvc")["items"]]
        return pods == ["db-0"] and claims == ["data-db-0"]

    _eventually(first_pod_and_claim, what="the statefulset controller to create db-0 and its claim data-db-0")

    def pdb_observed() -> dict[str, Any] | None:
        status: dict[str, Any] = _get(cluster, "-n", namespace, "pdb", "db").get("status", {})
        return status if status.get("observedGeneration") == 1 and status.get("expectedPods") == 2 else None

    status = _eventually(pdb_observed, what="the disruption controller to observe the PDB")
    assert status["currentHealthy"] == 0  # nothing can run without nodes
    assert status["disruptionsAllowed"] == 0

    time.sleep(2.0)  # OrderedReady: db-1 must not appear while db-0 is not Ready
    assert [p["metadata"]["name"] for p in _get(cluster, "-n", namespace, "pods")["items"]] == ["db-0"]
    sts = _get(cluster, "-n", namespace, "statefulset", "db")
    assert sts["status"].get("readyReplicas", 0) == 0
