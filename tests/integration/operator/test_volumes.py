"""`spec.storage.size` grows: every volume of the store is expanded where its StorageClass allows it, and
the StatefulSet's claim template (which cannot change in place) is replaced — the StatefulSet deleted
leaving its pods and claims, and created again — so new pods start at the new size; where the class does
not allow it, or when the size shrinks, the store says so with a reason from the closed list instead of a
refused update."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.cluster import Cluster
from tests.harness.common import ManagedProcess
from tests.harness.kafka import KafkaBroker

from .conftest import Stores, store_manifest


def storage_class(cluster: Cluster, name: str, *, expandable: bool) -> None:
    """A class nobody provisions for: the test binds each claim to a volume it creates itself."""
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": "kvs2.io/no-provisioner",
        "allowVolumeExpansion": expandable,
        "volumeBindingMode": "Immediate",
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(body))


def claims(stores: Stores, store: str) -> dict[str, dict[str, Any]]:
    out = stores.kubectl("get", "pvc", "-l", f"app.kubernetes.io/instance={store}", "-o", "json")
    return {c["metadata"]["name"]: c for c in json.loads(out)["items"]}


def bind(cluster: Cluster, claim: dict[str, Any], size: str, where: Path) -> None:
    """A PersistentVolume pre-bound to `claim` (what a provisioner would create); the real PV controller
    binds them."""
    meta, spec = claim["metadata"], claim["spec"]
    path = where / meta["name"]
    path.mkdir(parents=True, exist_ok=True)
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pv-{meta['uid']}"},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec["storageClassName"],
            "hostPath": {"path": str(path)},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pv))


def requested(claim: dict[str, Any]) -> str:
    return str(claim["spec"]["resources"]["requests"]["storage"])


def template_request(statefulset: dict[str, Any]) -> str:
    (template,) = statefulset["spec"]["volumeClaimTemplates"]
    return str(template["spec"]["resources"]["requests"]["storage"])


def pods(stores: Stores, store: str) -> dict[str, str | None]:
    """The store's pods by uid, each with the uid of the controller that owns it (None: orphaned)."""
    out = stores.kubectl("get", "pods", "-l", f"app.kubernetes.io/instance={store}", "-o", "json")
    return {
        p["metadata"]["uid"]: next(
            (o["uid"] for o in p["metadata"].get("ownerReferences") or () if o.get("controller")), None
        )
        for p in json.loads(out)["items"]
    }


def test_storage_size_grows_volumes_where_the_class_allows_and_says_why_not_elsewhere(
    cluster: Cluster,
    operator: ManagedProcess,
    stores: Stores,
    kafka: KafkaBroker,
    tmp_path: Path,
) -> None:
    expandable, fixed = f"{stores.namespace}-expandable", f"{stores.namespace}-fixed"
    storage_class(cluster, expandable, expandable=True)
    storage_class(cluster, fixed, expandable=False)
    try:
        for name, klass in (("grows", expandable), ("stuck", fixed)):
            stores.apply(
                store_manifest(
                    name, kafka.bootstrap_servers, storage={"size": "1Gi", "storageClassName": klass}
                )
            )
        for name in ("grows", "stuck"):
            stores.wait(f"{name}'s two claims", lambda n=name: len(claims(stores, n)) == 2)  # type: ignore[misc]
            for claim in claims(stores, name).values():
                bind(cluster, claim, "1Gi", tmp_path / "volumes")
            stores.wait(
                f"{name}'s claims bound",
                lambda n=name: all(  # type: ignore[misc]
                    c.get("status", {}).get("phase") == "Bound" for c in claims(stores, n).values()
                ),
            )

        # Grow: every claim of the expandable class asks for the new size; nothing is refused.
        before = stores.get("statefulset", "grows") or {}
        pods_before = stores.wait(
            "grows' two pods", lambda: len(pods(stores, "grows")) == 2 and pods(stores, "grows")
        )
        claims_before = {n: c["metadata"]["uid"] for n, c in claims(stores, "grows").items()}
        assert template_request(before) == "1Gi"
        stores.kubectl("patch", "kvs", "grows", "--type=merge", "-p", '{"spec":{"storage":{"size":"2Gi"}}}')
        stores.wait(
            "grows' claims to request 2Gi",
            lambda: all(requested(c) == "2Gi" for c in claims(stores, "grows").values()),
        )
        workload = stores.condition("grows", "WorkloadReady")
        assert workload.get("reason") not in ("ChildUpdateRefused", "VolumeExpansionNotSupported"), workload

        # …and the claim template too, so a pod added later starts at the new size: the StatefulSet is
        # replaced (deleted leaving its pods and claims, created again), and the new one adopts the pods.
        after = stores.wait(
            "grows' StatefulSet to have a 2Gi claim template",
            lambda: (sts := stores.get("statefulset", "grows")) and template_request(sts) == "2Gi" and sts,
            timeout=120,
        )
        assert after["metadata"]["uid"] != before["metadata"]["uid"]
        stores.wait(
            "the new StatefulSet to adopt the running pods",
            lambda: all(owner == after["metadata"]["uid"] for owner in pods(stores, "grows").values()),
        )
        assert set(pods(stores, "grows")) == set(pods_before)  # the same pods (uids): none restarted
        assert {n: c["metadata"]["uid"] for n, c in claims(stores, "grows").items()} == claims_before
        stores.kubectl("patch", "kvs", "grows", "--type=merge", "-p", '{"spec":{"replicas":3}}')
        third = stores.wait("grows' third claim", lambda: claims(stores, "grows").get("data-grows-2"))
        assert requested(third) == "2Gi"  # made by the template at the new size, not grown later

        # A class without allowVolumeExpansion: the claims stay, the store says why.
        stores.kubectl("patch", "kvs", "stuck", "--type=merge", "-p", '{"spec":{"storage":{"size":"2Gi"}}}')
        refused = stores.wait_condition("stuck", "WorkloadReady", "False", "VolumeExpansionNotSupported")
        assert fixed in refused["message"] and "allowVolumeExpansion" in refused["message"], refused
        assert all(requested(c) == "1Gi" for c in claims(stores, "stuck").values())

        # Shrinking is refused: Kubernetes cannot shrink a volume.
        stores.kubectl("patch", "kvs", "grows", "--type=merge", "-p", '{"spec":{"storage":{"size":"1Gi"}}}')
        shrink = stores.wait_condition("grows", "WorkloadReady", "False", "VolumeShrinkRefused")
        assert "2Gi" in shrink["message"] and "1Gi" in shrink["message"], shrink
        assert all(requested(c) == "2Gi" for c in claims(stores, "grows").values())
    finally:
        stores.kubectl("delete", "kvs", "--all", "--wait=false", check=False)
        cluster.kubectl("delete", "storageclass", expandable, fixed, "--wait=false", check=False)


@pytest.fixture(autouse=True)
def _no_leftover_volumes(cluster: Cluster, stores: Stores) -> Any:
    yield
    # The test's PersistentVolumes are cluster-scoped; its claims go with its namespace.
    out = cluster.kubectl("get", "pv", "-o", "json").stdout
    for pv in json.loads(out)["items"]:
        if (pv["spec"].get("claimRef") or {}).get("namespace") == stores.namespace:
            cluster.kubectl("delete", "pv", pv["metadata"]["name"], "--wait=false", check=False)
