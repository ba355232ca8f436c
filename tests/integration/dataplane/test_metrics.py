"""Metrics, progress logs and `kvs2 status` of real replicas, scraped by a real Prometheus.

How the lag is made to rise honestly: the replica is stopped (SIGTERM), many records are produced, and it is
started again on the same data. Its ingester resumes from its stored offsets and replays the backlog while
its metrics endpoint is already up, so Prometheus scrapes the lag while it is above 0 and as it falls to 0.
Why not SIGSTOP: that would freeze the metrics endpoint too (it lives in the same process), and a replica
that cannot be scraped shows no lag at all. Why not throttle the consumer: the replica's reader pins its
fetch sizes, and the lag it reports is measured against end offsets from its own fetch responses, so only
a backlog the ingester has fetched but not yet applied is visible — which is exactly what a replay is.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from kvs2.client import Client
from kvs2.metrics import parse_listen

from tests.harness.common import free_port, repo_root, wait_until
from tests.harness.kafka import KafkaBroker
from tests.harness.prometheus import PrometheusServer, ensure_prometheus_live
from tests.harness.replica import ReplicaProcess, kvs2_command
from tests.integration.dataplane.conftest import PARTITIONS, StartReplica

# A backlog big enough that replaying it takes more than a few scrape intervals (200 ms) even on a fast
# machine (the replica applies a few 100k records/s at best; bench/RESULTS.md).
RECORDS = 300_000


def _metrics_args(listen: str) -> tuple[str, ...]:
    return ("--metrics-listen", listen)


def _scrape(listen: str) -> str:
    host, port = parse_listen(listen)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for i in range(count):
        while True:
            try:
                producer.produce(topic, key=f"k{i}".encode(), value=b"v" * 100)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0


@pytest.fixture(scope="session")
def prometheus_bin(pytestconfig: pytest.Config) -> Path:
    return ensure_prometheus_live(pytestconfig)


@pytest.fixture
def scraped(tmp_path: Path, prometheus_bin: Path) -> Iterator[list[PrometheusServer]]:
    """Prometheus servers the test starts (once it knows its targets); all stopped at the end."""
    servers: list[PrometheusServer] = []
    yield servers
    for server in servers:
        server.stop()


def test_prometheus_sees_lag_rise_while_the_replica_replays_a_backlog_and_return_to_zero(
    kafka: KafkaBroker,
    topic: str,
    start_replica: StartReplica,
    scraped: list[PrometheusServer],
    tmp_path: Path,
) -> None:
    from kvs2_operator import metrics as operator_metrics

    listen = f"127.0.0.1:{free_port()}"
    replica = start_replica(kafka.bootstrap_servers, topic, "a", extra_args=_metrics_args(listen))
    operator = operator_metrics.serve("127.0.0.1:0")  # the operator's endpoint, scraped beside the replica
    operator_target = f"127.0.0.1:{operator.server_port}"
    prom = PrometheusServer(tmp_path / "prometheus", [listen, operator_target], interval="200ms").start()
    scraped.append(prom)

    def lag() -> float | None:
        result = prom.query("max(kvs2_partition_lag_records)")
        return result[0][1] if result else None

    wait_until(lambda: lag() == 0, timeout=60, what="Prometheus to scrape lag 0 from the replica")
    assert len(prom.query("kvs2_partition_lag_records")) == PARTITIONS
    wait_until(lambda: prom.target_health() == ["up", "up"], timeout=30, what="both targets up")
    assert {labels["ready"] for labels, _ in prom.query("kvs2_operator_stores")} == {
        "True",
        "False",
        "Unknown",
    }
    operator.shutdown()
    operator.server_close()

    def recorded_lag() -> float | None:
        """The largest lag Prometheus holds for the last 10 minutes (None: no samples in that window yet)."""
        result = prom.query("max_over_time(max(kvs2_partition_lag_records)[10m:200ms])")
        return result[0][1] if result else None

    wait_until(lambda: recorded_lag() == 0, timeout=30, what="Prometheus to hold only lag 0 so far")

    assert replica.stop() == 0  # the ingester stops; Kafka moves on without it
    _produce(kafka.bootstrap_servers, topic, RECORDS)
    replica = start_replica(kafka.bootstrap_servers, topic, "a", wait=False, extra_args=_metrics_args(listen))

    wait_until(lambda: (recorded_lag() or 0) > 0, timeout=120, what="Prometheus to record a lag above 0")
    wait_until(lambda: lag() == 0, timeout=300, what="the lag to fall back to 0")
    assert prom.query("kvs2_serving")[0][1] == 1
    # What the replica says over gRPC agrees: every partition applied up to its end offset.
    out = subprocess.run(
        [*kvs2_command(), "status", "--target", replica.target, "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    status = json.loads(out)
    assert status["health"] == "SERVING"
    assert [p["lag"] for p in status["partitions"]] == [0] * PARTITIONS
    assert sum(p["applied"] for p in status["partitions"]) >= RECORDS
    assert prom.query("sum(kvs2_applied_records_total)")[0][1] >= RECORDS


def test_rpc_cas_and_watch_metrics_of_a_live_replica(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    replica = start_replica(kafka.bootstrap_servers, topic, "a", extra_args=_metrics_args(listen))
    with Client(replica.target) as c:
        written = c.set(b"k", b"v")
        assert c.get(b"k", after=[written]) is not None
        assert c.get(b"k", consistency="linearizable") is not None
        assert c.set_if(b"lock", b"me", 0)
        assert not c.set_if(b"lock", b"you", 0)
        for event in c.watch(key=b"k", from_={written.partition: written.offset}):
            if event.kind == "put":
                break
    text = _scrape(listen)

    def value(name: str, **labels: str) -> float:
        return sum(v for ls, v in _samples(text, name) if all(ls.get(k) == x for k, x in labels.items()))

    assert value("kvs2_rpc_requests_total", service="kvs2.Kvs2", method="Get", code="OK") == 2
    assert value("kvs2_rpc_duration_seconds_count", service="kvs2.Kvs2", method="Set", code="OK") == 3
    assert value("kvs2_cas_total", outcome="applied") == 1
    assert value("kvs2_cas_total", outcome="failed") == 1
    assert value("kvs2_watch_events_sent_total", type="put") >= 1
    assert value("kvs2_read_wait_seconds_count", consistency="after") == 1
    assert value("kvs2_read_wait_seconds_count", consistency="linearizable") == 1
    assert value("kvs2_serving") == 1
    assert value("kvs2_lmdb_entries") >= 2
    assert value("kvs2_lmdb_map_size_bytes") > 0
    assert value("process_resident_memory_bytes") > 0


def test_workers_give_one_view_without_double_counting(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    replica = start_replica(
        kafka.bootstrap_servers, topic, "a", extra_args=(*_metrics_args(listen), "--workers", "3")
    )
    for i in range(30):  # a new connection each time: SO_REUSEPORT spreads them over the processes
        with Client(replica.target) as c:
            c.get(f"k{i}".encode())
    text = _scrape(listen)
    gets = _samples(text, "kvs2_rpc_requests_total")
    ok = [v for ls, v in gets if ls["method"] == "Get" and ls["code"] == "OK"]
    assert ok == [30.0]  # summed over the processes, exactly once each
    lags = _samples(text, "kvs2_partition_lag_records")
    assert sorted(ls["partition"] for ls, _ in lags) == [str(p) for p in range(PARTITIONS)]
    assert _samples(text, "kvs2_workers") == [({}, 3.0)]


def test_catch_up_progress_is_logged_and_status_prints_a_table(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica, tmp_path: Path
) -> None:
    _produce(kafka.bootstrap_servers, topic, RECORDS)
    replica = ReplicaProcess(
        bootstrap_servers=kafka.bootstrap_servers,
        topic=topic,
        data_dir=tmp_path / "late",
        log_path=tmp_path / "late.log",
        extra_args=("--progress-log-interval", "0.1", "--log-format", "json"),
    ).start()
    try:
        replica.wait_serving(timeout=180)
        lines = [json.loads(line) for line in replica.log_text().splitlines() if line.startswith("{")]
        progress = [line for line in lines if line["message"].startswith("catching up with topic")]
        assert progress, replica.log_text()[-3000:]
        assert all(line["topic"] == topic for line in progress)
        assert any(
            "% of end offsets" in line["message"] and "records/s" in line["message"] for line in progress
        )
        table = subprocess.run(
            [*kvs2_command(), "status", "--target", replica.target],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert "SERVING" in table[0]
        assert table[1].split()[:4] == ["PARTITION", "APPLIED", "END", "OFFSET"]
        assert len(table) == 2 + PARTITIONS
        assert all(row.split()[3] == "0" for row in table[2:])  # lag column
    finally:
        replica.stop()


def _family_names(text: str) -> set[str]:
    """Every series name a scrape can hold: families with their type's suffixes, samples or not."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_every_dashboard_query_names_a_metric_a_live_scrape_has(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    from kvs2_operator import metrics as operator_metrics

    listen = f"127.0.0.1:{free_port()}"
    start_replica(kafka.bootstrap_servers, topic, "a", extra_args=_metrics_args(listen))
    operator = operator_metrics.serve("127.0.0.1:0")
    try:
        scraped = _family_names(_scrape(listen)) | _family_names(_scrape(f"127.0.0.1:{operator.server_port}"))
    finally:
        operator.shutdown()
        operator.server_close()
    dashboard = json.loads((repo_root() / "charts/kvs2/files/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"\b(kvs2_[a-z0-9_]+)", expr)}
    assert used, exprs
    assert used <= scraped, f"dashboard queries name metrics no scrape has: {sorted(used - scraped)}"
    # And the alert rules name only live metrics too.
    rules = (repo_root() / "charts/kvs2/files/prometheus-rules.yaml").read_text()
    in_rules = {n for n in re.findall(r"\b(kvs2_[a-z0-9_]+)", rules) if not n.endswith("_says")}
    assert in_rules <= scraped, sorted(in_rules - scraped)
