"""The API server itself rejects bad KeyValueStores, with messages a person can act on."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from .conftest import Stores, store_manifest

BOOTSTRAP = "127.0.0.1:9"  # never contacted: no operator runs in these tests


def _with(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    result = copy.deepcopy(manifest)
    node = result
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return result


BASE = store_manifest("good", BOOTSTRAP)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "spec.replicas",
            -1,
            "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
        ),
        (
            "spec.kafka.topic.partitions",
            0,
            "spec.kafka.topic.partitions in body should be greater than or equal to 1",
        ),
        (
            "spec.kafka.topic.replicationFactor",
            0,
            "replicationFactor in body should be greater than or equal to 1",
        ),
        ("spec.kafka", None, "spec.kafka: Required value"),
        ("spec.topicDeletionPolicy", "Sometimes", 'supported values: "Retain", "Delete"'),
        ("spec.kafka.topic.config", {"cleanup.policy": "delete"}, "cleanup.policy must be 'compact'"),
        ("spec.kafka.topic.name", "no spaces", "spec.kafka.topic.name in body should match"),
        (
            "spec.podDisruptionBudget",
            {"maxUnavailable": 1, "minAvailable": 1},
            "maxUnavailable or minAvailable, not both",
        ),
        ("metadata.name", "a" * 60, "metadata.name must be a DNS-1035 label of at most 52 characters"),
    ],
)
def test_invalid_manifest_is_rejected(
    stores: Stores, crd: Path, path: str, value: Any, expected: str
) -> None:
    code, output = stores.apply(_with(BASE, path, value), check=False)
    assert code != 0, output
    assert expected in output, output
    assert stores.get("kvs", "good") is None


def test_defaults_are_filled_by_the_api_server(stores: Stores, crd: Path) -> None:
    code, output = stores.apply(_with(_with(BASE, "spec.kafka.topic", None), "spec.image", None))
    assert code == 0, output
    stored = stores.get("kvs", "good")
    assert stored is not None
    spec = stored["spec"]
    assert spec["kafka"]["topic"] == {"partitions": 3, "replicationFactor": 3}
    assert spec["topicDeletionPolicy"] == "Retain"
    assert spec["storage"] == {"size": "1Gi", "ephemeral": False, "retentionOnScaleDown": "Delete"}
    assert "image" not in spec  # the operator's default image, recorded in status.image
    assert spec["podDisruptionBudget"] == {"enabled": True}


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("spec.kafka.topic.name", "other", "kafka.topic.name is immutable"),
        (
            "spec.storage.storageClassName",
            "other",
            "storage.storageClassName and storage.ephemeral are immutable",
        ),
        ("spec.storage.ephemeral", True, "storage.storageClassName and storage.ephemeral are immutable"),
    ],
)
def test_immutable_fields_cannot_change(
    stores: Stores, crd: Path, path: str, value: Any, expected: str
) -> None:
    first = _with(BASE, "spec.kafka.topic.name", "fixed")
    code, output = stores.apply(first)
    assert code == 0, output
    code, output = stores.apply(_with(first, path, value), check=False)
    assert code != 0 and expected in output, output


def test_the_scale_down_pvc_policy_may_change(stores: Stores, crd: Path) -> None:
    code, output = stores.apply(BASE)
    assert code == 0, output
    code, output = stores.apply(_with(BASE, "spec.storage.retentionOnScaleDown", "Retain"))
    assert code == 0, output


def test_topic_name_cannot_be_added_later(stores: Stores, crd: Path) -> None:
    code, output = stores.apply(BASE)
    assert code == 0, output
    code, output = stores.apply(_with(BASE, "spec.kafka.topic.name", "late"), check=False)
    assert code != 0 and "kafka.topic.name is immutable" in output, output


def test_partition_change_passes_the_api_server(stores: Stores, crd: Path) -> None:
    """Deliberately not a CEL rule: the operator refuses it with NotSupported (see test_operator.py)."""
    code, output = stores.apply(BASE)
    assert code == 0, output
    code, output = stores.apply(_with(BASE, "spec.kafka.topic.partitions", 8))
    assert code == 0, output
