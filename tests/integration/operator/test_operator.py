"""`kvs2 operator` against the real API server, controller-manager and Kafka (no kubelet yet)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kvs2_operator.errors import Reason

from tests.harness.cluster import Cluster
from tests.harness.common import ManagedProcess
from tests.harness.kafka import KafkaBroker

from .conftest import Stores, describe_topic, start_operator, stop_operator, store_manifest


def _ready_topic(stores: Stores, name: str) -> None:
    stores.wait_condition(name, "TopicReady", "True")


def test_apply_creates_topic_children_and_an_honest_status(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    ns = stores.namespace
    code, output = stores.apply(store_manifest("orders", kafka.bootstrap_servers))
    assert code == 0, output
    topic_ready = stores.wait_condition("orders", "TopicReady", "True", "TopicCreated")
    topic = f"{ns}.orders"

    facts = describe_topic(kafka.bootstrap_servers, topic)
    assert facts is not None
    assert facts.partitions == 4 and facts.replication_factor == 1
    assert facts.config["cleanup.policy"] == "compact"
    assert facts.config["min.insync.replicas"] == "1"
    assert "4 partitions" in topic_ready["message"]

    store = stores.get("kvs", "orders")
    assert store is not None
    uid = store["metadata"]["uid"]
    assert not store["metadata"].get("finalizers"), "Retain needs no finalizer"

    sts = stores.get("statefulset", "orders")
    assert sts is not None
    assert sts["metadata"]["ownerReferences"][0]["uid"] == uid
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["serviceName"] == "orders-peers"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["kvs2", "serve"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KVS2_TOPIC"] == topic
    assert env["KVS2_BOOTSTRAP_SERVERS"] == kafka.bootstrap_servers
    assert env["KVS2_LISTEN"] == "$(POD_IP):50051"
    assert container["readinessProbe"]["grpc"]["port"] == 50051
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"

    for name, headless in (("orders", False), ("orders-peers", True)):
        svc = stores.get("service", name)
        assert svc is not None and svc["metadata"]["ownerReferences"][0]["uid"] == uid
        assert (svc["spec"]["clusterIP"] == "None") is headless
    pdb = stores.get("pdb", "orders")
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1

    # The StatefulSet controller creates the pods; nothing runs them: WorkloadReady says so.
    stores.wait_condition("orders", "WorkloadReady", "False", "ReplicasNotReady")
    ready = stores.wait_condition("orders", "Ready", "False", "ReplicasNotReady")
    assert "0/2 replicas ready" in ready["message"]
    status = stores.wait(
        "status.replicas == 2", lambda: (stores.get("kvs", "orders") or {})["status"].get("replicas") == 2
    )
    assert status
    status = (stores.get("kvs", "orders") or {})["status"]
    assert status["readyReplicas"] == 0
    assert status["topic"] == topic
    assert status["endpoint"] == f"orders.{ns}.svc:50051"
    assert status["selector"] == "app.kubernetes.io/name=kvs2,app.kubernetes.io/instance=orders"
    assert status["observedGeneration"] == store["metadata"]["generation"]
    for cond in status["conditions"]:
        assert set(cond) == {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        }

    table = stores.kubectl("get", "kvs")
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "READY", "REPLICAS", "TOPIC", "REASON", "AGE"]
    assert row.split()[:5] == ["orders", "False", "2", topic, "ReplicasNotReady"]
    wide = stores.kubectl("get", "kvs", "-o", "wide")
    assert "ENDPOINT" in wide and f"orders.{ns}.svc:50051" in wide

    reasons = {
        e["reason"] for e in stores.events("orders") if e["source"].get("component") == "kvs2-operator"
    }
    assert {"TopicCreated", "ReplicasNotReady"} <= reasons


def test_status_is_written_only_when_it_changes(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    stores.apply(store_manifest("quiet", kafka.bootstrap_servers))
    stores.wait_condition("quiet", "WorkloadReady", "False", "ReplicasNotReady")
    stores.wait(
        "status.replicas == 2", lambda: (stores.get("kvs", "quiet") or {})["status"].get("replicas") == 2
    )
    before = (stores.get("kvs", "quiet") or {})["metadata"]["resourceVersion"]
    time.sleep(4 * 2.0)  # several resync passes
    after = (stores.get("kvs", "quiet") or {})["metadata"]["resourceVersion"]
    assert before == after


def test_partition_change_is_refused_and_the_topic_unchanged(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    manifest = store_manifest("fixed", kafka.bootstrap_servers)
    stores.apply(manifest)
    _ready_topic(stores, "fixed")
    manifest["spec"]["kafka"]["topic"]["partitions"] = 8
    code, output = stores.apply(manifest)
    assert code == 0, output
    refused = stores.wait_condition("fixed", "Ready", "False", "NotSupported")
    assert "4 partitions" in refused["message"] and "per-key order" in refused["message"]
    assert stores.condition("fixed", "TopicReady")["reason"] == "NotSupported"
    facts = describe_topic(kafka.bootstrap_servers, f"{stores.namespace}.fixed")
    assert facts is not None and facts.partitions == 4
    events = stores.events("fixed")
    warnings = [e for e in events if e["reason"] == "NotSupported"]
    assert warnings and warnings[0]["type"] == "Warning"
    # Every Event the operator posts uses a reason from the one closed list (kopf's own are off).
    assert {e["reason"] for e in events if e["source"].get("component") == "kvs2-operator"} <= {
        r.value for r in Reason
    }
    assert all(e["source"].get("component") == "kvs2-operator" for e in events), events
    # Setting it back heals without anyone touching Kafka.
    manifest["spec"]["kafka"]["topic"]["partitions"] = 4
    stores.apply(manifest)
    stores.wait_condition("fixed", "TopicReady", "True")


def test_kubectl_scale_scales_the_statefulset(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    stores.apply(store_manifest("elastic", kafka.bootstrap_servers))
    stores.wait("the StatefulSet", lambda: stores.get("statefulset", "elastic"))
    stores.kubectl("scale", "kvs/elastic", "--replicas=3")
    stores.wait(
        "StatefulSet replicas 3",
        lambda: (stores.get("statefulset", "elastic") or {})["spec"]["replicas"] == 3,
    )
    stores.wait(
        "status.replicas 3 (scale subresource)",
        lambda: (
            json.loads(stores.kubectl("get", "kvs", "elastic", "--subresource=scale", "-o", "json"))[
                "status"
            ].get("replicas")
            == 3
        ),
    )
    scale = json.loads(stores.kubectl("get", "kvs", "elastic", "--subresource=scale", "-o", "json"))
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["selector"] == "app.kubernetes.io/name=kvs2,app.kubernetes.io/instance=elastic"
    stores.wait_condition("elastic", "WorkloadReady", "False", "ReplicasNotReady")
    assert "0/3" in stores.condition("elastic", "WorkloadReady")["message"]


def test_drift_is_repaired(stores: Stores, kafka: KafkaBroker, operator: ManagedProcess) -> None:
    stores.apply(store_manifest("steady", kafka.bootstrap_servers))
    first = stores.wait("the client Service", lambda: stores.get("service", "steady"))
    stores.wait("the StatefulSet", lambda: stores.get("statefulset", "steady"))
    stores.kubectl("delete", "service", "steady")
    stores.kubectl("scale", "statefulset/steady", "--replicas=5")
    stores.kubectl("label", "--overwrite", "service", "steady-peers", "app.kubernetes.io/name=tampered")
    again = stores.wait(
        "a new client Service",
        lambda: (
            (svc := stores.get("service", "steady"))
            and svc["metadata"]["uid"] != first["metadata"]["uid"]
            and svc
        ),
    )
    assert again["spec"]["selector"]["app.kubernetes.io/instance"] == "steady"
    stores.wait(
        "StatefulSet replicas back to 2",
        lambda: (stores.get("statefulset", "steady") or {})["spec"]["replicas"] == 2,
    )
    stores.wait(
        "label restored",
        lambda: (
            (stores.get("service", "steady-peers") or {})["metadata"]["labels"]["app.kubernetes.io/name"]
            == "kvs2"
        ),
    )


def test_kafka_outage_is_reported_and_heals(
    stores: Stores, private_kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    bootstrap = private_kafka.bootstrap_servers
    stores.apply(store_manifest("weather", bootstrap))
    _ready_topic(stores, "weather")
    private_kafka.stop()
    down = stores.wait_condition("weather", "Ready", "False", "KafkaUnavailable", timeout=90)
    assert "Kafka unavailable" in down["message"]
    # A store created while Kafka is down waits for it, honestly.
    stores.apply(store_manifest("later", bootstrap))
    stores.wait_condition("later", "TopicReady", "False", "KafkaUnavailable", timeout=90)
    assert stores.condition("later", "WorkloadReady")["reason"] == "WaitingForTopic"
    assert stores.get("statefulset", "later") is None
    private_kafka.start()
    stores.wait_condition("weather", "TopicReady", "True", timeout=120)
    stores.wait_condition("later", "TopicReady", "True", "TopicCreated", timeout=120)
    stores.wait("the StatefulSet of the late store", lambda: stores.get("statefulset", "later"))
    for name in ("weather", "later"):
        stores.wait_condition(name, "Ready", "False", "ReplicasNotReady")
    assert describe_topic(bootstrap, f"{stores.namespace}.later") is not None


def test_delete_with_retain_keeps_the_topic(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    stores.apply(store_manifest("keep", kafka.bootstrap_servers))
    _ready_topic(stores, "keep")
    stores.wait("the StatefulSet", lambda: stores.get("statefulset", "keep"))
    stores.kubectl("delete", "kvs", "keep", "--wait=true", "--timeout=30s")
    for kind, name in (
        ("statefulset", "keep"),
        ("service", "keep"),
        ("service", "keep-peers"),
        ("pdb", "keep"),
    ):

        def collected(k: str = kind, n: str = name) -> bool:
            return stores.get(k, n) is None

        stores.wait(f"{kind}/{name} garbage-collected", collected)
    assert describe_topic(kafka.bootstrap_servers, f"{stores.namespace}.keep") is not None


def test_delete_with_delete_policy_deletes_the_topic(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    stores.apply(store_manifest("gone", kafka.bootstrap_servers, topicDeletionPolicy="Delete"))
    _ready_topic(stores, "gone")
    stores.wait(
        "the finalizer",
        lambda: (
            "kvs2.io/topic-deletion"
            in ((stores.get("kvs", "gone") or {})["metadata"].get("finalizers") or [])
        ),
    )
    stores.kubectl("delete", "kvs", "gone", "--wait=true", "--timeout=60s")
    assert stores.get("kvs", "gone") is None
    stores.wait(
        "the topic deleted",
        lambda: describe_topic(kafka.bootstrap_servers, f"{stores.namespace}.gone") is None,
        timeout=30,
    )
    stores.wait("the StatefulSet garbage-collected", lambda: stores.get("statefulset", "gone") is None)


def test_switching_to_retain_removes_the_finalizer(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    manifest = store_manifest("undecided", kafka.bootstrap_servers, topicDeletionPolicy="Delete")
    stores.apply(manifest)
    stores.wait(
        "the finalizer",
        lambda: (stores.get("kvs", "undecided") or {})["metadata"].get("finalizers"),
    )
    manifest["spec"]["topicDeletionPolicy"] = "Retain"
    stores.apply(manifest)
    stores.wait(
        "no finalizer",
        lambda: not (stores.get("kvs", "undecided") or {})["metadata"].get("finalizers"),
    )


def test_child_events_repair_drift_without_waiting_for_the_resync(
    cluster: Cluster,
    crd: Path,
    stores: Stores,
    kafka: KafkaBroker,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """With the resync loop 10 minutes away, only the watch on children can bring a Service back."""
    proc = start_operator(stores.namespace, cluster.kubeconfig, tmp_path / "operator.log", resync=600)
    try:
        stores.apply(store_manifest("watched", kafka.bootstrap_servers))
        first = stores.wait("the client Service", lambda: stores.get("service", "watched"))
        stores.kubectl("delete", "service", "watched")
        stores.wait(
            "the client Service back",
            lambda: (
                (svc := stores.get("service", "watched"))
                and svc["metadata"]["uid"] != first["metadata"]["uid"]
            ),
            timeout=15,  # the resync is 600 s away: only the watch on children can do it
        )
        stores.kubectl("scale", "statefulset/watched", "--replicas=7")
        stores.wait(
            "replicas restored",
            lambda: (stores.get("statefulset", "watched") or {})["spec"]["replicas"] == 2,
            timeout=15,
        )
    finally:
        stop_operator(proc, request)
