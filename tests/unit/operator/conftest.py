"""Shared builders for operator unit tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .fakes import FakeKube

BASE_BODY: dict[str, Any] = {
    "apiVersion": "kvs2.io/v1alpha1",
    "kind": "KeyValueStore",
    "metadata": {"name": "orders", "namespace": "shop", "uid": "uid-1", "generation": 1},
    "spec": {
        "replicas": 3,
        "image": "kvs2:test",
        "kafka": {
            "bootstrapServers": "kafka-0.test:19092,kafka-1.test:19092",
            "topic": {"partitions": 6, "replicationFactor": 3},
        },
    },
}


@pytest.fixture
def body() -> dict[str, Any]:
    return copy.deepcopy(BASE_BODY)


@pytest.fixture
def kube(body: dict[str, Any]) -> FakeKube:
    """An API server holding the store `body` (test modules with other needs define their own)."""
    fake = FakeKube()
    fake.put(body)
    return fake
