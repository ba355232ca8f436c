"""`kvs2 operator` without --namespace (how `make cluster` and the Deployment run it): all namespaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.cluster import Cluster
from tests.harness.common import ManagedProcess, progress, repo_root
from tests.harness.kafka import KafkaBroker

from .conftest import Stores, stop_operator, store_manifest


def test_all_namespaces_with_kubeconfig_from_the_environment(
    cluster: Cluster,
    crd: Path,
    stores: Stores,
    kafka: KafkaBroker,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    proc = ManagedProcess(
        name="operator",
        argv=[
            str(repo_root() / ".venv" / "bin" / "python"),
            "-m",
            "kvs2_operator.main",
            "--resync-interval",
            "2",
        ],
        log_path=tmp_path / "operator.log",
        env=cluster.env(),  # KUBECONFIG, as `make cluster` passes it
        cwd=repo_root(),
    ).start()
    progress(f"cluster-wide operator pid {proc.pid}, log {proc.log_path}")
    try:
        stores.apply(store_manifest("everywhere", kafka.bootstrap_servers))
        stores.wait_condition("everywhere", "TopicReady", "True", "TopicCreated")
        stores.wait_condition("everywhere", "WorkloadReady", "False", "ReplicasNotReady")
        assert stores.get("statefulset", "everywhere") is not None
        stores.kubectl("delete", "kvs", "everywhere")
    finally:
        stop_operator(proc, request)
