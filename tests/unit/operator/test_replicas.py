"""Replica phases in the store's status: parsing a real replica's /metrics text, asking pods over real HTTP
on 127.0.0.1 (one that answers, one that never does), and what the reconcile pass writes."""

from __future__ import annotations

import asyncio
import copy
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kvs2 import metrics as dp_metrics
from kvs2.progress import Snapshot
from kvs2_operator import replicas
from kvs2_operator.errors import Reason
from kvs2_operator.kafka_admin import TopicAdmins
from kvs2_operator.kube import KubeApi
from kvs2_operator.reconcile import Deps, reconcile
from kvs2_operator.status import build_status, topic_condition, workload_condition
from prometheus_client import CollectorRegistry, generate_latest

from .fakes import FakeAdmin, FakeKube

ROOT = Path(__file__).resolve().parents[3]


class _State:
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def lmdb(self) -> dp_metrics.LmdbStats:
        return dp_metrics.LmdbStats(map_size=1 << 20, page_size=4096, used_pages=3, entries=1)

    def skipped_records(self) -> int:
        return 0


def _exposition(snapshot: Snapshot, now: float = 100.0) -> str:
    """What a replica's /metrics says for `snapshot` (the data plane's own collector)."""
    registry = CollectorRegistry()
    registry.register(dp_metrics.ReplicaCollector(_State(snapshot), workers=1, clock=lambda: now))
    return generate_latest(registry).decode()


CATCHING_UP = Snapshot(
    applied={0: 10, 1: 0},
    high_watermarks={0: 25, 1: 7},
    partitions=2,
    caught_up_at={0: 40.0, 1: 90.0},
)
SERVING = Snapshot(
    applied={0: 25, 1: 7}, high_watermarks={0: 25, 1: 7}, partitions=2, serving=True, caught_up_at={0: 99.5}
)


# ----- the data plane's side --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("snapshot", "phase"),
    [
        (SERVING, "Serving"),
        (CATCHING_UP, "CatchingUp"),
        (Snapshot(applied={0: 3}, problem="no space left on device"), "NotServing"),
        (Snapshot(), "CatchingUp"),
    ],
)
def test_the_replica_exports_exactly_one_current_phase(snapshot: Snapshot, phase: str) -> None:
    registry = CollectorRegistry()
    registry.register(dp_metrics.ReplicaCollector(_State(snapshot), workers=1))
    values = {p: registry.get_sample_value("kvs2_replica_phase", {"phase": p}) for p in dp_metrics.PHASES}
    assert values == {p: float(p == phase) for p in dp_metrics.PHASES}
    assert set(dp_metrics.PHASES) == set(replicas.DATA_PLANE_PHASES)  # the operator knows every phase


def test_a_bootstrapping_replica_answers_on_its_metrics_port_before_its_store_opens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listen = f"127.0.0.1:{port}"
    with dp_metrics.phase_endpoint(listen, dp_metrics.BOOTSTRAPPING):
        text = asyncio.run(replicas.http_fetch(f"http://{listen}/metrics", 5.0))
    assert replicas.parse_metrics(text).phase == "Bootstrapping"
    with pytest.raises(
        ConnectionRefusedError
    ):  # closed again: the replica's own endpoint binds the port next
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# ----- parsing ------------------------------------------------------------------------------------------
def test_parse_takes_the_phase_and_the_worst_partition() -> None:
    reading = replicas.parse_metrics(_exposition(CATCHING_UP))
    assert reading == replicas.Reading("CatchingUp", lag=15, seconds_since_caught_up=60.0)


def test_parse_a_partition_never_caught_up_is_infinitely_behind() -> None:
    reading = replicas.parse_metrics(
        _exposition(Snapshot(applied={0: 0}, high_watermarks={0: 5}, partitions=1))
    )
    assert reading.seconds_since_caught_up == float("inf")
    assert reading.lag == 5


def test_parse_a_replica_from_before_the_phase_gauge_is_judged_by_kvs2_serving() -> None:
    old = "\n".join(line for line in _exposition(SERVING).splitlines() if "kvs2_replica_phase" not in line)
    assert "kvs2_serving 1.0" in old
    assert replicas.parse_metrics(old + "\n").phase == "Serving"


@pytest.mark.parametrize("text", ["", "process_open_fds 3\n", "{{{ not prometheus"])
def test_parse_refuses_what_is_not_a_replica(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the parser's complaint
        replicas.parse_metrics(text)


# ----- asking pods over HTTP ----------------------------------------------------------------------------
def _pod(name: str, ip: str | None, port: int, ready: bool = True, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", **meta},
        "spec": {"containers": [{"name": "kvs2", "ports": [{"name": "metrics", "containerPort": port}]}]},
        "status": {
            **({"podIP": ip} if ip else {}),
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


@pytest.fixture
def answering() -> Iterator[int]:
    """A real replica metrics endpoint (the data plane's server and collector) on 127.0.0.1."""
    registry = CollectorRegistry()
    registry.register(dp_metrics.ReplicaCollector(_State(CATCHING_UP), workers=1, clock=lambda: 100.0))
    server = dp_metrics.MetricsServer("127.0.0.1:0", registry)
    yield server.port
    server.close()


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that accepts connections and never answers (a wedged process)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


async def test_every_pod_is_asked_and_a_silent_one_is_unknown_without_holding_up_the_others(
    answering: int, silent: int
) -> None:
    kube = FakeKube()
    for pod in [
        _pod("orders-0", "127.0.0.1", answering),
        _pod("orders-1", "127.0.0.1", silent, ready=False),
        _pod("orders-2", None, answering, ready=False),
        _pod("orders-10", "127.0.0.1", answering, deletionTimestamp="2026-12-02T00:00:00Z"),
    ]:
        kube.put(pod)
    reports = await replicas.observe(cast(KubeApi, kube), "shop", "orders", timeout=0.5)
    assert [(r.pod, r.phase, r.ready) for r in reports] == [
        ("orders-0", "CatchingUp", True),
        ("orders-1", "Unknown", False),
        ("orders-2", "Pending", False),
        ("orders-10", "Terminating", True),
    ]
    assert reports[0].lag == 15 and reports[0].seconds_since_caught_up == 60
    assert "did not answer within 0.5s" in reports[1].message
    fields = replicas.status_fields(reports)
    assert fields["maxLag"] == 15
    assert fields["phases"] == "1 CatchingUp, 1 Pending, 1 Terminating, 1 Unknown"
    assert fields["pods"][0] == {
        "name": "orders-0",
        "phase": "CatchingUp",
        "ready": True,
        "lag": 15,
        "secondsSinceCaughtUp": 60,
    }
    phrase = replicas.not_serving(reports)
    assert phrase is not None
    assert phrase.startswith("not serving: orders-0 CatchingUp, orders-1 Unknown (its metrics port did not")
    assert "orders-2 Pending" in phrase


async def test_a_refused_connection_is_unknown_with_the_reason() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    report = await replicas.report(_pod("orders-0", "127.0.0.1", closed), replicas.http_fetch, 2.0)
    assert report.phase == "Unknown"
    assert report.message.startswith("its metrics port: ")
    assert report.lag is None


def test_all_serving_names_nobody() -> None:
    reports = [replicas.ReplicaReport(f"orders-{i}", "Serving", True, 0, 0) for i in range(3)]
    assert replicas.not_serving(reports) is None
    assert replicas.status_fields(reports)["phases"] == "3 Serving"
    assert replicas.status_fields(None) == {"pods": [], "phases": "", "maxLag": None}


# ----- the status ---------------------------------------------------------------------------------------
def _status_schema(path: str) -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / path).read_text())
    (version,) = crd["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["status"])


@pytest.mark.parametrize("path", ["deploy/crd.yaml", "charts/kvs2/files/keyvaluestores.kvs2.io.yaml"])
def test_the_crd_declares_the_replica_fields_and_shows_max_lag_in_wide_output(path: str) -> None:
    """Undeclared status fields are pruned by the API server: every key written must be declared."""
    schema = _status_schema(path)
    reports = [
        replicas.ReplicaReport("orders-0", "Serving", True, 0, 1),
        replicas.ReplicaReport("orders-1", "Unknown", False, message="m"),
    ]
    fields = replicas.status_fields(reports)
    assert set(fields) <= set(schema["properties"])
    item = schema["properties"]["pods"]["items"]
    for entry in fields["pods"]:
        assert set(entry) <= set(item["properties"])
        assert set(item["required"]) <= set(entry)
    crd = yaml.safe_load((ROOT / path).read_text())
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Max Lag"]["jsonPath"] == ".status.maxLag"
    assert columns["Max Lag"]["priority"] == 1  # -o wide only
    assert columns["Phases"]["jsonPath"] == ".status.phases"


def test_a_max_lag_no_longer_known_is_removed_not_kept() -> None:
    kwargs: dict[str, Any] = {
        "generation": 1,
        "topic": topic_condition(True, Reason.TOPIC_CREATED, "m"),
        "workload": workload_condition(None, 1),
        "now": "2026-12-02T00:00:00Z",
    }
    first = build_status(
        {}, extra=replicas.status_fields([replicas.ReplicaReport("a", "Serving", True, 7)]), **kwargs
    )
    assert first["maxLag"] == 7
    second = build_status(first, extra=replicas.status_fields(None), **kwargs)
    assert "maxLag" in second and second["maxLag"] is None  # null in the merge patch removes it
    third = build_status(
        {k: v for k, v in second.items() if v is not None}, extra=replicas.status_fields(None), **kwargs
    )
    assert "maxLag" not in third


# ----- the reconcile pass -------------------------------------------------------------------------------
@pytest.fixture
def store_kube(body: dict[str, Any]) -> FakeKube:
    kube = FakeKube()
    kube.put(body)
    return kube


async def test_reconcile_writes_each_pods_phase_and_names_the_ones_not_serving_in_ready(
    store_kube: FakeKube, body: dict[str, Any]
) -> None:
    phases: dict[str, str] = {}  # what each pod's metrics port says, by URL

    async def fetch(url: str, timeout: float) -> str:
        return phases[url]

    deps = Deps(
        kube=cast(KubeApi, store_kube),
        topics=TopicAdmins(admin_factory=lambda _cfg: FakeAdmin()),
        scrape=fetch,
    )
    await reconcile(copy.deepcopy(body), deps)
    sts = store_kube.objects[("StatefulSet", "shop", "orders")]
    sts["status"] = {"observedGeneration": 1, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3}
    for i in range(3):
        store_kube.put(_pod(f"orders-{i}", f"10.0.0.{i}", 9464))
        phases[f"http://10.0.0.{i}:9464/metrics"] = _exposition(SERVING)
    await reconcile(copy.deepcopy(body), deps)
    status = store_kube.objects[("KeyValueStore", "shop", "orders")]["status"]
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "True"
    assert "not serving" not in ready["message"]
    assert status["phases"] == "3 Serving" and status["maxLag"] == 0
    assert [p["phase"] for p in status["pods"]] == ["Serving"] * 3

    phases["http://10.0.0.2:9464/metrics"] = _exposition(CATCHING_UP)
    await reconcile(copy.deepcopy(body), deps)
    status = store_kube.objects[("KeyValueStore", "shop", "orders")]["status"]
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["message"].endswith("; not serving: orders-2 CatchingUp")
    assert status["maxLag"] == 15
    assert status["phases"] == "2 Serving, 1 CatchingUp"
    assert status["pods"][2] == {
        "name": "orders-2",
        "phase": "CatchingUp",
        "ready": True,
        "lag": 15,
        "secondsSinceCaughtUp": 60,
    }

    writes = store_kube.status_writes
    await reconcile(copy.deepcopy(body), deps)
    assert store_kube.status_writes == writes  # nothing changed, nothing written


@pytest.mark.parametrize(
    ("caught_up_ago", "shown"),
    [(0.3, None), (1.7, None), (42.0, 42)],  # flicker hidden; a replica cut off from Kafka shows it
)
async def test_a_caught_up_replica_shows_seconds_since_caught_up_only_once_it_matters(
    caught_up_ago: float, shown: int | None
) -> None:
    snapshot = Snapshot(
        applied={0: 5}, high_watermarks={0: 5}, partitions=1, serving=True, caught_up_at={0: 100.0}
    )
    text = _exposition(snapshot, now=100.0 + caught_up_ago)

    async def fetch(url: str, timeout: float) -> str:
        return text

    report = await replicas.report(_pod("orders-0", "10.0.0.1", 9464), fetch, 2.0)
    assert (report.phase, report.lag, report.seconds_since_caught_up) == ("Serving", 0, shown)
