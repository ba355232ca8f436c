"""A running replica that must rebuild: when it restarts to take a peer's snapshot and when it rebuilds in
place, the durable "must rebuild" mark, the guard's count across the restart, and what the ingester
says when it recovers (the real-Kafka test is tests/integration/dataplane/test_rebuild_running.py)."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kvs2.bootstrap import _answering, why_build
from kvs2.config import ServeSettings
from kvs2.errors import StorageFull, Unavailable
from kvs2.guard import COUNTERS, GuardCounters
from kvs2.ingest import Ingester
from kvs2.kafka_io import OffsetGone
from kvs2.progress import Snapshot
from kvs2.restart import CARRIED_ENV, carried_env, command_line, take_carried
from kvs2.storage import Record, Replica, TopicIdentity

from tests.harness.common import LOOPBACK, free_port
from tests.unit.test_staleness_evidence import IDENTITY, FakeAdmin, FakeReader, _wait

RECREATED = TopicIdentity("t", "another-topic-id", 2)


@dataclass
class SwitchingAdmin(FakeAdmin):
    """The fake admin whose topic can be deleted and recreated (`now`) while the replica runs."""

    now: TopicIdentity = IDENTITY

    def describe(self, topic: str, timeout: float = 10.0) -> TopicIdentity:
        self._check()
        return self.now


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    r = Replica(tmp_path / "db", map_size=1 << 22)
    yield r
    r.close()


class Restarts:
    """The restart hook: records each reason (the server would re-exec the process)."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.called = threading.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.called.set()


def _ingester(
    replica: Replica,
    admin: FakeAdmin,
    snapshots: list[Snapshot],
    restart: Restarts | None,
    reader: Callable[[], FakeReader] = FakeReader,
    *,
    restarted: bool = False,
) -> Ingester:
    return Ingester(
        replica,
        admin,  # type: ignore[arg-type]
        reader,  # type: ignore[arg-type]
        "t",
        snapshots.append,
        identity_check_interval=0.05,
        restart_to_rebuild=restart,
        may_restart_before_serving=not restarted,
    )


class GoneOnce(FakeReader):
    """The first reader finds the stored offsets gone from Kafka (deleted by retention)."""

    def __init__(self, gone: list[bool]) -> None:
        super().__init__()
        self._gone = gone

    def assign(self, partitions: int, next_offsets: Mapping[int, int]) -> None:
        if self._gone:
            self._gone.pop()
            raise OffsetGone("partition 0's offset 3 is no longer in the log (it starts at 5)")


# ----- the durable mark ------------------------------------------------------------------------------
def test_a_marked_store_is_no_topics_replica_and_says_why_it_must_build(replica: Replica) -> None:
    replica.reset(IDENTITY)
    replica.apply([Record(b"k", b"old", 0, 0)], {0: 1})
    replica.mark_rebuild("topic 't' changed")
    with pytest.raises(Unavailable):  # a read that passed the serving check an instant earlier
        replica.get(b"k", IDENTITY.topic_id)
    assert replica.identity() is None
    assert replica.rebuild_reason() == "topic 't' changed"
    assert why_build(replica, IDENTITY, 86_400.0, 60.0) == "it must be rebuilt: topic 't' changed"
    replica.reset(IDENTITY)  # a build from the beginning (replay) forgets the mark
    assert replica.rebuild_reason() is None
    assert why_build(replica, IDENTITY, 86_400.0, 60.0) is None


# ----- the decision ----------------------------------------------------------------------------------
def test_with_peers_a_topic_recreated_while_running_restarts_to_rebuild(replica: Replica) -> None:
    admin = SwitchingAdmin()
    snapshots: list[Snapshot] = []
    restart = Restarts()
    ingester = _ingester(replica, admin, snapshots, restart)
    ingester.start()
    try:
        _wait(lambda: snapshots and snapshots[-1].serving, "serving")
        admin.now = RECREATED
        assert restart.called.wait(30)
        assert not snapshots[-1].serving  # NOT_SERVING before the process goes
        assert ingester.alive  # it waits to be stopped: the supervisor must not count a dead ingester
    finally:
        ingester.stop()
    (reason,) = restart.reasons
    assert "another-topic-id" in reason
    assert replica.rebuild_reason() == reason  # the next start (kvs2.bootstrap) asks peers for this
    assert replica.identity() is None


def test_without_peers_a_topic_recreated_while_running_is_rebuilt_in_place(replica: Replica) -> None:
    admin = SwitchingAdmin()
    snapshots: list[Snapshot] = []
    ingester = _ingester(replica, admin, snapshots, None)
    ingester.start()
    try:
        _wait(lambda: snapshots and snapshots[-1].serving, "serving")
        admin.now = RECREATED
        _wait(lambda: snapshots[-1].serving and snapshots[-1].topic_id == RECREATED.topic_id, "rebuilt")
    finally:
        ingester.stop()
    assert replica.identity() == RECREATED
    assert replica.rebuild_reason() is None


def test_the_first_session_builds_in_place_what_the_start_up_bootstrap_could_not(
    replica: Replica,
) -> None:
    """At start the bootstrap already asked the peers; restarting again would only loop."""
    replica.reset(IDENTITY)
    admin = SwitchingAdmin(now=RECREATED)
    snapshots: list[Snapshot] = []
    restart = Restarts()
    ingester = _ingester(replica, admin, snapshots, restart)
    ingester.start()
    try:
        _wait(lambda: snapshots and snapshots[-1].serving, "serving")
    finally:
        ingester.stop()
    assert restart.reasons == []
    assert replica.identity() == RECREATED


def test_stored_offsets_gone_from_kafka_restart_to_take_a_snapshot(replica: Replica) -> None:
    replica.reset(IDENTITY)
    restart = Restarts()
    gone = [True]
    ingester = _ingester(replica, FakeAdmin(), [], restart, lambda: GoneOnce(gone))
    ingester.start()
    try:
        assert restart.called.wait(30)
    finally:
        ingester.stop()
    assert "no longer in the log" in restart.reasons[0]


def test_a_process_restarted_to_rebuild_rebuilds_in_place_until_it_first_serves(replica: Replica) -> None:
    """No loop of restarts: the process that replaced one must serve before it may restart again."""
    replica.reset(IDENTITY)
    restart = Restarts()
    gone = [True]
    snapshots: list[Snapshot] = []
    ingester = _ingester(replica, FakeAdmin(), snapshots, restart, lambda: GoneOnce(gone), restarted=True)
    ingester.start()
    try:
        _wait(lambda: snapshots and snapshots[-1].serving, "serving after a rebuild in place")
    finally:
        ingester.stop()
    assert restart.reasons == []
    assert replica.identity() == IDENTITY


def test_a_guard_rebuild_counts_once_across_the_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    before = GuardCounters(rebuilds=2, last_reason="an earlier one")
    env = carried_env(before, {"PATH": "/bin"})
    assert env["PATH"] == "/bin"
    after = GuardCounters()
    assert take_carried(after, env)  # this process replaced one that restarted to rebuild
    assert (after.rebuilds, after.last_reason) == (2, "an earlier one")
    assert CARRIED_ENV not in env  # taken: a later restart carries its own count
    broken = {CARRIED_ENV: "not json"}
    assert take_carried(after, broken)  # a bad value is ignored, never fatal
    assert after.rebuilds == 2
    assert not take_carried(after, {})
    assert COUNTERS is not after


def test_the_restart_runs_the_same_command_line_or_the_module_when_called_in_process() -> None:
    assert command_line(sys.argv[1:]) == sys.orig_argv  # `kvs2 serve …` as it was started
    assert command_line(["serve", "--topic", "t"]) == [
        sys.executable,
        "-m",
        "kvs2.cli",
        "serve",
        "--topic",
        "t",
    ]


# ----- recovery messages -----------------------------------------------------------------------------
def test_after_a_full_disk_the_ingester_says_the_disk_recovered_not_kafka(
    replica: Replica, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_apply = replica.apply
    failures = [StorageFull("the disk of data directory x is full (0 bytes free)")]

    def apply(*args: object, **kwargs: object) -> object:
        if failures:
            raise failures.pop()
        return real_apply(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(replica, "apply", apply)
    snapshots: list[Snapshot] = []
    ingester = _ingester(replica, FakeAdmin(), snapshots, None)
    with caplog.at_level(logging.INFO, logger="kvs2.ingest"):
        ingester.start()
        try:
            _wait(lambda: snapshots and snapshots[-1].serving, "serving after the disk recovered", 60)
        finally:
            ingester.stop()
    text = caplog.text
    assert "is full" in text
    assert "Kafka is reachable again" not in text
    assert "accepts writes again" in text


# ----- the plaintext health port while bootstrapping ------------------------------------------------
def test_the_plaintext_health_port_says_not_serving_while_bootstrapping(tmp_path: Path) -> None:
    health = f"{LOOPBACK}:{free_port()}"
    settings = ServeSettings(
        bootstrap_servers=f"{LOOPBACK}:1",
        topic="t",
        data_dir=tmp_path / "db",
        listen=f"{LOOPBACK}:{free_port()}",
        health_listen=health,
    )
    with _answering(settings), grpc.insecure_channel(health) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
