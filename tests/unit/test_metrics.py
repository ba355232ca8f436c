"""Metrics of the data plane without Kafka: the RPC interceptor over a real gRPC server, the replica
collector's state series, JSON logs and catch-up progress lines."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from kvs2 import metrics
from kvs2._proto import kvs2_pb2 as pb
from kvs2._proto import kvs2_pb2_grpc as pb_grpc
from kvs2.config import Limits
from kvs2.consistency import ReadOptions
from kvs2.core import Store
from kvs2.interceptors import MetricsInterceptor, _cas_outcome
from kvs2.logs import CatchupReport, JsonFormatter
from kvs2.observe import LiveState
from kvs2.progress import Progress, Snapshot
from kvs2.server import Kvs2Servicer
from kvs2.storage import Record, Replica, TopicIdentity
from prometheus_client import CollectorRegistry

from tests.unit.conftest import FakeWriter

if TYPE_CHECKING:
    from kvs2._proto.kvs2_pb2_grpc import Kvs2AsyncStub


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    for collector in metrics.instruments().all():
        registry.register(collector)
    return registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Kvs2AsyncStub, Progress, Replica]]:
    replica = Replica(tmp_path / "db", map_size=1 << 22)
    replica.reset(TopicIdentity("t", "id", 1))
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(serving=True, partitions=1, topic_id="id"))
    store = Store(
        replica,
        FakeWriter(replica, progress),
        progress,
        Limits(),
        end_offsets=lambda parts: dict.fromkeys(parts, 0),
    )
    server = grpc.aio.server(interceptors=[MetricsInterceptor()])
    pb_grpc.add_Kvs2Servicer_to_server(Kvs2Servicer(store, 5, topic="t"), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.Kvs2Stub(channel), progress, replica
    await server.stop(None)
    replica.close()


async def test_rpcs_are_counted_by_method_and_status_code(
    served: tuple[Kvs2AsyncStub, Progress, Replica],
) -> None:
    stub, _, _ = served
    reg = _registry()
    get_ok = {"service": "kvs2.Kvs2", "method": "Get", "code": "OK"}
    get_bad = {**get_ok, "code": "INVALID_ARGUMENT"}
    before_ok = _value(reg, "kvs2_rpc_requests_total", **get_ok)
    before_bad = _value(reg, "kvs2_rpc_requests_total", **get_bad)
    before_hist = _value(reg, "kvs2_rpc_duration_seconds_count", **get_ok)
    await stub.Set(pb.SetRequest(key=b"a", value=b"1"))
    for _ in range(3):
        await stub.Get(pb.GetRequest(key=b"a"))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Get(pb.GetRequest(key=b""))
    assert _value(reg, "kvs2_rpc_requests_total", **get_ok) - before_ok == 3
    assert _value(reg, "kvs2_rpc_requests_total", **get_bad) - before_bad == 1
    assert _value(reg, "kvs2_rpc_duration_seconds_count", **get_ok) - before_hist == 3


async def test_watch_streams_and_events_are_counted(
    served: tuple[Kvs2AsyncStub, Progress, Replica],
) -> None:
    stub, _, _ = served
    reg = _registry()
    before_put = _value(reg, "kvs2_watch_events_sent_total", type="put")
    call = stub.Watch(pb.WatchRequest(prefix=b"w", progress_interval_ms=50))
    written = False
    async for event in call:
        if event.type == pb.WatchEvent.PUT:
            break
        if not written:  # the stream is open (a PROGRESS event came): now write
            await stub.Set(pb.SetRequest(key=b"w1", value=b"x"))
            written = True
    assert _value(reg, "kvs2_watch_streams_open") >= 1
    assert _value(reg, "kvs2_watch_events_sent_total", type="put") - before_put == 1
    call.cancel()
    for _ in range(100):
        if _value(reg, "kvs2_watch_streams_open") == 0:
            break
        await asyncio.sleep(0.05)
    assert _value(reg, "kvs2_watch_streams_open") == 0


async def test_replica_status_rpc_reports_positions_and_lag(
    served: tuple[Kvs2AsyncStub, Progress, Replica],
) -> None:
    stub, progress, _ = served
    progress.update(
        Snapshot(applied={0: 7}, serving=True, high_watermarks={0: 10}, partitions=1, caught_up_at={})
    )
    reply = await stub.ReplicaStatus(pb.ReplicaStatusRequest())
    assert reply.serving
    assert reply.topic == "t"
    (part,) = reply.partitions
    assert (part.partition, part.applied, part.end_offset, part.lag) == (0, 7, 10, 3)
    assert part.seconds_since_caught_up == -1.0  # never caught up: the sentinel


def test_cas_outcomes_from_reply_or_status() -> None:
    cas = pb.SetRequest(key=b"k", value=b"v", if_revision=0)
    assert _cas_outcome(cas, pb.SetReply(status=pb.PUBLISHED), "OK") == "applied"
    assert _cas_outcome(cas, pb.SetReply(status=pb.CONDITION_FAILED), "OK") == "failed"
    assert _cas_outcome(cas, None, "UNAVAILABLE") == "unknown"
    assert _cas_outcome(cas, None, "DEADLINE_EXCEEDED") == "unknown"
    assert _cas_outcome(cas, None, "INVALID_ARGUMENT") is None  # refused: nothing written
    assert _cas_outcome(pb.SetRequest(key=b"k", value=b"v"), pb.SetReply(), "OK") is None  # not a CAS


def test_collector_reports_positions_lag_staleness_and_lmdb(tmp_path: Path) -> None:
    replica = Replica(tmp_path / "db", map_size=1 << 22)
    replica.reset(TopicIdentity("t", "id", 2))
    replica.apply([Record(b"a", b"1", 0, 0), Record(b"b", b"2", 1, 0)], {0: 1, 1: 1})

    class Fixed:
        now = Snapshot(
            applied={0: 5, 1: 9},
            serving=False,
            high_watermarks={0: 8, 1: 9},
            partitions=2,
            caught_up_at={1: 90.0},
        )

    state = LiveState(Fixed(), replica)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    registry.register(metrics.ReplicaCollector(state, workers=1, clock=lambda: 100.0))
    v = registry.get_sample_value
    assert v("kvs2_partition_lag_records", {"partition": "0"}) == 3
    assert v("kvs2_partition_lag_records", {"partition": "1"}) == 0
    assert v("kvs2_partition_applied_offset", {"partition": "0"}) == 5
    assert v("kvs2_partition_end_offset", {"partition": "0"}) == 8
    assert v("kvs2_partition_seconds_since_caught_up", {"partition": "1"}) == 10.0
    assert math.isinf(v("kvs2_partition_seconds_since_caught_up", {"partition": "0"}) or 0)
    assert v("kvs2_serving") == 0
    assert v("kvs2_catchup_ratio") == pytest.approx(14 / 17)
    Fixed.now = Snapshot(partitions=2)  # starting: Kafka's end offsets not seen yet
    assert v("kvs2_catchup_ratio") == 0
    assert v("kvs2_lmdb_entries") == 2
    assert v("kvs2_lmdb_map_size_bytes") == 1 << 22
    assert (v("kvs2_lmdb_used_pages") or 0) > 0
    replica.close()


def test_read_wait_is_observed_by_consistency() -> None:
    reg = _registry()
    before = _value(reg, "kvs2_read_wait_seconds_count", consistency="linearizable")
    with metrics.read_wait(ReadOptions(linearizable=True)):
        pass
    assert _value(reg, "kvs2_read_wait_seconds_count", consistency="linearizable") - before == 1
    assert metrics.consistency_label(ReadOptions(max_lag_records=5)) == "max_lag"


def test_applied_records_and_bytes_are_counted() -> None:
    reg = _registry()
    records = _value(reg, "kvs2_applied_records_total")
    size = _value(reg, "kvs2_applied_bytes_total")
    metrics.record_applied([Record(b"ab", b"cde", 0, 0), Record(b"f", None, 0, 1)])
    assert _value(reg, "kvs2_applied_records_total") - records == 2
    assert _value(reg, "kvs2_applied_bytes_total") - size == 6


def test_json_logs_carry_metric_label_fields() -> None:
    record = logging.LogRecord("kvs2.x", logging.WARNING, __file__, 1, "skipped %s", ("k",), None)
    record.partition = 3
    record.topic = "t"
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "skipped k"
    assert out["level"] == "WARNING"
    assert (out["partition"], out["topic"]) == (3, "t")


def test_catchup_report_gives_percentage_rate_and_eta() -> None:
    now = [0.0]
    report = CatchupReport("t", clock=lambda: now[0])
    report.line(Snapshot(applied={0: 0}, high_watermarks={0: 1000}, partitions=1))
    now[0] = 10.0
    message, fields = report.line(Snapshot(applied={0: 250}, high_watermarks={0: 1000}, partitions=1))
    assert fields["percent"] == 25.0
    assert fields["records_per_second"] == 25
    assert fields["eta_seconds"] == 30
    assert "25.0% of end offsets" in message
    assert "ETA 30s" in message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"metrics_listen": "9464"}, "--metrics-listen must be HOST:PORT"),
        ({"log_format": "xml"}, "--log-format must be text or json"),
    ],
)
def test_observability_settings_are_checked(changes: dict[str, str], message: str) -> None:
    from kvs2.config import ServeSettings
    from kvs2.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        ServeSettings(bootstrap_servers="b:1", topic="t", data_dir=Path("d"), **changes)  # type: ignore[arg-type]


def test_collector_reports_the_phase_and_the_guards_rebuilds(tmp_path: Path) -> None:
    replica = Replica(tmp_path / "db", map_size=1 << 22)

    class Fixed:
        now = Snapshot(partitions=1, serving=False, guard_rebuilds=2, guard_last_reason="stale")

    registry = CollectorRegistry()
    registry.register(metrics.ReplicaCollector(LiveState(Fixed(), replica), workers=1))  # type: ignore[arg-type]
    v = registry.get_sample_value
    assert v("kvs2_replica_phase", {"phase": "CatchingUp"}) == 1
    assert v("kvs2_replica_phase", {"phase": "Serving"}) == 0
    assert v("kvs2_replica_phase", {"phase": "Bootstrapping"}) == 0
    assert v("kvs2_guard_rebuilds_total") == 2
    Fixed.now = Snapshot(partitions=1, serving=True, guard_rebuilds=2)
    assert v("kvs2_replica_phase", {"phase": "Serving"}) == 1
    replica.close()
