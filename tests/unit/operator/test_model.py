from __future__ import annotations

from typing import Any

import pytest
from kvs2_operator.errors import Reason, SpecError
from kvs2_operator.model import default_topic_name, parse_store


def test_defaults_fill_what_the_manifest_leaves_out(body: dict[str, Any]) -> None:
    store = parse_store(body)
    spec = store.spec
    assert spec.kafka.topic.name == "shop.orders"
    assert spec.kafka.topic.name_defaulted
    assert spec.topic_deletion_policy == "Retain"
    assert spec.storage.size == "1Gi" and not spec.storage.ephemeral
    assert spec.pdb.enabled and spec.pdb.max_unavailable is None
    assert spec.image_pull_policy == "IfNotPresent"
    assert spec.shutdown_grace_seconds == 10
    assert spec.kafka.authentication is None


def test_default_topic_name_is_namespace_dot_name() -> None:
    assert default_topic_name("ns", "store") == "ns.store"


@pytest.mark.parametrize(
    ("rf", "expected"),
    [(1, 1), (2, 1), (3, 2), (5, 2)],
)
def test_min_insync_replicas_is_sensible_for_the_replication_factor(
    body: dict[str, Any], rf: int, expected: int
) -> None:
    body["spec"]["kafka"]["topic"]["replicationFactor"] = rf
    topic = parse_store(body).spec.kafka.topic
    assert topic.min_insync_replicas() == expected
    assert topic.desired_config() == {"cleanup.policy": "compact", "min.insync.replicas": str(expected)}


def test_explicit_min_insync_replicas_wins(body: dict[str, Any]) -> None:
    body["spec"]["kafka"]["topic"]["config"] = {"min.insync.replicas": "3", "segment.bytes": "1048576"}
    topic = parse_store(body).spec.kafka.topic
    assert topic.desired_config() == {
        "cleanup.policy": "compact",
        "min.insync.replicas": "3",
        "segment.bytes": "1048576",
    }


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (("replicas",), -1, "spec.replicas must be between 0"),
        (("replicas",), "3", "spec.replicas must be an integer"),
        (("image",), None, "spec.image is required"),
        (("kafka", "topic", "partitions"), 0, "spec.kafka.topic.partitions must be between 1"),
        (("kafka", "topic", "name"), "bad name!", "not a legal Kafka topic name"),
        (("kafka", "topic", "config"), {"cleanup.policy": "delete"}, "cleanup.policy must be 'compact'"),
        (("kafka", "topic", "config"), {"min.insync.replicas": "4"}, "min.insync.replicas must be"),
        (("kafka", "clientConfig"), {"a": "b,c"}, "must not contain ','"),
        (("topicDeletionPolicy",), "Sometimes", "must be one of Retain, Delete"),
        (("podDisruptionBudget",), {"maxUnavailable": 1, "minAvailable": 1}, "not both"),
        (("podDisruptionBudget",), {"maxUnavailable": "half"}, "percentage"),
    ],
)
def test_invalid_specs_are_refused_with_the_field_named(
    body: dict[str, Any], path: tuple[str, ...], value: Any, fragment: str
) -> None:
    target = body["spec"]
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    with pytest.raises(SpecError) as info:
        parse_store(body)
    assert fragment in str(info.value)
    assert info.value.reason is Reason.INVALID_SPEC and info.value.permanent


def test_too_long_default_topic_name_says_how_to_fix_it(body: dict[str, Any]) -> None:
    body["metadata"]["name"] = "x" * 250
    with pytest.raises(SpecError, match=r"set spec\.kafka\.topic\.name"):
        parse_store(body)


def test_missing_kafka_is_invalid(body: dict[str, Any]) -> None:
    del body["spec"]["kafka"]
    with pytest.raises(SpecError, match=r"spec\.kafka is required"):
        parse_store(body)


def test_authentication_defaults(body: dict[str, Any]) -> None:
    body["spec"]["kafka"]["authentication"] = {"secretName": "creds"}
    auth = parse_store(body).spec.kafka.authentication
    assert auth is not None
    assert (auth.secret_name, auth.mechanism, auth.security_protocol) == (
        "creds",
        "SCRAM-SHA-512",
        "SASL_SSL",
    )
    assert (auth.username_key, auth.password_key) == ("username", "password")


def test_owner_reference_makes_the_store_the_controller(body: dict[str, Any]) -> None:
    ref = parse_store(body).ref.owner_reference()
    assert ref == {
        "apiVersion": "kvs2.io/v1alpha1",
        "kind": "KeyValueStore",
        "name": "orders",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
