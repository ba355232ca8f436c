"""A Node as the process kubelet registers it: identity, capacity, conditions, Lease heartbeat, and the
loopback subnet its pods get their IPs from (node i: 127.0.(10+i).2-254)."""

from __future__ import annotations

import os
import platform
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.harness.kubelet_api import Api, ApiError, ns_path

KUBELET_VERSION = "v1.37.2-process"
HOST_IP = "127.0.0.1"
LEASE_SECONDS = 40


def rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_subnet(index: int) -> str:
    return f"127.0.{10 + index}"


def machine_memory() -> str:
    return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki"


@dataclass
class IpPool:
    subnet: str
    used: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, preferred: str | None = None) -> str:
        with self.lock:
            if preferred and preferred.startswith(self.subnet + ".") and preferred not in self.used:
                self.used.add(preferred)
                return preferred
            for host in range(2, 255):
                ip = f"{self.subnet}.{host}"
                if ip not in self.used:
                    self.used.add(ip)
                    return ip
        raise RuntimeError(f"no free pod IP left in {self.subnet}.0/24")

    def release(self, ip: str | None) -> None:
        with self.lock:
            self.used.discard(ip or "")


@dataclass
class NodeAgent:
    """One registered Node: its identity, capacity, address pool and heartbeat."""

    name: str
    index: int
    cpu: str
    memory: str
    pods: int
    ips: IpPool
    since: str = field(default_factory=rfc3339)

    def labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kvs2.io/process-kubelet": "true",
        }

    def status(self, ready: bool) -> dict[str, Any]:
        now = rfc3339()
        resources = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "100Gi",
        }

        def cond(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self.since,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond(
                    "MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"
                ),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond(
                    "PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"
                ),
                cond("Ready", "True", "KubeletReady", "process kubelet is posting ready status")
                if ready
                else cond("Ready", "False", "KubeletNotReady", "process kubelet stopped"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.name)),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": platform.release(),
                "osImage": "process kubelet (kvs2 test harness)",
                "containerRuntimeVersion": "process://kvs2-harness",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self, api: Api) -> None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": self.labels()}}
        status, data = api.request("POST", "/api/v1/nodes", body=body)
        if status not in (201, 409):
            raise ApiError(f"cannot register node {self.name}: {data.get('message')}", status)
        self.post_status(api, ready=True)
        # The TaintNodesByCondition admission plugin taints every new node not-ready; removing that taint
        # is the node-lifecycle controller's job, which this cluster does not run.
        node = api.call("GET", f"/api/v1/nodes/{self.name}")
        taints = [
            t
            for t in node.get("spec", {}).get("taints") or ()
            if not str(t.get("key", "")).startswith(
                ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreach")
            )
        ]
        api.call(
            "PATCH",
            f"/api/v1/nodes/{self.name}",
            body={"metadata": {"labels": self.labels()}, "spec": {"taints": taints or None}},
            content_type="application/merge-patch+json",
        )

    def post_status(self, api: Api, ready: bool) -> None:
        api.call(
            "PATCH",
            f"/api/v1/nodes/{self.name}/status",
            body={"status": self.status(ready)},
            content_type="application/merge-patch+json",
        )

    def renew_lease(self, api: Api) -> None:
        path = ns_path("coordination.k8s.io/v1", "leases", "kube-node-lease", self.name)
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_time()}
        status, _ = api.request(
            "PATCH", path, body={"spec": spec}, content_type="application/merge-patch+json"
        )
        if status == 404:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": "kube-node-lease"},
                "spec": spec,
            }
            api.request("POST", ns_path("coordination.k8s.io/v1", "leases", "kube-node-lease"), body=body)
