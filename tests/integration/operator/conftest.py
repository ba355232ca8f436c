"""Fixtures and helpers for operator integration tests.

`operator` starts `kvs2 operator` as its own process (the real entry point, the real kopf, the real
API server), watching only the test's namespace, with a short resync interval so drift repair and
Kafka recovery show up within seconds. Its log is printed when a test fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

from tests.harness.cluster import Cluster
from tests.harness.common import ManagedProcess, progress, repo_root

CRD_PATH = repo_root() / "deploy" / "crd.yaml"
RESYNC_SECONDS = 2.0


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> Path:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    cluster.kubectl("wait", "--for=condition=Established", "-f", str(CRD_PATH), "--timeout=60s")
    return CRD_PATH


def start_operator(
    namespace: str,
    kubeconfig: Path,
    log_path: Path,
    resync: float = RESYNC_SECONDS,
    extra_args: tuple[str, ...] = (),
) -> ManagedProcess:
    proc = ManagedProcess(
        name="operator",
        argv=[
            # The same `run()` that `kvs2 operator` calls (see kvs2_operator.main).
            str(repo_root() / ".venv" / "bin" / "python"),
            "-m",
            "kvs2_operator.main",
            "--namespace",
            namespace,
            "--resync-interval",
            str(resync),
            "--kubeconfig",
            str(kubeconfig),
            "--log-level",
            "DEBUG",
            *extra_args,
        ],
        log_path=log_path,
        cwd=repo_root(),
    ).start()
    progress(f"operator pid {proc.pid} for namespace {namespace}, log {proc.log_path}")
    return proc


def stop_operator(proc: ManagedProcess, request: pytest.FixtureRequest) -> None:
    code = proc.stop(grace=15.0)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- operator log (exit {code}) ---\n{proc.log_tail(120)}")


@pytest.fixture
def operator(
    cluster: Cluster, crd: Path, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ManagedProcess]:
    """`kvs2 operator` with the admin's credentials, serving only the test's namespace."""
    proc = start_operator(namespace, cluster.kubeconfig, tmp_path / "operator.log")
    try:
        yield proc
    finally:
        stop_operator(proc, request)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so `operator` can print its log when the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@dataclass
class Stores:
    """kubectl, the way a person would use it, against one namespace."""

    cluster: Cluster
    namespace: str

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return self.cluster.kubectl("-n", self.namespace, *args, check=check, input=input).stdout

    def apply(self, manifest: dict[str, Any], check: bool = True) -> tuple[int, str]:
        result = self.cluster.kubectl(
            "-n", self.namespace, "apply", "-f", "-", input=yaml.safe_dump(manifest), check=check
        )
        return result.returncode, result.stderr + result.stdout

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.cluster.get_object(self.namespace, kind, name)

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        store = self.get("kvs", name) or {}
        for cond in (store.get("status") or {}).get("conditions") or ():
            if cond["type"] == type_:
                return dict(cond)
        return {}

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.5)
        store_dump = self.kubectl("get", "kvs", "-o", "yaml", check=False)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; stores:\n{store_dump}")

    def wait_condition(
        self, name: str, type_: str, status: str, reason: str | None = None, timeout: float = 60.0
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            cond = self.condition(name, type_)
            ok = cond.get("status") == status and (reason is None or cond.get("reason") == reason)
            return cond if ok else None

        result: dict[str, Any] = self.wait(f"{name} {type_}={status} {reason or ''}", check, timeout)
        return result

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.kubectl(
            "get",
            "events",
            "--field-selector",
            f"involvedObject.kind=KeyValueStore,involvedObject.name={name}",
            "-o",
            "json",
        )
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items


@pytest.fixture
def stores(cluster: Cluster, namespace: str) -> Stores:
    return Stores(cluster, namespace)


def store_manifest(name: str, bootstrap: str, **spec: Any) -> dict[str, Any]:
    topic = spec.pop("topic", {"partitions": 4, "replicationFactor": 1})
    body: dict[str, Any] = {
        "apiVersion": "kvs2.io/v1alpha1",
        "kind": "KeyValueStore",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "image": "kvs2:test",
            "kafka": {"bootstrapServers": bootstrap, "topic": topic},
        },
    }
    body["spec"].update(spec)
    return body


@dataclass(frozen=True)
class TopicFacts:
    partitions: int
    replication_factor: int
    config: dict[str, str]


def describe_topic(bootstrap: str, name: str) -> TopicFacts | None:
    """What Kafka says, asked independently of the operator's code."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    try:
        description = admin.describe_topics(TopicCollection([name]), request_timeout=10)[name].result(15)
    except KafkaException as exc:
        if "UNKNOWN_TOPIC" in str(exc):
            return None
        raise
    resource = ConfigResource(ResourceType.TOPIC, name)
    entries = admin.describe_configs([resource], request_timeout=10)[resource].result(15)
    return TopicFacts(
        partitions=len(description.partitions),
        replication_factor=len(description.partitions[0].replicas),
        config={k: v.value for k, v in entries.items()},
    )
