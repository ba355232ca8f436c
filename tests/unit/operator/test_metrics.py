"""The operator's metrics over the reconcile pass with fake Kubernetes and Kafka borders."""

from __future__ import annotations

from typing import Any, cast

from kvs2_operator import metrics
from kvs2_operator.kafka_admin import TopicAdmins
from kvs2_operator.kube import KubeApi
from kvs2_operator.reconcile import Deps, reconcile

from .fakes import FakeAdmin, FakeKube


def _value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_passes_errors_by_reason_kafka_calls_and_readiness_are_counted(body: dict[str, Any]) -> None:
    kube = FakeKube()
    kube.put(body)
    admin = FakeAdmin()
    deps = Deps(kube=cast(KubeApi, kube), topics=TopicAdmins(admin_factory=lambda _cfg: admin))
    before = {
        "ok": _value("kvs2_operator_reconcile_passes_total", result="ok"),
        "error": _value("kvs2_operator_reconcile_passes_total", result="error"),
        "reason": _value("kvs2_operator_reconcile_errors_total", reason="KafkaUnavailable"),
        "durations": _value("kvs2_operator_reconcile_duration_seconds_count"),
        # A pass asks Kafka for its cluster id first (ownership), then ensures the topic.
        "cluster_id_failed": _value("kvs2_operator_kafka_admin_failures_total", call="cluster_id"),
        "ensure": _value("kvs2_operator_kafka_admin_duration_seconds_count", call="ensure"),
    }
    admin.down = True
    outcome = await reconcile(body, deps)
    assert outcome is not None and outcome.error is not None
    assert _value("kvs2_operator_reconcile_passes_total", result="error") - before["error"] == 1
    assert _value("kvs2_operator_reconcile_errors_total", reason="KafkaUnavailable") - before["reason"] == 1
    assert (
        _value("kvs2_operator_kafka_admin_failures_total", call="cluster_id") - before["cluster_id_failed"]
        == 1
    )
    assert _value("kvs2_operator_stores", ready="False") >= 1
    admin.down = False
    outcome = await reconcile(body, deps)
    assert outcome is not None and outcome.error is None
    assert _value("kvs2_operator_reconcile_passes_total", result="ok") - before["ok"] == 1
    assert _value("kvs2_operator_reconcile_duration_seconds_count") - before["durations"] == 2
    assert _value("kvs2_operator_kafka_admin_duration_seconds_count", call="ensure") - before["ensure"] == 1
    kube.objects.pop(("KeyValueStore", "shop", "orders"))
    assert await reconcile(body, deps) is None  # gone: no longer counted among the stores
    key = ("shop", "orders")
    assert key not in metrics.STORES._ready


def test_ready_of_reads_the_ready_condition() -> None:
    status = {"conditions": [{"type": "TopicReady", "status": "True"}, {"type": "Ready", "status": "False"}]}
    assert metrics.ready_of(status) == "False"
    assert metrics.ready_of({}) == "Unknown"
