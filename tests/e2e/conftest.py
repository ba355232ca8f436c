"""Helpers for the end-to-end tests: kubectl the way a person uses it, and patient waits that explain
themselves (the last object seen and the relevant logs) when they time out."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.harness.cluster import Cluster
from tests.harness.kubelet import KubeletProcess

pytestmark = pytest.mark.e2e


@dataclass
class Kube:
    """kubectl against one namespace, plus the process kubelet's view of the pods there."""

    cluster: Cluster
    kubelet: KubeletProcess
    namespace: str

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> str:
        result = self.cluster.kubectl("-n", self.namespace, *args, check=check, input=input, timeout=timeout)
        return result.stdout + (result.stderr if not check else "")

    def apply(self, *manifests: dict[str, Any]) -> str:
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.cluster.kubectl("-n", self.namespace, "get", kind, name, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        loaded: dict[str, Any] = json.loads(result.stdout)
        return loaded

    def items(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        loaded: list[dict[str, Any]] = json.loads(self.kubectl(*args))["items"]
        return loaded

    def pod_logs(self, pod: str, container: str) -> str:
        return self.kubelet.container_log(self.namespace, pod, container)

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = 60.0, dump: str = "pods") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.3)
        state = self.kubectl("get", dump, "-o", "wide", check=False)
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}\n{state}\n"
            f"--- process kubelet log ---\n{self.kubelet.log_tail(40)}"
        )


def pod_ready(pod: dict[str, Any] | None) -> bool:
    conditions = (pod or {}).get("status", {}).get("conditions") or ()
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def container_status(pod: dict[str, Any] | None, name: str) -> dict[str, Any]:
    for status in (pod or {}).get("status", {}).get("containerStatuses") or ():
        if status["name"] == name:
            return dict(status)
    return {}


@pytest.fixture
def kube(cluster: Cluster, kubelet: KubeletProcess, namespace: str) -> Kube:
    return Kube(cluster, kubelet, namespace)
