"""The harness's volume provisioner: every pending PVC gets a PersistentVolume whose hostPath is a
directory under the kubelet's state directory, pre-bound to the claim (claimRef) with the claim's
storageClassName, so the real PV controller binds them. Reclaim policy Retain: once the claim is gone the
PV is Released, and this loop deletes it together with its directory (a new claim starts empty)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tests.harness.kubelet_api import Api

log = logging.getLogger("process-kubelet")

PROVISIONER = "kvs2.io/process-kubelet"
PROVISIONED_LABEL = "kvs2.io/provisioned-by"


def provision_once(api: Api, state_dir: Path) -> None:
    """One pass: a PV for every pending PVC, and released PVs removed with their directory."""
    claims = api.call("GET", "/api/v1/persistentvolumeclaims").get("items") or ()
    for pvc in claims:
        meta, spec = pvc["metadata"], pvc.get("spec") or {}
        if (pvc.get("status") or {}).get("phase") != "Pending" or spec.get("volumeName"):
            continue
        if meta.get("deletionTimestamp") or spec.get("selector") or spec.get("dataSource"):
            continue
        path = state_dir / "pv" / meta["namespace"] / f"{meta['name']}_{meta['uid'][:8]}"
        path.mkdir(parents=True, exist_ok=True)
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": f"pvc-{meta['uid']}",
                "labels": {PROVISIONED_LABEL: "process-kubelet"},
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {
                    "storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
                },
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "volumeMode": spec.get("volumeMode", "Filesystem"),
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": spec.get("storageClassName") or "",
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        status, data = api.request("POST", "/api/v1/persistentvolumes", body=pv)
        if status == 201:
            log.info(
                "provisioned %s for claim %s/%s at %s",
                f"pvc-{meta['uid']}",
                meta["namespace"],
                meta["name"],
                path,
            )
        elif status != 409:
            log.warning(
                "cannot create a PV for %s/%s: %s", meta["namespace"], meta["name"], data.get("message")
            )
    volumes = (
        api.call(
            "GET",
            "/api/v1/persistentvolumes",
            query={"labelSelector": f"{PROVISIONED_LABEL}=process-kubelet"},
        ).get("items")
        or ()
    )
    for pv in volumes:
        if (pv.get("status") or {}).get("phase") != "Released":
            continue
        name = pv["metadata"]["name"]
        status, _ = api.request("DELETE", f"/api/v1/persistentvolumes/{name}")
        path = ((pv.get("spec") or {}).get("hostPath") or {}).get("path")
        if status < 300 and path and Path(path).is_relative_to(state_dir):
            shutil.rmtree(path, ignore_errors=True)
            log.info("released %s: volume and its directory %s removed", name, path)
