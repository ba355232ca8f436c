"""The chart's alert rules with the real promtool (built from Prometheus' Go module): they parse, the
PrometheusRule the chart renders carries exactly them, and the alerts fire on the series they watch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.common import repo_root
from tests.harness.gobuild import ensure_tool
from tests.harness.prometheus import ensure_prometheus, ensure_prometheus_live

CHART = repo_root() / "charts" / "kvs2"
RULES = CHART / "files" / "prometheus-rules.yaml"

LAG_DESCRIPTION = (
    "Its largest per-partition lag has been 20000 records for 5 minutes. Reads with max_lag_records or "
    "linearizable consistency wait on it; eventual reads are stale."
)
NOT_SERVING_DESCRIPTION = (
    "It is still catching up with Kafka (kvs2_catchup_ratio says how far) or cannot reach Kafka; its log "
    "has a catch-up progress line at a steady interval."
)


@pytest.fixture(scope="module", autouse=True)
def _built(pytestconfig: pytest.Config) -> None:
    ensure_prometheus_live(pytestconfig)  # a cold build prints its progress


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ensure_prometheus() / "promtool"), *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_promtool_accepts_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:  # the check above can fail
    broken = yaml.safe_load(RULES.read_text())
    broken["groups"][0]["rules"][0]["expr"] = "max by (instance) (kvs2_partition_lag_records > "
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert _promtool("check", "rules", str(path)).returncode != 0


def _render(*sets: str) -> list[dict[str, Any]]:
    argv = [str(ensure_tool("helm")), "template", "t", str(CHART), "--kube-version", "1.37.0"]
    for item in sets:
        argv += ["--set", item]
    rendered = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


def test_the_chart_renders_the_same_rules_as_a_prometheus_rule() -> None:
    docs = _render("metrics.prometheusRule.enabled=true")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert not [d for d in _render() if d["kind"] in ("PrometheusRule", "PodMonitor", "ServiceMonitor")]


def test_monitors_select_the_ports_and_pods_the_operator_names() -> None:
    from kvs2_operator.model import parse_store
    from kvs2_operator.render import render_children

    from tests.unit.operator.conftest import BASE_BODY

    docs = _render("metrics.serviceMonitor.enabled=true", "metrics.dashboard.enabled=true")
    by_kind = {d["kind"]: d for d in docs if d["kind"] in ("PodMonitor", "ServiceMonitor", "Deployment")}
    # Stores: the PodMonitor selects the pods the operator renders, on their port "metrics".
    statefulset = next(c for c in render_children(parse_store(BASE_BODY)) if c["kind"] == "StatefulSet")
    pod = statefulset["spec"]["template"]
    selector = by_kind["PodMonitor"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    port_names = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    assert by_kind["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] in port_names
    # The operator: the ServiceMonitor's port is a port of the operator's pod, which serves metrics there.
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "metrics" in {p["name"] for p in container["ports"]}
    assert "--metrics-listen" in container["args"]
    assert by_kind["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "metrics"
    (dashboard,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("dashboard")
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["kvs2.json"])["uid"] == "kvs2-overview"


def _series(name: str, values: str) -> dict[str, Any]:
    return {"series": name, "values": values}


def test_alerts_fire_on_lag_not_serving_map_usage_and_operator_errors(tmp_path: Path) -> None:
    """`promtool test rules`: feed series minute by minute and say which alerts must be firing."""
    labels = '{instance="r0:9464", partition="0", pod="r0", namespace="ns"}'
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    _series(f"kvs2_partition_lag_records{labels}", "0 20000+0x10"),
                    _series('kvs2_serving{instance="r0:9464"}', "0+0x15"),
                    _series('kvs2_lmdb_used_ratio{instance="r0:9464"}', "0.95+0x20"),
                    _series('kvs2_operator_stores{ready="False"}', "1+0x15"),
                    _series('kvs2_operator_reconcile_errors_total{reason="KafkaUnavailable"}', "0+5x30"),
                ],
                "alert_rule_test": [
                    # Lag above 10000 for 5 minutes: fires at minute 7 (above from minute 1), not at 3.
                    {"eval_time": "3m", "alertname": "Kvs2ReplicaLagging", "exp_alerts": []},
                    {
                        "eval_time": "7m",
                        "alertname": "Kvs2ReplicaLagging",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "instance": "r0:9464",
                                    "pod": "r0",
                                    "namespace": "ns",
                                },
                                "exp_annotations": {
                                    "summary": "kvs2 replica r0:9464 is more than 10000 records behind Kafka",
                                    "description": LAG_DESCRIPTION,
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "12m",
                        "alertname": "Kvs2ReplicaNotServing",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "instance": "r0:9464"},
                                "exp_annotations": {
                                    "summary": "kvs2 replica r0:9464 has been NOT_SERVING for 10 minutes",
                                    "description": NOT_SERVING_DESCRIPTION,
                                },
                            }
                        ],
                    },
                    {"eval_time": "5m", "alertname": "Kvs2ReplicaNotServing", "exp_alerts": []},
                    {"eval_time": "5m", "alertname": "Kvs2LmdbMapNearlyFull", "exp_alerts": []},
                    {
                        "eval_time": "12m",
                        "alertname": "Kvs2StoreNotReady",
                        "exp_alerts": [
                            _firing(
                                {"ready": "False"},
                                summary="1 KeyValueStore(s) have been Ready=False for 10 minutes",
                                description="kubectl get kvs -A shows which and why (the REASON column).",
                            )
                        ],
                    },
                    {
                        "eval_time": "25m",
                        "alertname": "Kvs2OperatorReconcileErrors",
                        "exp_alerts": [
                            _firing(
                                {"reason": "KafkaUnavailable"},
                                summary="kvs2 operator reconcile passes fail with reason KafkaUnavailable",
                                description="Passes have kept failing for 15 minutes; the stores' conditions "
                                "carry the details.",
                            )
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "rules_test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def _firing(labels: dict[str, str], **annotations: str) -> dict[str, Any]:
    return {"exp_labels": {"severity": "warning", **labels}, "exp_annotations": annotations}
