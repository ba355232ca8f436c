"""The process kubelet does a kubelet's job: these pods are scheduled by the real kube-scheduler, their
processes really run on their own loopback addresses, their probes really probe, and what the API shows
(phase, readiness, restart counts) comes from those processes."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Kube, container_status, pod_ready

pytestmark = pytest.mark.e2e

PY = sys.executable

# Writes what it sees to its volume, then serves HTTP on the pod IP (the readiness probe's target).
SERVER = """
import functools, os, sys, http.server, pathlib
d = pathlib.Path(sys.argv[1])
d.mkdir(parents=True, exist_ok=True)
(d / "env.txt").write_text("\\n".join(f"{k}={os.environ.get(k, '<unset>')}" for k in sys.argv[2:]))
(d / "hits").touch()
with (d / "hits").open("a") as f:
    f.write("start\\n")
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(d))
http.server.ThreadingHTTPServer((os.environ["POD_IP"], 8080), handler).serve_forever()
"""


def _pod(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_pod_runs_with_its_env_volume_ip_and_http_readiness(kube: Kube) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "stringData": {"user": "alice"},
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "fast"}},
        _pod(
            "web",
            terminationGracePeriodSeconds=5,
            volumes=[{"name": "scratch", "emptyDir": {}}],
            containers=[
                {
                    "name": "web",
                    "image": "ignored:1",
                    "command": [PY, "-c", SERVER],
                    "args": ["/data/out", "POD_IP", "NAME", "NS", "USER", "MODE", "GREETING", "LITERAL"],
                    "env": [
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "USER", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
                        {
                            "name": "MODE",
                            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}},
                        },
                        {"name": "GREETING", "value": "hi $(USER) at $(POD_IP):8080 from $(UNDEFINED)"},
                        {"name": "LITERAL", "value": "$$(USER)"},
                    ],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/data"}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                }
            ],
        ),
    )
    pod = kube.wait("pod web Ready", lambda: (p := kube.get("pod", "web")) and pod_ready(p) and p, timeout=60)
    ip = pod["status"]["podIP"]
    assert ip.startswith("127.0.1") and pod["spec"]["nodeName"].startswith("kvs2-node-")
    assert pod["status"]["phase"] == "Running"
    assert container_status(pod, "web")["ready"] is True
    with urllib.request.urlopen(f"http://{ip}:8080/env.txt", timeout=5) as resp:  # served from the emptyDir
        env = dict(line.split("=", 1) for line in resp.read().decode().splitlines())
    ns = kube.namespace
    assert env == {
        "POD_IP": ip,
        "NAME": "web",
        "NS": ns,
        "USER": "alice",
        "MODE": "fast",
        "GREETING": f"hi alice at {ip}:8080 from $(UNDEFINED)",
        "LITERAL": "$(USER)",
    }


def test_crash_restarts_and_probe_failures_are_reported(kube: Kube) -> None:
    # Exits 3 on its first two runs, then stays up: restartPolicy Always brings it back each time.
    script = (
        "import pathlib, sys, time\n"
        "p = pathlib.Path(sys.argv[1]) / 'runs'\n"
        "n = len(p.read_text()) if p.exists() else 0\n"
        "p.write_text('x' * (n + 1))\n"
        "sys.exit(3) if n < 2 else time.sleep(3600)\n"
    )
    kube.apply(
        _pod(
            "flaky",
            terminationGracePeriodSeconds=1,
            volumes=[{"name": "state", "emptyDir": {}}],
            containers=[
                {
                    "name": "main",
                    "image": "x",
                    "command": [PY, "-c", script, "/state"],
                    "volumeMounts": [{"name": "state", "mountPath": "/state"}],
                }
            ],
        ),
        _pod(
            "once",
            restartPolicy="Never",
            containers=[{"name": "main", "image": "x", "command": [PY, "-c", "raise SystemExit(7)"]}],
        ),
        _pod(
            "never-ready",
            terminationGracePeriodSeconds=1,
            containers=[
                {
                    "name": "main",
                    "image": "x",
                    "command": [PY, "-c", "import time; time.sleep(3600)"],
                    "readinessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1},
                }
            ],
        ),
    )

    def flaky_up() -> dict[str, Any] | None:
        pod = kube.get("pod", "flaky")
        st = container_status(pod, "main")
        return (
            pod
            if st.get("restartCount") == 2 and "running" in st.get("state", {}) and pod_ready(pod)
            else None
        )

    pod = kube.wait("flaky to run after two restarts", flaky_up, timeout=60)
    last = container_status(pod, "main")["lastState"]["terminated"]
    assert last["exitCode"] == 3 and last["reason"] == "Error"

    once = kube.wait(
        "pod once Failed",
        lambda: (p := kube.get("pod", "once")) and p["status"].get("phase") == "Failed" and p,
    )
    assert container_status(once, "main")["state"]["terminated"]["exitCode"] == 7
    assert container_status(once, "main")["restartCount"] == 0

    never = kube.wait(
        "never-ready running",
        lambda: (
            (p := kube.get("pod", "never-ready"))
            and "running" in container_status(p, "main").get("state", {})
            and p
        ),
    )
    time.sleep(3)
    never = kube.get("pod", "never-ready")
    assert not pod_ready(never) and container_status(never, "main")["ready"] is False


def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(kube: Kube, tmp_path: Path) -> None:
    """The process notes each signal it can see in a file outside the pod's directory: SIGTERM first,
    then (it ignores it) it keeps running — the grace period — and then SIGKILL, which it cannot note,
    ends it."""
    journal = tmp_path / "journal"
    stubborn = (
        "import signal, time, pathlib\n"
        f"journal = pathlib.Path({str(journal)!r})\n"
        "def note(text):\n"
        "    with journal.open('a') as f: f.write(text + '\\n')\n"
        "signal.signal(signal.SIGTERM, lambda *_: note('TERM'))\n"
        "print('up', flush=True)\n"
        "while True:\n"
        "    time.sleep(0.2)\n"
        "    if journal.exists(): note('alive')\n"
    )
    kube.apply(
        _pod(
            "stubborn",
            terminationGracePeriodSeconds=3,
            containers=[{"name": "main", "image": "x", "command": [PY, "-c", stubborn]}],
        )
    )
    kube.wait("stubborn running", lambda: kube.kubelet.container_pid(kube.namespace, "stubborn", "main"))
    kube.wait("stubborn to print", lambda: "up" in kube.pod_logs("stubborn", "main"))
    pid = kube.kubelet.container_pid(kube.namespace, "stubborn", "main")
    assert pid is not None
    kube.kubectl("delete", "pod", "stubborn", "--wait=true", timeout=60)
    assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    notes = journal.read_text().split()
    assert notes[0] == "TERM", notes  # asked politely first
    assert notes.count("TERM") == 1, notes
    assert "alive" in notes[1:], notes  # not killed at once: it had its grace period


def test_statefulset_pvc_directory_survives_pod_recreation(kube: Kube) -> None:
    script = (
        "import os, pathlib, time\n"
        "f = pathlib.Path(os.environ['DATA']) / 'boots'\n"
        "f.write_text(f.read_text() + 'x' if f.exists() else 'x')\n"
        "time.sleep(3600)\n"
    )
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 2,
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {
                    "metadata": {"labels": {"app": "db"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "db",
                                "image": "x",
                                "command": [PY, "-c", script],
                                "env": [{"name": "DATA", "value": "/var/lib/db"}],
                                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/db"}],
                            }
                        ],
                    },
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    }
                ],
            },
        }
    )

    def ready_pods() -> list[dict[str, Any]] | None:
        pods = [p for p in kube.items("pods", "app=db") if pod_ready(p)]
        return pods if len(pods) == 2 else None

    pods = kube.wait("two db pods Ready", ready_pods, timeout=90)
    assert {p["spec"]["nodeName"] for p in pods} == {"kvs2-node-0", "kvs2-node-1"}  # spread over the nodes
    claim = kube.get("pvc", "data-db-0")
    assert claim is not None and claim["status"]["phase"] == "Bound"
    pv = kube.cluster.kubectl(
        "get", "pv", claim["spec"]["volumeName"], "-o", "jsonpath={.spec.hostPath.path}"
    ).stdout
    boots = Path(pv) / "boots"
    kube.wait("db-0 to write to its PVC", lambda: boots.exists() and boots.read_text() == "x")
    old_uid = kube.get("pod", "db-0")["metadata"]["uid"]  # type: ignore[index]
    kube.kubectl("delete", "pod", "db-0")
    kube.wait(
        "db-0 re-created and Ready",
        lambda: (p := kube.get("pod", "db-0")) and p["metadata"]["uid"] != old_uid and pod_ready(p),
        timeout=60,
    )
    kube.wait("the new db-0 to find its old file", lambda: boots.read_text() == "xx")


def test_killed_process_is_restarted(kube: Kube) -> None:
    kube.apply(
        _pod(
            "victim",
            terminationGracePeriodSeconds=1,
            containers=[
                {"name": "main", "image": "x", "command": [PY, "-c", "import time; time.sleep(3600)"]}
            ],
        )
    )
    pid = kube.wait("victim running", lambda: kube.kubelet.container_pid(kube.namespace, "victim", "main"))
    os.kill(pid, signal.SIGKILL)
    pod = kube.wait(
        "victim restarted",
        lambda: (
            (p := kube.get("pod", "victim"))
            and container_status(p, "main").get("restartCount") == 1
            and "running" in container_status(p, "main")["state"]
            and p
        ),
    )
    assert container_status(pod, "main")["lastState"]["terminated"]["signal"] == signal.SIGKILL
    new_pid = kube.kubelet.container_pid(kube.namespace, "victim", "main")
    assert new_pid is not None and new_pid != pid


def test_init_containers_run_first_and_a_failing_liveness_probe_restarts(kube: Kube) -> None:
    kube.apply(
        _pod(
            "staged",
            terminationGracePeriodSeconds=1,
            volumes=[{"name": "shared", "emptyDir": {}}],
            initContainers=[
                {
                    "name": "prepare",
                    "image": "x",
                    "command": [
                        PY,
                        "-c",
                        "import pathlib; pathlib.Path('/shared/ready').write_text('prepared')",
                    ],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                }
            ],
            containers=[
                {
                    "name": "main",
                    "image": "x",
                    # Fails at once if the init container did not run before it.
                    "command": [
                        PY,
                        "-c",
                        "import pathlib, time; pathlib.Path('/shared/ready').read_text(); time.sleep(3600)",
                    ],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                    # Nothing listens on 9: the kubelet must kill and restart the container.
                    "livenessProbe": {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2},
                }
            ],
        )
    )

    def restarted_by_liveness() -> dict[str, Any] | None:
        pod = kube.get("pod", "staged")
        st = container_status(pod, "main")
        return pod if st.get("restartCount", 0) >= 1 else None

    pod = kube.wait("main restarted by its liveness probe", restarted_by_liveness, timeout=60)
    init = pod["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["exitCode"] == 0 and init["restartCount"] == 0
    last = container_status(pod, "main")["lastState"]["terminated"]
    assert last["signal"] == signal.SIGTERM  # killed by the kubelet, not crashed: the init file was there
