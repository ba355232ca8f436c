"""deploy/crd.yaml is the CRD's single source: check it is sane and agrees with the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kvs2_operator import crd, model
from kvs2_operator.errors import Reason
from kvs2_operator.ownership import Claim, Ownership
from kvs2_operator.status import build_status, topic_condition, workload_condition

CRD_PATH = Path(__file__).resolve().parents[3] / "deploy" / "crd.yaml"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded = yaml.safe_load(CRD_PATH.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def version(doc: dict[str, Any]) -> dict[str, Any]:
    (only,) = doc["spec"]["versions"]
    assert isinstance(only, dict)
    return only


def _props(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    node = schema
    for key in path:
        node = node["properties"][key]
    return node


def test_names_agree_with_the_code(doc: dict[str, Any], version: dict[str, Any]) -> None:
    assert doc["metadata"]["name"] == crd.CRD_NAME
    spec = doc["spec"]
    assert spec["group"] == crd.GROUP and spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (crd.KIND, crd.PLURAL, crd.SINGULAR)
    assert tuple(names["shortNames"]) == crd.SHORT_NAMES
    assert version["name"] == crd.VERSION and version["served"] and version["storage"]


def test_subresources(version: dict[str, Any]) -> None:
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    default_view = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert default_view == ["Ready", "Replicas", "Topic", "Reason", "Age"]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["Age"]["type"] == "date"


def test_bounds_and_defaults_match_the_model(version: dict[str, Any]) -> None:
    root = version["schema"]["openAPIV3Schema"]
    spec = _props(root, "spec")
    assert spec["required"] == ["kafka"]  # the image defaults to the operator's own version
    assert _props(spec, "replicas")["minimum"] == 0
    topic = _props(spec, "kafka", "topic")
    assert _props(topic, "partitions")["minimum"] == 1
    assert _props(topic, "partitions")["default"] == model.DEFAULT_PARTITIONS
    assert _props(topic, "replicationFactor")["minimum"] == 1
    assert _props(topic, "replicationFactor")["default"] == model.DEFAULT_REPLICATION_FACTOR
    assert _props(spec, "storage", "size")["default"] == model.DEFAULT_STORAGE_SIZE
    assert _props(spec, "shutdownGraceSeconds")["default"] == model.DEFAULT_SHUTDOWN_GRACE
    policy = _props(spec, "topicDeletionPolicy")
    assert policy["enum"] == list(model.DELETION_POLICIES) and policy["default"] == "Retain"
    assert _props(spec, "logLevel")["enum"] == list(model.LOG_LEVELS)
    auth = _props(spec, "kafka", "authentication")
    assert _props(auth, "mechanism")["enum"] == list(model.SASL_MECHANISMS)
    assert _props(auth, "securityProtocol")["enum"] == list(model.SECURITY_PROTOCOLS)


def test_immutability_rules_exist_with_readable_messages(version: dict[str, Any]) -> None:
    root = version["schema"]["openAPIV3Schema"]
    topic_rules = _props(root, "spec", "kafka", "topic")["x-kubernetes-validations"]
    assert any("oldSelf.name" in r["rule"] and "immutable" in r["message"] for r in topic_rules)
    storage_rules = _props(root, "spec", "storage")["x-kubernetes-validations"]
    assert all(
        f"self.{f} == oldSelf.{f}" in storage_rules[0]["rule"] for f in ("storageClassName", "ephemeral")
    )
    # size may change: the operator grows the volumes (volumes.py) or says why it cannot.
    assert "oldSelf.size" not in storage_rules[0]["rule"]
    # partitions/replicationFactor changes are NOT rejected by CEL: the operator refuses them (NotSupported).
    text = CRD_PATH.read_text()
    assert "oldSelf.partitions" not in text and "oldSelf.replicationFactor" not in text


def test_topic_name_pattern_matches_the_model(version: dict[str, Any]) -> None:
    name = _props(version["schema"]["openAPIV3Schema"], "spec", "kafka", "topic", "name")
    assert name["maxLength"] == 249
    for candidate in ["a", "shop.orders", "A_b-9", "x" * 249]:
        assert re.match(name["pattern"], candidate) and model.TOPIC_NAME_RE.match(candidate)
    for candidate in ["a b", "a/b", "é"]:
        assert not re.match(name["pattern"], candidate) and not model.TOPIC_NAME_RE.match(candidate)


def test_status_schema_declares_everything_the_operator_writes(version: dict[str, Any]) -> None:
    """Undeclared status fields are pruned by the API server; the status would silently lose them."""
    declared = _props(version["schema"]["openAPIV3Schema"], "status")
    written = build_status(
        {},
        generation=1,
        topic=topic_condition(True, Reason.TOPIC_CREATED, "m"),
        workload=workload_condition(None, 1),
        extra={
            "replicas": 0,
            "readyReplicas": 0,
            "selector": "a=b",
            "endpoint": "e:1",
            **Claim("t", "cluster", "id", Ownership.CREATED).status_fields(),
        },
    )
    assert set(written) <= set(declared["properties"])
    item = declared["properties"]["conditions"]["items"]
    for condition in written["conditions"]:
        assert set(condition) <= set(item["properties"])
        assert set(item["required"]) <= set(condition)
    assert declared["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_every_spec_field_the_model_reads_is_declared(version: dict[str, Any]) -> None:
    """Unknown spec fields are pruned too: a field the model reads but the schema lacks never arrives."""
    source = Path(model.__file__).read_text()
    spec = _props(version["schema"]["openAPIV3Schema"], "spec")
    declared: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        for key, child in node.get("properties", {}).items():
            declared.add(key)
            walk(child)

    walk(spec)
    read = set(re.findall(r'\.get\("([a-zA-Z]+)"', source))
    assert read <= declared | {"metadata", "namespace", "name", "uid", "generation", "spec", "status"}
