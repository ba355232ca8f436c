"""Each replica's phase and lag in a store's status, as the operator pod reads them from the store pods'
metrics ports on a real control plane: `kubectl get kvs -o wide` shows MAX LAG and PHASES, and
status.pods lists every pod Serving once the store is Ready."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.conftest import Kube, OperatorPod, store_manifest, store_pods
from tests.e2e.test_store import _wait_ready, operator_pod  # noqa: F401 - the module's operator fixture
from tests.harness.kafka import KafkaBroker

pytestmark = pytest.mark.e2e


def _wide_row(kube: Kube, name: str) -> dict[str, str]:
    """`kubectl get kvs NAME -o wide` as {column: value}. kubectl aligns each value under its column's
    title, and titles ("MAX LAG") and values ("2 Serving") hold single spaces only, so slicing the row at
    the titles' start positions splits it exactly."""
    header, row = kube.kubectl("get", "kvs", name, "-o", "wide").splitlines()[:2]
    titles = list(re.finditer(r"\S+(?: \S+)*", header))
    starts = [t.start() for t in titles] + [max(len(header), len(row))]
    return {t.group(): row[a:b].strip() for t, a, b in zip(titles, starts, starts[1:], strict=False)}


def test_wide_output_shows_max_lag_and_status_lists_serving_pods(
    kube: Kube,
    operator_pod: OperatorPod,  # noqa: F811 - the fixture imported above
    kafka: KafkaBroker,
) -> None:
    name = "phased"
    kube.apply(store_manifest(name, kafka.bootstrap_servers, replicas=2))
    _wait_ready(kube, name, operator_pod)
    pods = sorted(p["metadata"]["name"] for p in store_pods(kube, name))

    def all_serving() -> Any:
        status = (kube.get("kvs", name) or {}).get("status") or {}
        listed = status.get("pods") or []
        serving = [p["name"] for p in listed if p["phase"] == "Serving" and p["ready"]]
        return status if sorted(serving) == pods and len(listed) == len(pods) else None

    status = kube.wait("status.pods to list every pod Serving", all_serving, timeout=90, dump="kvs")
    assert status["maxLag"] == 0
    assert status["phases"] == "2 Serving"
    assert all(p["lag"] == 0 for p in status["pods"])
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and "not serving" not in ready["message"]

    row = _wide_row(kube, name)
    assert row["MAX LAG"] == "0", row
    assert row["PHASES"] == "2 Serving", row
    narrow = kube.kubectl("get", "kvs", name).splitlines()[0]
    assert "MAX LAG" not in narrow  # priority 1: only in -o wide
