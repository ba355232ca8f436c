"""A process kubelet: real Nodes whose pods run as local processes, for a cluster with no container runtime.

Why: the operator's promise ends in pods that serve gRPC. Without a runtime nothing runs, so this
stand-in does the kubelet's job with processes: it registers Nodes (Ready, with allocatable capacity and a
Lease heartbeat), watches the pods the real kube-scheduler binds to them, and for each pod

- gives it its own loopback address (its pod IP; node i hands out 127.0.(10+i).2-254),
- makes a directory per volume: emptyDir per pod; a PersistentVolumeClaim resolves, like the real thing,
  PVC -> bound PV -> its hostPath, so the directory outlives pod restarts and re-creation; ConfigMap,
  Secret, downward-API and projected volumes are written out as files,
- runs each container's `command` + `args` (the image is ignored: there is no image) with its env —
  `$(VAR)` expansion, fieldRef / secretKeyRef / configMapKeyRef / envFrom — and with every mount path
  rewritten to the volume's directory (kubelet_env.py says why), the repo's `.venv/bin` first on PATH,
- hands a pod that mounts a service-account token its in-cluster credentials as `KUBECONFIG` (a
  kubeconfig with that token and the cluster's CA), because the fixed in-cluster paths
  (/var/run/secrets/kubernetes.io/serviceaccount) cannot be provided without a mount namespace; the
  operator in a pod thus runs with exactly its ServiceAccount's RBAC,
- resolves Service names in the command, args and env (`name.ns.svc[.cluster.local][:port]`) to the
  address of a ready endpoint when a container starts — there is no cluster DNS and no kube-proxy, and
  ClusterIPs are not loopback addresses,
- probes it for real (gRPC health, TCP, HTTP, exec) and reports phase, conditions, container states,
  restart counts and readiness in the pod's status,
- restarts exited containers per restartPolicy with a back-off (immediately, then 1s, 2s, 4s … 60s),
- on deletion sends SIGTERM, SIGKILL after the pod's grace period, then removes the pod object with
  grace period 0, as the real kubelet does once its containers are gone.

A small provisioner loop gives every pending PVC a PersistentVolume (hostPath under the state directory,
pre-bound through claimRef, same storageClassName) and removes released ones with their directory.

Modules: kubelet.py (this: nodes' watches, the pod workers' registry, Service resolution, the CLI and
`KubeletProcess`), kubelet_pod.py (one pod's life), kubelet_node.py (Node object, Lease, pod IPs),
kubelet_env.py (env, `$(VAR)`, path and Service-name rewriting), kubelet_probe.py, kubelet_storage.py
(the PV provisioner), kubelet_pids.py, kubelet_api.py (JSON over the kubeconfig's credentials).

Run: `python -m tests.harness.kubelet run --kubeconfig K --state-dir D [--nodes 2]`; SIGTERM stops every
pod's processes and marks the nodes NotReady. `KubeletProcess` starts and stops that from Python.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.harness.common import ManagedProcess, progress, repo_root, wait_until
from tests.harness.kubelet_api import Api, ApiError, ns_path
from tests.harness.kubelet_node import IpPool, NodeAgent, machine_memory, node_subnet
from tests.harness.kubelet_pids import read_pid_file, sweep_stale_processes
from tests.harness.kubelet_pod import PodWorker
from tests.harness.kubelet_storage import provision_once

log = logging.getLogger("process-kubelet")

DEFAULT_NODE_PREFIX = "kvs2-node"

__all__ = [
    "DEFAULT_NODE_PREFIX",
    "Kubelet",
    "KubeletProcess",
    "main",
    "read_pid_file",
    "sweep_stale_processes",
]


class Kubelet:
    """Several Nodes served by one process: watches, pod workers, heartbeats and the PVC provisioner."""

    def __init__(
        self,
        api: Api,
        state_dir: Path,
        *,
        nodes: int = 1,
        node_prefix: str = DEFAULT_NODE_PREFIX,
        cpu: str | None = None,
        memory: str | None = None,
        pods_per_node: int = 110,
        provision: bool = True,
    ) -> None:
        self.api = api
        self.state_dir = state_dir.resolve()
        self.stopping = threading.Event()
        self.provision = provision
        cpu = cpu or str(os.cpu_count() or 2)
        memory = memory or machine_memory()
        self.nodes = [
            NodeAgent(f"{node_prefix}-{i}", i, cpu, memory, pods_per_node, IpPool(node_subnet(i)))
            for i in range(nodes)
        ]
        self.workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()

    def lookup(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        plural = {"Secret": "secrets", "ConfigMap": "configmaps"}[kind]
        found: Mapping[str, Any] | None = self.api.get(ns_path("v1", plural, namespace, name))
        return found

    def resolve_service(
        self, namespace: str, name: str, port: int | None, asking_ip: str | None = None
    ) -> str | None:
        """A ready backend of Service namespace/name for `port` (its first port when None), chosen the
        way the endpoints controller would: pods matching the selector, Ready (or any, when the Service
        publishes not-ready addresses), the target port resolved by name from the container ports.

        A headless Service (clusterIP None) has no virtual IP: cluster DNS answers with every backend and
        a program skips its own address (kvs2's `--bootstrap-peers` does). One address stands in for that
        answer here, so for the pod at `asking_ip` it is another pod's when there is one — else a
        scaled-out replica could be handed only itself as its peer.

        EndpointSlices cannot be used: the API server rejects loopback endpoint addresses, so in this
        cluster every Service's slices stay empty (the controller-manager logs the rejection).
        """
        try:
            service = self.api.get(ns_path("v1", "services", namespace, name))
            if service is None:
                return None
            spec = service.get("spec") or {}
            wanted = next(
                (p for p in spec.get("ports") or () if port is None or int(p["port"]) == port), None
            )
            selector = spec.get("selector") or {}
            if wanted is None or not selector:
                return None
            pods = self.api.call(
                "GET",
                ns_path("v1", "pods", namespace),
                query={"labelSelector": ",".join(f"{k}={v}" for k, v in sorted(selector.items()))},
            )
        except ApiError as exc:
            log.warning("cannot resolve service %s/%s: %s", namespace, name, exc)
            return None
        backends = []
        for pod in pods.get("items") or ():
            status = pod.get("status") or {}
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or ()
            )
            if pod["metadata"].get("deletionTimestamp") or not status.get("podIP"):
                continue
            if not ready and not spec.get("publishNotReadyAddresses"):
                continue
            target = wanted.get("targetPort", wanted["port"])
            if isinstance(target, str) and not target.isdigit():
                ports = [
                    p
                    for c in pod["spec"]["containers"]
                    for p in c.get("ports") or ()
                    if p.get("name") == target
                ]
                if not ports:
                    continue
                target = ports[0]["containerPort"]
            backends.append(f"{status['podIP']}:{int(target)}")
        if spec.get("clusterIP") == "None" and asking_ip is not None:
            others = [b for b in backends if b.rpartition(":")[0] != asking_ip]
            backends = others or backends
        return random.choice(backends) if backends else None

    def forget(self, uid: str) -> None:
        with self._lock:
            self.workers.pop(uid, None)

    # --- run ------------------------------------------------------------------------------------------

    def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        killed = sweep_stale_processes(self.state_dir)
        if killed:
            log.info("killed %d container processes left by an earlier kubelet", killed)
        for node in self.nodes:
            node.register(self.api)
            log.info("node %s registered (pod IPs %s.0/24)", node.name, node.ips.subnet)
        threads = [threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)]
        if self.provision:
            threads.append(threading.Thread(target=self._provisioner, name="provisioner", daemon=True))
        threads += [
            threading.Thread(target=self._watch_pods, args=(n,), name=f"watch-{n.name}", daemon=True)
            for n in self.nodes
        ]
        for t in threads:
            t.start()
        self.stopping.wait()
        self._shutdown()

    def _shutdown(self) -> None:
        log.info("stopping: ending every pod's processes")
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w._wake.set()
        for w in workers:
            w.join(timeout=20)
        for node in self.nodes:
            with contextlib.suppress(ApiError):
                node.post_status(self.api, ready=False)
        log.info("stopped")

    def _heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(10.0):
            for node in self.nodes:
                try:
                    node.renew_lease(self.api)
                    if time.monotonic() - last_status > 40:
                        node.post_status(self.api, ready=True)
                except ApiError as exc:
                    log.warning("heartbeat of %s failed: %s", node.name, exc)
            if time.monotonic() - last_status > 40:
                last_status = time.monotonic()

    # --- pods -----------------------------------------------------------------------------------------

    def _dispatch(self, node: NodeAgent, pod: dict[str, Any]) -> None:
        uid = str(pod["metadata"]["uid"])
        with self._lock:
            worker = self.workers.get(uid)
            if worker is None:
                if pod["metadata"].get("deletionTimestamp") and not (pod.get("status") or {}).get("podIP"):
                    # Never started here: nothing to stop, just let the object go.
                    self.api.request(
                        "DELETE",
                        ns_path("v1", "pods", pod["metadata"]["namespace"], pod["metadata"]["name"]),
                        body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                    )
                    return
                worker = PodWorker(self, node, pod)
                self.workers[uid] = worker
                worker.start()
                return
        worker.update(pod)

    def _watch_pods(self, node: NodeAgent) -> None:
        selector = f"spec.nodeName={node.name}"
        while not self.stopping.is_set():
            try:
                listed = self.api.call("GET", "/api/v1/pods", query={"fieldSelector": selector})
                version = listed["metadata"]["resourceVersion"]
                seen = set()
                for pod in listed.get("items") or ():
                    seen.add(pod["metadata"]["uid"])
                    self._dispatch(node, pod)
                with self._lock:
                    stale = [w for u, w in self.workers.items() if w.node is node and u not in seen]
                for w in stale:
                    w.gone()
                while not self.stopping.is_set():
                    query = {
                        "fieldSelector": selector,
                        "resourceVersion": version,
                        "timeoutSeconds": 30,
                        "allowWatchBookmarks": "true",
                    }
                    relist = False
                    for event in self.api.watch("/api/v1/pods", query):
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            relist = True  # typically 410 Gone: the version is too old
                            break
                        version = obj.get("metadata", {}).get("resourceVersion", version)
                        if kind == "BOOKMARK":
                            continue
                        if kind == "DELETED":
                            with self._lock:
                                worker = self.workers.get(obj["metadata"]["uid"])
                            if worker is not None:
                                worker.gone()
                        else:
                            self._dispatch(node, obj)
                    if relist:
                        break
            except (ApiError, ValueError, KeyError) as exc:
                log.warning("pod watch of %s: %s; relisting", node.name, exc)
                time.sleep(1.0)

    # --- storage --------------------------------------------------------------------------------------

    def _provisioner(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                provision_once(self.api, self.state_dir)
            except ApiError as exc:
                log.warning("provisioner: %s", exc)


# ------------------------------------------------------------------------------------- from Python


class KubeletProcess:
    """`python -m tests.harness.kubelet run` as a child process, for fixtures and `make cluster`."""

    def __init__(
        self, kubeconfig: Path, state_dir: Path, *, nodes: int = 2, log_path: Path | None = None
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.state_dir = Path(state_dir).resolve()
        self.nodes = nodes
        self.node_names = [f"{DEFAULT_NODE_PREFIX}-{i}" for i in range(nodes)]
        self.process = ManagedProcess(
            name="kubelet",
            argv=[
                sys.executable,
                "-m",
                "tests.harness.kubelet",
                "run",
                f"--kubeconfig={self.kubeconfig}",
                f"--state-dir={self.state_dir}",
                f"--nodes={nodes}",
            ],
            log_path=log_path or self.state_dir / "kubelet.log",
            cwd=repo_root(),
        )

    def start(self, timeout: float = 60.0) -> KubeletProcess:
        self.process.start()
        api = Api(str(self.kubeconfig))

        def ready() -> bool:
            if not self.process.alive():
                raise RuntimeError(
                    f"process kubelet exited; log {self.process.log_path}:\n{self.process.log_tail()}"
                )
            for name in self.node_names:
                node = api.get(f"/api/v1/nodes/{name}")
                conditions = (node or {}).get("status", {}).get("conditions") or ()
                if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    return False
                if any(
                    t.get("key") == "node.kubernetes.io/not-ready"
                    for t in (node or {}).get("spec", {}).get("taints") or ()
                ):
                    return False
            return True

        wait_until(ready, timeout=timeout, interval=0.3, what=f"nodes {', '.join(self.node_names)} Ready")
        progress(
            f"process kubelet pid {self.process.pid}: nodes {', '.join(self.node_names)}; "
            f"log {self.process.log_path}"
        )
        return self

    def stop(self) -> None:
        self.process.stop(grace=40.0)
        sweep_stale_processes(self.state_dir)

    def pod_dirs(self, namespace: str, pod: str) -> list[Path]:
        return sorted((self.state_dir / "pods" / namespace).glob(f"{pod}_*"), key=lambda p: p.stat().st_mtime)

    def container_pid(self, namespace: str, pod: str, container: str) -> int | None:
        """The PID of the pod's running container process (None if it is not running now)."""
        for directory in reversed(self.pod_dirs(namespace, pod)):
            pid = read_pid_file(directory / f"{container}.pid")
            if pid is not None:
                return pid
        return None

    def container_log(self, namespace: str, pod: str, container: str, lines: int = 40) -> str:
        dirs = self.pod_dirs(namespace, pod)
        if not dirs:
            return "(no such pod ran here)"
        try:
            text = (dirs[-1] / f"{container}.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def log_tail(self, lines: int = 60) -> str:
        return self.process.log_tail(lines)


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.kubelet", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="register the nodes and run their pods until SIGTERM")
    run.add_argument("--kubeconfig", required=True)
    run.add_argument("--state-dir", required=True, type=Path)
    run.add_argument("--nodes", type=int, default=1)
    run.add_argument("--node-prefix", default=DEFAULT_NODE_PREFIX)
    run.add_argument("--cpu", default=None, help="allocatable CPUs per node (default: this machine's)")
    run.add_argument("--memory", default=None, help="allocatable memory per node (default: this machine's)")
    run.add_argument("--no-provisioner", action="store_true", help="do not create PVs for pending PVCs")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s", stream=sys.stderr
    )
    kubelet = Kubelet(
        Api(args.kubeconfig),
        args.state_dir,
        nodes=args.nodes,
        node_prefix=args.node_prefix,
        cpu=args.cpu,
        memory=args.memory,
        provision=not args.no_provisioner,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: kubelet.stopping.set())
    kubelet.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
