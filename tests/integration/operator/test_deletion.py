"""Deleting stores always finishes: a dead Kafka does not trap a store behind its finalizer forever, and
deleting a namespace full of stores completes — deleting exactly the topics the stores created."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster
from tests.harness.kafka import KafkaBroker

from .conftest import Stores, describe_topic, start_operator, stop_operator, store_manifest


def _finalized(stores: Stores, name: str) -> bool:
    meta = (stores.get("kvs", name) or {}).get("metadata") or {}
    return "kvs2.io/topic-deletion" in (meta.get("finalizers") or [])


def test_deletion_gives_up_on_an_unreachable_kafka_with_a_warning(
    cluster: Cluster,
    crd: Path,
    stores: Stores,
    private_kafka: KafkaBroker,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    proc = start_operator(
        stores.namespace,
        cluster.kubeconfig,
        tmp_path / "operator.log",
        extra_args=("--deletion-timeout", "5"),
    )
    try:
        stores.apply(
            store_manifest("stranded", private_kafka.bootstrap_servers, topicDeletionPolicy="Delete")
        )
        stores.wait_condition("stranded", "TopicReady", "True")
        stores.wait("the finalizer", lambda: _finalized(stores, "stranded"))
        private_kafka.stop()
        stores.kubectl("delete", "kvs", "stranded", "--wait=true", "--timeout=120s")
        assert stores.get("kvs", "stranded") is None
        left = [e for e in stores.events("stranded") if e["reason"] == "TopicLeftBehind"]
        assert left, stores.events("stranded")
        assert left[0]["type"] == "Warning"
        assert f"{stores.namespace}.stranded" in left[0]["message"] and "left behind" in left[0]["message"]
    finally:
        stop_operator(proc, request)
    private_kafka.start()
    assert describe_topic(private_kafka.bootstrap_servers, f"{stores.namespace}.stranded") is not None


def test_deleting_a_namespace_with_stores_completes(
    cluster: Cluster, crd: Path, kafka: KafkaBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    namespace = f"t-doomed-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    stores = Stores(cluster, namespace)
    proc = start_operator(namespace, cluster.kubeconfig, tmp_path / "operator.log")
    try:
        stores.apply(store_manifest("temporary", kafka.bootstrap_servers, topicDeletionPolicy="Delete"))
        stores.apply(store_manifest("kept", kafka.bootstrap_servers))
        for name in ("temporary", "kept"):
            stores.wait_condition(name, "TopicReady", "True", "TopicCreated")
        stores.wait("the finalizer", lambda: _finalized(stores, "temporary"))
        cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=120s", timeout=150)
        assert describe_topic(kafka.bootstrap_servers, f"{namespace}.temporary") is None
        assert describe_topic(kafka.bootstrap_servers, f"{namespace}.kept") is not None
    finally:
        stop_operator(proc, request)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
