"""Metrics in Kubernetes: a real Prometheus scrapes the operator's pod and every replica of a store on the
ports the operator and deploy/ name `metrics`, and sees the store Ready and its replicas serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Kube, OperatorPod, store_manifest, store_pods
from tests.e2e.test_store import _wait_ready, operator_pod  # noqa: F401 - the module's operator fixture
from tests.harness.common import wait_until
from tests.harness.kafka import KafkaBroker
from tests.harness.prometheus import ensure_prometheus_live, prometheus

pytestmark = pytest.mark.e2e

METRICS_PORT = 9464  # kvs2_operator.render.METRICS_PORT, and deploy/20-operator.yaml


def _port_named(pod: dict[str, Any], name: str) -> int:
    ports = [p for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    (port,) = [p["containerPort"] for p in ports if p["name"] == name]
    return int(port)


def test_prometheus_scrapes_the_operator_and_every_replica(
    kube: Kube,
    operator_pod: OperatorPod,  # noqa: F811 - the fixture imported above
    kafka: KafkaBroker,
    tmp_path: Path,
    pytestconfig: pytest.Config,
) -> None:
    ensure_prometheus_live(pytestconfig)
    name = "metered"
    kube.apply(store_manifest(name, kafka.bootstrap_servers, replicas=2))
    _wait_ready(kube, name, operator_pod)
    pods = store_pods(kube, name)
    replicas = [f"{p['status']['podIP']}:{_port_named(p, 'metrics')}" for p in pods]
    (operator,) = operator_pod.kube.items("pods", "app.kubernetes.io/name=kvs2-operator")
    operator_target = f"{operator['status']['podIP']}:{_port_named(operator, 'metrics')}"
    assert _port_named(operator, "metrics") == METRICS_PORT
    with prometheus(tmp_path / "prometheus", [*replicas, operator_target], interval="500ms") as prom:
        wait_until(
            lambda: prom.target_health() == ["up"] * 3,
            timeout=60,
            what=f"Prometheus to scrape {prom.targets}",
        )
        wait_until(
            lambda: len(prom.query("kvs2_serving == 1")) == 2, timeout=60, what="both replicas serving"
        )
        lag = prom.query("kvs2_partition_lag_records")
        assert {labels["instance"] for labels, _ in lag} == set(replicas)
        assert all(value == 0 for _, value in lag)

        def store_ready() -> bool:
            ready = prom.query('kvs2_operator_stores{ready="True"}')
            return bool(ready) and ready[0][1] >= 1

        wait_until(store_ready, timeout=90, what="the operator to report a Ready store")
        assert prom.query("sum(kvs2_operator_reconcile_passes_total)")[0][1] >= 1
