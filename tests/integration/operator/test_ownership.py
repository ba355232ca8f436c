"""Topic ownership on real brokers: the operator deletes, repairs or reconfigures only the topic a store
created (or adopted), on the cluster and with the topic id it recorded — never a shared, foreign or
re-created topic of the same name."""

from __future__ import annotations

from typing import Any

from tests.harness.common import ManagedProcess
from tests.harness.kafka import KafkaBroker, create_topic, delete_topic

from .conftest import Stores, describe_topic, store_manifest


def _status(stores: Stores, name: str) -> dict[str, Any]:
    return dict((stores.get("kvs", name) or {}).get("status") or {})


def _finalized(stores: Stores, name: str) -> Any:
    return "kvs2.io/topic-deletion" in ((stores.get("kvs", name) or {})["metadata"].get("finalizers") or [])


def test_status_records_cluster_id_topic_id_and_created(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    stores.apply(store_manifest("ledger", kafka.bootstrap_servers))
    stores.wait_condition("ledger", "TopicReady", "True", "TopicCreated")
    status = _status(stores, "ledger")
    assert status["topicOwnership"] == "Created"
    assert status["topicId"] and status["topicId"] != "AAAAAAAAAAAAAAAAAAAAAA"
    assert status["kafkaClusterId"]


def test_delete_policy_never_deletes_an_adopted_topic(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    topic = f"{stores.namespace}.borrowed"
    create_topic(kafka.bootstrap_servers, topic, 4, 1, {"cleanup.policy": "compact"})
    stores.apply(store_manifest("borrowed", kafka.bootstrap_servers, topicDeletionPolicy="Delete"))
    stores.wait_condition("borrowed", "TopicReady", "True", "TopicAdopted")
    assert _status(stores, "borrowed")["topicOwnership"] == "Adopted"
    stores.wait("the finalizer", lambda: _finalized(stores, "borrowed"))
    stores.kubectl("delete", "kvs", "borrowed", "--wait=true", "--timeout=60s")
    assert describe_topic(kafka.bootstrap_servers, topic) is not None, "an adopted topic was deleted"
    retained = [e for e in stores.events("borrowed") if e["reason"] == "TopicRetained"]
    assert retained and "adopted" in retained[0]["message"], stores.events("borrowed")


def test_a_second_store_cannot_own_the_same_topic(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    topic = f"{stores.namespace}.shared"
    first = store_manifest("first", kafka.bootstrap_servers, topicDeletionPolicy="Delete")
    first["spec"]["kafka"]["topic"]["name"] = topic
    stores.apply(first)
    stores.wait_condition("first", "TopicReady", "True", "TopicCreated")
    second = store_manifest("second", kafka.bootstrap_servers, topicDeletionPolicy="Delete")
    second["spec"]["kafka"]["topic"]["name"] = topic
    stores.apply(second)
    refused = stores.wait_condition("second", "Ready", "False", "TopicInUse")
    assert "first" in refused["message"], refused
    assert stores.get("statefulset", "second") is None
    assert "topicId" not in _status(stores, "second")
    # Deleting the refused store (policy Delete) must not take the owner's topic with it.
    stores.kubectl("delete", "kvs", "second", "--wait=true", "--timeout=60s")
    assert describe_topic(kafka.bootstrap_servers, topic) is not None
    assert stores.condition("first", "TopicReady")["status"] == "True"


def test_an_owned_topic_that_vanished_is_reported_not_recreated_empty(
    stores: Stores, kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    topic = f"{stores.namespace}.fragile"
    stores.apply(store_manifest("fragile", kafka.bootstrap_servers, topicDeletionPolicy="Delete"))
    stores.wait_condition("fragile", "TopicReady", "True", "TopicCreated")
    recorded = _status(stores, "fragile")["topicId"]
    delete_topic(kafka.bootstrap_servers, topic)
    lost = stores.wait_condition("fragile", "Ready", "False", "TopicLost")
    assert topic in lost["message"] and recorded in lost["message"], lost
    assert describe_topic(kafka.bootstrap_servers, topic) is None, "the operator re-created the topic empty"
    # Someone re-creates a topic of that name: it is not the store's, so it is neither adopted nor deleted.
    create_topic(kafka.bootstrap_servers, topic, 4, 1, {"cleanup.policy": "compact"})
    stores.wait(
        "TopicLost naming the new topic id",
        lambda: "different topic" in stores.condition("fragile", "TopicReady").get("message", ""),
    )
    assert _status(stores, "fragile")["topicId"] == recorded
    stores.kubectl("delete", "kvs", "fragile", "--wait=true", "--timeout=60s")
    assert describe_topic(kafka.bootstrap_servers, topic) is not None, (
        "a topic the store never had was deleted"
    )


def test_bootstrap_change_to_another_cluster_is_reported_and_the_foreign_topic_untouched(
    stores: Stores, kafka: KafkaBroker, private_kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    topic = f"{stores.namespace}.mover"
    manifest = store_manifest("mover", private_kafka.bootstrap_servers, topicDeletionPolicy="Delete")
    stores.apply(manifest)
    stores.wait_condition("mover", "TopicReady", "True", "TopicCreated")
    # The other cluster has a topic of the same name, someone else's, with delete retention.
    create_topic(kafka.bootstrap_servers, topic, 4, 1, {"cleanup.policy": "delete"})
    before = describe_topic(kafka.bootstrap_servers, topic)
    manifest["spec"]["kafka"]["bootstrapServers"] = kafka.bootstrap_servers
    stores.apply(manifest)
    changed = stores.wait_condition("mover", "Ready", "False", "KafkaClusterChanged")
    assert _status(stores, "mover")["kafkaClusterId"] in changed["message"], changed
    assert describe_topic(kafka.bootstrap_servers, topic) == before, "a foreign topic was reconfigured"
    stores.kubectl("delete", "kvs", "mover", "--wait=true", "--timeout=60s")
    assert describe_topic(kafka.bootstrap_servers, topic) == before, "a foreign topic was deleted"
    assert describe_topic(private_kafka.bootstrap_servers, topic) is not None


def test_reason_stays_topic_created_after_a_kafka_outage(
    stores: Stores, private_kafka: KafkaBroker, operator: ManagedProcess
) -> None:
    stores.apply(store_manifest("sturdy", private_kafka.bootstrap_servers))
    stores.wait_condition("sturdy", "TopicReady", "True", "TopicCreated")
    private_kafka.stop()
    stores.wait_condition("sturdy", "TopicReady", "False", "KafkaUnavailable", timeout=90)
    private_kafka.start()
    stores.wait_condition("sturdy", "TopicReady", "True", timeout=120)
    assert stores.condition("sturdy", "TopicReady")["reason"] == "TopicCreated"
