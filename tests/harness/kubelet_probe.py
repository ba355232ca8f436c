"""Container probes as the kubelet runs them: gRPC health, TCP, HTTP GET and exec, with their thresholds.

Each probe is real: a `grpc:` probe asks grpc.health.v1 on the pod's address (grpcio's health stub,
the same protocol the kubelet speaks), so a replica is Ready exactly when it says SERVING.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def resolve_port(port: Any, container: Mapping[str, Any]) -> int:
    """A probe port is a number or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports") or ():
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"probe port {port!r} names no port of container {container.get('name')}")


def run_probe(
    probe: Mapping[str, Any],
    *,
    pod_ip: str,
    container: Mapping[str, Any],
    env: Mapping[str, str],
    cwd: str,
    exec_argv: Sequence[str] | None = None,
) -> tuple[bool, str]:
    """One attempt: (success, why). Never raises; a probe that cannot run is a failure."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "grpc" in probe:
            spec = probe["grpc"]
            target = f"{pod_ip}:{int(spec['port'])}"
            with grpc.insecure_channel(target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(
                    health_pb2.HealthCheckRequest(service=str(spec.get("service", ""))), timeout=timeout
                )
            ok = reply.status == health_pb2.HealthCheckResponse.SERVING
            return ok, f"grpc {target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        if "tcpSocket" in probe:
            spec = probe["tcpSocket"]
            host = str(spec.get("host") or pod_ip)
            port = resolve_port(spec["port"], container)
            with socket.create_connection((host, port), timeout=timeout):
                return True, f"tcp {host}:{port} open"
        if "httpGet" in probe:
            spec = probe["httpGet"]
            host = str(spec.get("host") or pod_ip)
            port = resolve_port(spec["port"], container)
            scheme = str(spec.get("scheme", "HTTP")).lower()
            url = f"{scheme}://{host}:{port}{spec.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or ()}
            request = urllib.request.Request(url, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    code = int(resp.status)
            except urllib.error.HTTPError as exc:
                code = int(exc.code)
            return 200 <= code < 400, f"http {url}: {code}"
        if "exec" in probe:
            argv = list(exec_argv if exec_argv is not None else probe["exec"]["command"])
            result = subprocess.run(
                argv, env=dict(env), cwd=cwd, capture_output=True, timeout=timeout, check=False
            )
            return result.returncode == 0, f"exec {argv[0]}: exit {result.returncode}"
    except grpc.RpcError as exc:
        return False, f"grpc: {exc.code().name}"
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return False, f"unsupported probe handler {sorted(probe)}"


@dataclass
class ProbeState:
    """Thresholds and schedule of one probe of one container run (reset when the container restarts)."""

    spec: Mapping[str, Any]
    started_at: float
    successes: int = 0
    failures: int = 0
    result: bool | None = None  # None until the thresholds decided once
    next_due: float = field(default=0.0)
    last_message: str = ""

    def __post_init__(self) -> None:
        self.next_due = self.started_at + float(self.spec.get("initialDelaySeconds", 0))

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def record(self, ok: bool, message: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.next_due = now + float(self.spec.get("periodSeconds", 10))
        self.last_message = message
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.result = False
