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

Run: `python -m tests.harness.kubelet run --kubeconfig K --state-dir D [--nodes 2]`; SIGTERM stops every
pod's processes and marks the nodes NotReady. `KubeletProcess` starts and stops that from Python.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.harness.common import ManagedProcess, progress, repo_root, wait_until
from tests.harness.kubelet_api import Api, ApiError, ns_path
from tests.harness.kubelet_env import (
    ConfigError,
    container_env,
    expand,
    field_ref,
    resolve_services,
    rewrite_paths,
)
from tests.harness.kubelet_probe import ProbeState, run_probe

log = logging.getLogger("process-kubelet")

KUBELET_VERSION = "v1.37.2-process"
PROVISIONER = "kvs2.io/process-kubelet"
PROVISIONED_LABEL = "kvs2.io/provisioned-by"
HOST_IP = "127.0.0.1"
TICK = 0.25
LEASE_SECONDS = 40
MAX_BACKOFF = 60.0
#: A container that ran this long without exiting starts its back-off over.
BACKOFF_RESET_AFTER = 60.0
DEFAULT_NODE_PREFIX = "kvs2-node"


def rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_subnet(index: int) -> str:
    return f"127.0.{10 + index}"


# ------------------------------------------------------------------------------------------ processes


def _start_ticks(pid: int) -> str | None:
    """The process start time from /proc (field 22): with the PID it names a process unambiguously."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def write_pid_file(path: Path, pid: int) -> None:
    path.write_text(f"{pid} {_start_ticks(pid) or ''}\n")


def read_pid_file(path: Path) -> int | None:
    """The PID recorded in `path` if that very process still runs (same start time, not a zombie)."""
    try:
        pid_text, _, ticks = path.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if not ticks or _start_ticks(pid) != ticks:
        return None
    try:
        if "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text():
            return None
    except OSError:
        return None
    return pid


def sweep_stale_processes(state_dir: Path) -> int:
    """Kill container processes a previous (crashed) kubelet left behind; returns how many."""
    killed = 0
    for pid_file in (state_dir / "pods").glob("*/*/*.pid"):
        pid = read_pid_file(pid_file)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
                killed += 1
        pid_file.unlink(missing_ok=True)
    return killed


# --------------------------------------------------------------------------------------------- nodes


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


# ---------------------------------------------------------------------------------------- containers


@dataclass
class Container:
    spec: dict[str, Any]
    init: bool
    proc: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    ever_started: bool = False
    done: bool = False  # exited and will not run again
    last_exit: int | None = None
    last_terminated: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    started_mono: float = 0.0
    backoff_until: float = 0.0
    crashes: int = 0
    container_id: str = ""
    started: bool = False
    ready: bool = False
    startup: ProbeState | None = None
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any]:
        running = "running" in self.state
        out: dict[str, Any] = {
            "name": self.name,
            "image": str(self.spec.get("image", "")),
            "imageID": "",
            "ready": bool(self.ready and running),
            "started": bool(self.started and running),
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


class VolumesNotReady(Exception):
    """A volume cannot be set up yet (e.g. its PVC is not bound); the pod waits in ContainerCreating."""


# --------------------------------------------------------------------------------------------- pods


class PodWorker(threading.Thread):
    """Drives one pod from start to deletion; the watch hands it each new version of the pod."""

    def __init__(self, kubelet: Kubelet, node: NodeAgent, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.api = kubelet.api
        self.node = node
        self.uid = str(meta["uid"])
        self.namespace = str(meta["namespace"])
        self.pod_name = str(meta["name"])
        self._pod = pod
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._gone = False
        self.dir = kubelet.state_dir / "pods" / self.namespace / f"{self.pod_name}_{self.uid[:8]}"
        self.ip: str | None = None
        spec = pod["spec"]
        old_status = pod.get("status") or {}
        previous = {
            s["name"]: s
            for s in (
                *(old_status.get("containerStatuses") or ()),
                *(old_status.get("initContainerStatuses") or ()),
            )
        }
        self.init_containers = [Container(dict(c), True) for c in spec.get("initContainers") or ()]
        self.containers = [Container(dict(c), False) for c in spec.get("containers") or ()]
        for c in (*self.init_containers, *self.containers):
            old = previous.get(c.name)
            if old is not None:  # adopted after a kubelet restart: its containers ran before
                c.restart_count = int(old.get("restartCount", 0))
                c.ever_started = bool(
                    old.get("state", {}).get("running") or old.get("state", {}).get("terminated")
                )
        self.initialized = not self.init_containers
        self.failed_init = False
        self.volumes: dict[str, str] | None = None
        self.volume_message = ""
        self.sa_token: str | None = None
        self.start_time = (pod.get("status") or {}).get("startTime") or rfc3339()
        self.transitions: dict[str, tuple[str, str]] = {}
        self.last_status: dict[str, Any] | None = None

    # --- fed by the watch ----------------------------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        with self._lock:
            self._pod = pod
        self._wake.set()

    def gone(self) -> None:
        self._gone = True
        self._wake.set()

    @property
    def pod(self) -> dict[str, Any]:
        with self._lock:
            return self._pod

    # --- lifecycle ------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: worker failed", self.namespace, self.pod_name)
        finally:
            self._kill_all(grace=2.0)
            self.node.ips.release(self.ip)
            self.kubelet.forget(self.uid)

    def _run(self) -> None:
        pod = self.pod
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            self._wait_for_deletion_only()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "home").mkdir(exist_ok=True)
        if pod["spec"].get("hostNetwork"):
            self.ip = HOST_IP
        else:
            self.ip = self.node.ips.take((pod.get("status") or {}).get("podIP"))
        log.info("pod %s/%s: ip %s, dir %s", self.namespace, self.pod_name, self.ip, self.dir)
        while True:
            pod = self.pod
            if self._gone:
                log.info(
                    "pod %s/%s: removed from the API; stopping its processes", self.namespace, self.pod_name
                )
                self._kill_all(grace=2.0)
                return
            if self.kubelet.stopping.is_set():
                self._kill_all(grace=min(10.0, self._grace(pod)))
                return
            if pod["metadata"].get("deletionTimestamp"):
                self._terminate_and_delete(pod)
                return
            self._step(pod)
            self._publish(pod)
            self._wake.wait(TICK)
            self._wake.clear()

    def _wait_for_deletion_only(self) -> None:
        """A pod that finished before this kubelet started: nothing to run, only its deletion to finish."""
        while not self._gone and not self.kubelet.stopping.is_set():
            if self.pod["metadata"].get("deletionTimestamp"):
                self._delete_object()
                return
            self._wake.wait(1.0)
            self._wake.clear()

    def _grace(self, pod: Mapping[str, Any]) -> float:
        meta_grace = pod["metadata"].get("deletionGracePeriodSeconds")
        if meta_grace is not None:
            return float(meta_grace)
        return float(pod["spec"].get("terminationGracePeriodSeconds", 30))

    def _terminate_and_delete(self, pod: Mapping[str, Any]) -> None:
        grace = self._grace(pod)
        log.info("pod %s/%s: deleting, grace %.0fs", self.namespace, self.pod_name, grace)
        self._kill_all(grace=grace)
        now = rfc3339()
        for c in self.containers:
            if "running" in c.state:
                c.state = {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now}}
        self._publish(pod)
        self._delete_object()
        volumes = self.dir / "volumes"
        shutil.rmtree(volumes, ignore_errors=True)  # emptyDirs die with the pod; PV directories do not

    def _delete_object(self) -> None:
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}
        with contextlib.suppress(ApiError):
            self.api.request("DELETE", ns_path("v1", "pods", self.namespace, self.pod_name), body=body)

    def _kill_all(self, grace: float) -> None:
        """SIGTERM every running container (in parallel, like the kubelet), SIGKILL after `grace`."""
        live = [c for c in (*self.init_containers, *self.containers) if c.running()]
        for c in live:
            self._signal(c, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        deadline = time.monotonic() + grace
        while any(c.running() for c in live) and time.monotonic() < deadline:
            time.sleep(0.1)
        for c in live:
            if c.running():
                log.info(
                    "pod %s/%s: %s did not stop in %.0fs: SIGKILL",
                    self.namespace,
                    self.pod_name,
                    c.name,
                    grace,
                )
                self._signal(c, signal.SIGKILL)
        for c in live:
            if c.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(timeout=5)
                self._record_exit(c, c.proc.returncode if c.proc.returncode is not None else -9)

    @staticmethod
    def _signal(c: Container, sig: int) -> None:
        if c.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, sig)

    # --- one pass -------------------------------------------------------------------------------------

    def _step(self, pod: dict[str, Any]) -> None:
        if self.volumes is None:
            try:
                self.volumes = self._setup_volumes(pod)
                self.volume_message = ""
            except VolumesNotReady as exc:
                self.volume_message = str(exc)
                return
        now = time.monotonic()
        policy = str(pod["spec"].get("restartPolicy", "Always"))
        if not self.initialized:
            for c in self.init_containers:
                if c.done and c.last_exit == 0:
                    continue
                self._drive(pod, c, now, "OnFailure" if policy == "Always" else policy)
                if c.done and c.last_exit != 0:
                    self.failed_init = True
                break
            else:
                self.initialized = True
            if not self.initialized:
                return
        if self.failed_init:
            return
        for c in self.containers:
            self._drive(pod, c, now, policy)

    def _drive(self, pod: dict[str, Any], c: Container, now: float, policy: str) -> None:
        if c.proc is not None:
            code = c.proc.poll()
            if code is None:
                self._probe(pod, c)
                return
            self._record_exit(c, code)
        if c.done:
            return
        if c.ever_started and c.proc is None and c.last_exit is not None:
            restart = policy == "Always" or (policy == "OnFailure" and c.last_exit != 0)
            if not restart:
                c.done = True
                return
        if now < c.backoff_until:
            remaining = c.backoff_until - now
            c.last_state = {"terminated": c.last_terminated}
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {remaining:.0f}s restarting failed container={c.name} "
                    f"pod={self.pod_name}_{self.namespace}({self.uid})",
                }
            }
            return
        self._start(pod, c)

    def _record_exit(self, c: Container, code: int) -> None:
        if c.proc is None:
            return
        now = time.monotonic()
        exit_code = code if code >= 0 else 128 - code
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": c.started_at,
            "finishedAt": rfc3339(),
            "containerID": c.container_id,
        }
        if code < 0:
            terminated["signal"] = -code
        log.info("pod %s/%s: container %s exited (%s)", self.namespace, self.pod_name, c.name, exit_code)
        c.proc = None
        c.state = {"terminated": terminated}
        c.last_terminated = terminated
        c.last_exit = exit_code
        c.ready = c.started = False
        if now - c.started_mono >= BACKOFF_RESET_AFTER:
            c.crashes = 0
        c.backoff_until = now + (0.0 if c.crashes == 0 else min(MAX_BACKOFF, 2.0 ** (c.crashes - 1)))
        c.crashes += 1
        (self.dir / f"{c.name}.pid").unlink(missing_ok=True)

    def _mounts(self, c: Container) -> list[tuple[str, str]]:
        assert self.volumes is not None
        mounts = []
        for m in c.spec.get("volumeMounts") or ():
            host = self.volumes.get(str(m["name"]))
            if host is None:
                continue
            if m.get("subPath"):
                host = str(Path(host) / str(m["subPath"]))
                Path(host).mkdir(parents=True, exist_ok=True)
            mounts.append((str(m["mountPath"]), host))
        return mounts

    def _base_env(self, pod: Mapping[str, Any]) -> dict[str, str]:
        venv_bin = repo_root() / ".venv" / "bin"
        env = {
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
            "HOME": str(self.dir / "home"),
            "HOSTNAME": str(pod["spec"].get("hostname") or self.pod_name),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }
        if self.sa_token is not None:
            env["KUBECONFIG"] = str(self._write_kubeconfig(self.sa_token))
        return env

    def _write_kubeconfig(self, token: str) -> Path:
        """In-cluster credentials in the one form a process can find without /var/run/secrets."""
        cluster: dict[str, Any] = {"server": self.api.host}
        if self.api.ca_file:
            cluster["certificate-authority-data"] = base64.b64encode(
                Path(self.api.ca_file).read_bytes()
            ).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "in-cluster", "cluster": cluster}],
            "users": [{"name": "service-account", "user": {"token": token}}],
            "contexts": [
                {"name": "in-cluster", "context": {"cluster": "in-cluster", "user": "service-account"}}
            ],
            "current-context": "in-cluster",
        }
        path = self.dir / "kubeconfig"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def _start(self, pod: dict[str, Any], c: Container) -> None:
        now = time.monotonic()
        # The downward API sees the pod as this kubelet knows it, podIP included.
        view = dict(pod, status={**(pod.get("status") or {}), **self._ips()})
        mounts = self._mounts(c)
        try:
            env = container_env(view, c.spec, self.kubelet.lookup, {})
        except ConfigError as exc:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            c.backoff_until = now + 1.0
            return
        resolve = self.kubelet.resolve_service

        def finish(text: str) -> str:
            return resolve_services(rewrite_paths(text, mounts), resolve)

        argv = [finish(expand(str(a), env)) for a in (c.spec.get("command") or ())]
        argv += [finish(expand(str(a), env)) for a in (c.spec.get("args") or ())]
        if not c.spec.get("command"):
            c.state = {
                "waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": f"the process kubelet runs no images: container {c.name} needs an explicit "
                    f"`command` (image {c.spec.get('image')!r} is ignored)",
                }
            }
            c.backoff_until = now + 5.0
            return
        # Only what the pod spec defines is rewritten: the kubelet's own paths (PATH, HOME, KUBECONFIG)
        # may well lie below a directory some mount path names, like /tmp.
        env = {**self._base_env(pod), **{k: finish(v) for k, v in env.items()}}
        cwd = rewrite_paths(str(c.spec.get("workingDir") or ""), mounts) or str(self.dir)
        if c.ever_started:
            c.last_state = {"terminated": c.last_terminated} if c.last_terminated else {}
            c.restart_count += 1
        log_path = self.dir / f"{c.name}.log"
        try:
            with log_path.open("ab") as out:
                out.write(f"--- {rfc3339()} start #{c.restart_count}: {argv}\n".encode())
                out.flush()
                c.proc = subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                )
        except OSError as exc:
            c.ever_started = True
            c.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": f"{argv[0]}: {exc}",
                    "startedAt": rfc3339(),
                    "finishedAt": rfc3339(),
                }
            }
            c.last_terminated = c.state["terminated"]
            c.last_exit = 128
            c.backoff_until = now + (0.0 if c.crashes == 0 else min(MAX_BACKOFF, 2.0 ** (c.crashes - 1)))
            c.crashes += 1
            return
        write_pid_file(self.dir / f"{c.name}.pid", c.proc.pid)
        log.info("pod %s/%s: started %s pid %d: %s", self.namespace, self.pod_name, c.name, c.proc.pid, argv)
        c.env = env
        c.ever_started = True
        c.started_at = rfc3339()
        c.started_mono = now
        c.container_id = f"process://{self.node.name}/{c.proc.pid}"
        c.state = {"running": {"startedAt": c.started_at}}
        spec = c.spec
        c.startup = ProbeState(spec["startupProbe"], now) if spec.get("startupProbe") and not c.init else None
        c.readiness = (
            ProbeState(spec["readinessProbe"], now) if spec.get("readinessProbe") and not c.init else None
        )
        c.liveness = (
            ProbeState(spec["livenessProbe"], now) if spec.get("livenessProbe") and not c.init else None
        )
        c.started = c.startup is None
        c.ready = c.readiness is None

    def _probe(self, pod: dict[str, Any], c: Container) -> None:
        now = time.monotonic()
        assert self.ip is not None

        def attempt(state: ProbeState) -> None:
            ok, message = run_probe(
                state.spec, pod_ip=self.ip or HOST_IP, container=c.spec, env=c.env, cwd=str(self.dir)
            )
            state.record(ok, message)

        if c.startup is not None and not c.started:
            if c.startup.due(now):
                attempt(c.startup)
                if c.startup.result is True:
                    c.started = True
                elif c.startup.result is False:
                    self._restart_unhealthy(pod, c, f"startup probe failed: {c.startup.last_message}")
            return
        if c.liveness is not None and c.liveness.due(now):
            attempt(c.liveness)
            if c.liveness.result is False:
                self._restart_unhealthy(pod, c, f"liveness probe failed: {c.liveness.last_message}")
                return
        if c.readiness is not None and c.readiness.due(now):
            attempt(c.readiness)
            c.ready = c.readiness.result is True

    def _restart_unhealthy(self, pod: dict[str, Any], c: Container, why: str) -> None:
        log.info("pod %s/%s: container %s %s; restarting it", self.namespace, self.pod_name, c.name, why)
        self._signal(c, signal.SIGTERM)
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        if c.proc is not None:
            try:
                c.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(c, signal.SIGKILL)
                c.proc.wait()
            self._record_exit(c, c.proc.returncode)

    # --- volumes --------------------------------------------------------------------------------------

    def _setup_volumes(self, pod: Mapping[str, Any]) -> dict[str, str]:
        volumes: dict[str, str] = {}
        for v in pod["spec"].get("volumes") or ():
            name = str(v["name"])
            local = self.dir / "volumes" / name
            if "persistentVolumeClaim" in v:
                volumes[name] = self._pvc_dir(str(v["persistentVolumeClaim"]["claimName"]))
                continue
            if "hostPath" in v:
                path = Path(str(v["hostPath"]["path"]))
                path.mkdir(parents=True, exist_ok=True)
                volumes[name] = str(path)
                continue
            local.mkdir(parents=True, exist_ok=True)
            try:
                if "configMap" in v:
                    self._write_keys(local, "ConfigMap", v["configMap"])
                elif "secret" in v:
                    self._write_keys(local, "Secret", {**v["secret"], "name": v["secret"].get("secretName")})
                elif "downwardAPI" in v:
                    self._write_downward(local, v["downwardAPI"].get("items") or (), pod)
                elif "projected" in v:
                    self._write_projected(local, v["projected"].get("sources") or (), pod)
            except ConfigError as exc:
                raise VolumesNotReady(f"volume {name}: {exc}") from exc
            volumes[name] = str(local)
        return volumes

    def _pvc_dir(self, claim: str) -> str:
        pvc = self.api.get(ns_path("v1", "persistentvolumeclaims", self.namespace, claim))
        if pvc is None:
            raise VolumesNotReady(f'persistentvolumeclaim "{claim}" not found')
        volume_name = (pvc.get("spec") or {}).get("volumeName")
        if (pvc.get("status") or {}).get("phase") != "Bound" or not volume_name:
            raise VolumesNotReady(f'persistentvolumeclaim "{claim}" is not bound yet')
        pv = self.api.get(f"/api/v1/persistentvolumes/{volume_name}")
        if pv is None:
            raise VolumesNotReady(f'persistentvolume "{volume_name}" of claim "{claim}" not found')
        pv_spec = pv.get("spec") or {}
        path = (pv_spec.get("hostPath") or pv_spec.get("local") or {}).get("path")
        if not path:
            raise VolumesNotReady(f'persistentvolume "{volume_name}" has no hostPath/local path to use')
        Path(path).mkdir(parents=True, exist_ok=True)
        return str(path)

    def _write_keys(self, where: Path, kind: str, ref: Mapping[str, Any]) -> None:
        obj = self.kubelet.lookup(kind, self.namespace, str(ref.get("name", "")))
        if obj is None:
            if ref.get("optional"):
                return
            raise ConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
        data = dict(obj.get("data") or {})
        decoded = {k: base64.b64decode(v) if kind == "Secret" else str(v).encode() for k, v in data.items()}
        items = ref.get("items")
        pairs = [(str(i["key"]), str(i["path"])) for i in items] if items else [(k, k) for k in decoded]
        for key, rel in pairs:
            if key in decoded:
                target = where / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(decoded[key])

    def _write_downward(
        self, where: Path, items: Sequence[Mapping[str, Any]], pod: Mapping[str, Any]
    ) -> None:
        view = dict(pod, status={**(pod.get("status") or {}), **self._ips()})
        for item in items:
            if "fieldRef" in item:
                target = where / str(item["path"])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(field_ref(view, str(item["fieldRef"]["fieldPath"])))

    def _write_projected(
        self, where: Path, sources: Sequence[Mapping[str, Any]], pod: Mapping[str, Any]
    ) -> None:
        for source in sources:
            if "configMap" in source:
                self._write_keys(where, "ConfigMap", source["configMap"])
            elif "secret" in source:
                self._write_keys(where, "Secret", source["secret"])
            elif "downwardAPI" in source:
                self._write_downward(where, source["downwardAPI"].get("items") or (), pod)
            elif "serviceAccountToken" in source:
                spec = source["serviceAccountToken"]
                sa = pod["spec"].get("serviceAccountName") or "default"
                request = {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {
                        "audiences": [spec["audience"]] if spec.get("audience") else None,
                        "expirationSeconds": int(spec.get("expirationSeconds", 3607)),
                        "boundObjectRef": {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "name": self.pod_name,
                            "uid": self.uid,
                        },
                    },
                }
                status, data = self.api.request(
                    "POST", ns_path("v1", "serviceaccounts", self.namespace, sa) + "/token", body=request
                )
                if status < 300:
                    self.sa_token = str(data["status"]["token"])
                    (where / str(spec.get("path", "token"))).write_text(self.sa_token)
                else:
                    log.warning(
                        "pod %s/%s: no service account token: %s", self.namespace, self.pod_name, data
                    )

    # --- status ---------------------------------------------------------------------------------------

    def _ips(self) -> dict[str, Any]:
        return {
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
        }

    def _phase(self) -> str:
        if self.failed_init:
            return "Failed"
        if not self.initialized or any(not c.ever_started for c in self.containers):
            return "Pending"
        if all(c.done for c in self.containers):
            return "Succeeded" if all(c.last_exit == 0 for c in self.containers) else "Failed"
        return "Running"

    def _condition(self, type_: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        status = "True" if ok else "False"
        previous = self.transitions.get(type_)
        if previous is None or previous[0] != status:
            self.transitions[type_] = (status, rfc3339())
        cond: dict[str, Any] = {
            "type": type_,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": self.transitions[type_][1],
        }
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        return cond

    def _status(self, pod: Mapping[str, Any]) -> dict[str, Any]:
        phase = self._phase()
        unready = [c.name for c in self.containers if not (c.ready and "running" in c.state)]
        terminal = phase in ("Succeeded", "Failed")
        if terminal:
            reason, message = "PodCompleted", ""
        else:
            reason = "ContainersNotReady" if unready else ""
            message = f"containers with unready status: [{' '.join(unready)}]" if unready else ""
        conditions = [
            self._condition("PodReadyToStartContainers", self.volumes is not None and not terminal),
            self._condition(
                "Initialized",
                self.initialized,
                "" if self.initialized else "ContainersNotInitialized",
                "" if self.initialized else "containers with incomplete status: init",
            ),
            self._condition("Ready", not unready and phase == "Running", reason, message),
            self._condition("ContainersReady", not unready and phase == "Running", reason, message),
        ]
        conditions += [
            c for c in (pod.get("status") or {}).get("conditions") or () if c.get("type") == "PodScheduled"
        ]
        containers = [c.status() for c in self.containers]
        if self.volume_message:
            for st in containers:
                if "waiting" in st["state"]:
                    st["state"] = {"waiting": {"reason": "ContainerCreating", "message": self.volume_message}}
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions,
            **self._ips(),
            "startTime": self.start_time,
            "containerStatuses": containers,
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        return status

    def _publish(self, pod: Mapping[str, Any]) -> None:
        status = self._status(pod)
        if status == self.last_status:
            return
        try:
            code, data = self.api.request(
                "PATCH",
                ns_path("v1", "pods", self.namespace, self.pod_name) + "/status",
                body={"status": status},
                content_type="application/merge-patch+json",
            )
        except ApiError as exc:
            log.warning("pod %s/%s: status not written: %s", self.namespace, self.pod_name, exc)
            return
        if code == 404:
            self._gone = True
        elif code < 300 and data.get("metadata", {}).get("uid") == self.uid:
            self.last_status = status
        else:
            log.warning(
                "pod %s/%s: status not written: %s", self.namespace, self.pod_name, data.get("message")
            )


# ------------------------------------------------------------------------------------------ kubelet


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
        memory = memory or f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki"
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

    def resolve_service(self, namespace: str, name: str, port: int | None) -> str | None:
        """A ready backend of Service namespace/name for `port` (its first port when None), chosen the
        way the endpoints controller would: pods matching the selector, Ready (or any, when the Service
        publishes not-ready addresses), the target port resolved by name from the container ports.

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
                self._provision_once()
            except ApiError as exc:
                log.warning("provisioner: %s", exc)

    def _provision_once(self) -> None:
        claims = self.api.call("GET", "/api/v1/persistentvolumeclaims").get("items") or ()
        for pvc in claims:
            meta, spec = pvc["metadata"], pvc.get("spec") or {}
            if (pvc.get("status") or {}).get("phase") != "Pending" or spec.get("volumeName"):
                continue
            if meta.get("deletionTimestamp") or spec.get("selector") or spec.get("dataSource"):
                continue
            path = self.state_dir / "pv" / meta["namespace"] / f"{meta['name']}_{meta['uid'][:8]}"
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
            status, data = self.api.request("POST", "/api/v1/persistentvolumes", body=pv)
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
            self.api.call(
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
            status, _ = self.api.request("DELETE", f"/api/v1/persistentvolumes/{name}")
            path = ((pv.get("spec") or {}).get("hostPath") or {}).get("path")
            if status < 300 and path and Path(path).is_relative_to(self.state_dir):
                shutil.rmtree(path, ignore_errors=True)
                log.info("released %s: volume and its directory %s removed", name, path)


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
