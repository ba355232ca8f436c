"""The process kubelet and the `demo` store in the local stack (`make cluster` / `make cluster-down`).

cluster.py calls these: the kubelet outlives `make cluster` (its PID file is `.kvs2/cluster/pids/kubelet.pid`,
its pods' logs are under `.kvs2/cluster/kubelet/pods/`), and `make cluster` ends with a Ready store `demo`
in namespace `default` whose replicas a person can call with `kvs2 get/set --target <pod IP>:50051`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tests.harness.common import live_pid, progress, stop_pid
from tests.harness.kubelet import KubeletProcess, sweep_stale_processes

if TYPE_CHECKING:
    from tests.harness.cluster import Cluster

NODES = 2
DEMO = "demo"
DEMO_NAMESPACE = "default"
PID_MARKER = b"tests.harness.kubelet"


def kubelet_dir(cluster: Cluster) -> Path:
    return cluster.workdir / "kubelet"


def start_kubelet(cluster: Cluster) -> None:
    pid_file = cluster.pid_dir / "kubelet.pid"
    pid = live_pid(pid_file, PID_MARKER)
    if pid is not None:
        progress(f"process kubelet already running (pid {pid}), log: {cluster.logs / 'kubelet.log'}")
        return
    process = KubeletProcess(
        cluster.kubeconfig, kubelet_dir(cluster), nodes=NODES, log_path=cluster.logs / "kubelet.log"
    )
    process.start()
    cluster.pid_dir.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{process.process.pid}\n")


def stop_kubelet(pid_dir: Path, state_dir: Path) -> None:
    """SIGTERM: the kubelet stops every pod's processes first (each gets its own grace period)."""
    pid = live_pid(pid_dir / "kubelet.pid", PID_MARKER)
    if pid is not None:
        progress(f"stopping the process kubelet (pid {pid}) and its pods")
        stop_pid(pid, grace=45.0)
    sweep_stale_processes(state_dir)
    (pid_dir / "kubelet.pid").unlink(missing_ok=True)


def demo_manifest(bootstrap: str) -> dict[str, object]:
    return {
        "apiVersion": "kvs2.io/v1alpha1",
        "kind": "KeyValueStore",
        "metadata": {"name": DEMO, "namespace": DEMO_NAMESPACE},
        "spec": {
            "replicas": 2,
            "image": "kvs2:0.1.0",
            "kafka": {"bootstrapServers": bootstrap, "topic": {"partitions": 3, "replicationFactor": 1}},
            "storage": {"size": "1Gi"},
        },
    }


def apply_demo(cluster: Cluster, bootstrap: str, timeout: str = "240s") -> list[str]:
    """Apply the demo store, wait until it is Ready, return its replicas' gRPC addresses."""
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(demo_manifest(bootstrap)))
    progress(f"store {DEMO_NAMESPACE}/{DEMO} applied; waiting until it is Ready")
    waited = cluster.kubectl(
        "-n", DEMO_NAMESPACE, "wait", "--for=condition=Ready", f"kvs/{DEMO}", f"--timeout={timeout}",
        check=False, timeout=300,
    )  # fmt: skip
    if waited.returncode != 0:
        state = cluster.kubectl("-n", DEMO_NAMESPACE, "get", "kvs,pods", "-o", "wide", check=False).stdout
        progress(f"store {DEMO} is not Ready: {waited.stderr.strip()}\n{state}")
        return []
    pods = json.loads(
        cluster.kubectl(
            "-n", DEMO_NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/instance={DEMO}", "-o", "json"
        ).stdout
    )["items"]
    return sorted(f"{p['status']['podIP']}:50051" for p in pods if p["status"].get("podIP"))
