"""The operator's Kafka side on a real broker: adoption, refusal, config drift, Kafka saying no."""

from __future__ import annotations

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from tests.harness.common import ManagedProcess
from tests.harness.kafka import KafkaBroker, create_topic

from .conftest import Stores, describe_topic, store_manifest


def test_a_compatible_existing_topic_is_adopted(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    topic = f"{stores.namespace}.adopted"
    create_topic(
        kafka.bootstrap_servers, topic, 4, 1, {"cleanup.policy": "compact", "retention.ms": "3600000"}
    )
    stores.apply(store_manifest("adopted", kafka.bootstrap_servers))
    cond = stores.wait_condition("adopted", "TopicReady", "True", "TopicAdopted")
    assert topic in cond["message"]
    facts = describe_topic(kafka.bootstrap_servers, topic)
    assert facts is not None
    assert facts.config["min.insync.replicas"] == "1"  # the store manages it now
    assert facts.config["retention.ms"] == "3600000"  # not the store's: untouched
    stores.wait("the StatefulSet", lambda: stores.get("statefulset", "adopted"))


def test_an_incompatible_existing_topic_is_refused_and_left_alone(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    topic = f"{stores.namespace}.foreign"
    create_topic(kafka.bootstrap_servers, topic, 2, 1, {"cleanup.policy": "delete"})
    before = describe_topic(kafka.bootstrap_servers, topic)
    stores.apply(store_manifest("foreign", kafka.bootstrap_servers))
    cond = stores.wait_condition("foreign", "Ready", "False", "TopicIncompatible")
    assert "2 partitions" in cond["message"] and "cleanup.policy is 'delete'" in cond["message"]
    assert stores.condition("foreign", "WorkloadReady")["reason"] == "WaitingForTopic"
    assert stores.get("statefulset", "foreign") is None
    assert "topic" not in ((stores.get("kvs", "foreign") or {}).get("status") or {})
    assert describe_topic(kafka.bootstrap_servers, topic) == before


def test_topic_config_drift_is_repaired(stores: Stores, kafka: KafkaBroker, operator: ManagedProcess) -> None:
    topic = f"{stores.namespace}.drifty"
    stores.apply(store_manifest("drifty", kafka.bootstrap_servers))
    stores.wait_condition("drifty", "TopicReady", "True")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([resource])[resource].result(15)
    facts = describe_topic(kafka.bootstrap_servers, topic)
    assert facts is not None and facts.config["cleanup.policy"] == "delete"
    stores.wait(
        "cleanup.policy=compact again",
        lambda: (
            (f := describe_topic(kafka.bootstrap_servers, topic)) is not None
            and f.config["cleanup.policy"] == "compact"
        ),
        timeout=30,
    )


def test_kafka_refusal_is_reported_with_its_reason(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    stores.apply(
        store_manifest("greedy", kafka.bootstrap_servers, topic={"partitions": 1, "replicationFactor": 3})
    )
    cond = stores.wait_condition("greedy", "Ready", "False", "KafkaRejected")
    assert "creating topic" in cond["message"] and "INVALID_REPLICATION_FACTOR" in cond["message"], cond
    assert describe_topic(kafka.bootstrap_servers, f"{stores.namespace}.greedy") is None
    warnings = [e for e in stores.events("greedy") if e["reason"] == "KafkaRejected"]
    assert warnings and warnings[0]["type"] == "Warning"
