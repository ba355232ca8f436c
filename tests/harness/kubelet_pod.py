"""One pod on the process kubelet: its containers as processes, its volumes as directories, its probes,
restarts and status, from the moment it is bound to a node until its object is deleted."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.harness.common import popen, repo_root
from tests.harness.kubelet_api import Api, ApiError, ns_path
from tests.harness.kubelet_env import (
    ConfigError,
    container_env,
    expand,
    field_ref,
    resolve_services,
    rewrite_paths,
)
from tests.harness.kubelet_node import HOST_IP, NodeAgent, rfc3339
from tests.harness.kubelet_pids import write_pid_file
from tests.harness.kubelet_probe import ProbeState, run_probe

log = logging.getLogger("process-kubelet")

TICK = 0.25
MAX_BACKOFF = 60.0
#: A container that ran this long without exiting starts its back-off over.
BACKOFF_RESET_AFTER = 60.0


class PodHost(Protocol):
    """What a pod worker needs from the kubelet that runs it."""

    api: Api
    state_dir: Path
    stopping: threading.Event

    def lookup(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    def resolve_service(
        self, namespace: str, name: str, port: int | None, asking_ip: str | None = None
    ) -> str | None: ...

    def forget(self, uid: str) -> None: ...


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

    def __init__(self, kubelet: PodHost, node: NodeAgent, pod: dict[str, Any]) -> None:
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

        def resolve(namespace: str, name: str, port: int | None) -> str | None:
            return self.kubelet.resolve_service(namespace, name, port, asking_ip=self.ip)

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
                c.proc = popen(  # dies with the kubelet, so with the run that started it
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
