"""Issue 8, defect 9: the smaller fault-handling holes.

- an ingester thread that dies (even inside its own error handling) must make the replica NOT_SERVING
  and the process exit non-zero, so that it is restarted;
- the clean-up janitor must survive any exception, and shutdown must flush the producer and close LMDB
  whatever happened to the janitor;
- a known CONDITION_FAILED stays CONDITION_FAILED when its immediate clean-up tombstone finds the
  producer's queue full;
- Kafka settings that would break the store's guarantees are refused with a clear ConfigError, and
  no client may make Kafka auto-create the topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kvs2 import server
from kvs2._proto import kvs2_pb2 as pb
from kvs2._proto import kvs2_pb2_grpc as pb_grpc
from kvs2.cli import main as cli_main
from kvs2.conditional import ConditionalWrites
from kvs2.config import ServeSettings, kafka_config_from_env
from kvs2.errors import ConfigError, KafkaUnavailable
from kvs2.ingest import Ingester
from kvs2.kafka_io import Writer, WriteToken, client_config
from kvs2.progress import Progress, Snapshot
from kvs2.storage import REQUEST_ID_BYTES, Outcome, Replica, TopicIdentity, side_key

# Nothing listens on port 1 of loopback: every Kafka client fails fast and retries.
NO_KAFKA = "127.0.0.1:1"


def _settings(tmp_path: Path, **kwargs: Any) -> ServeSettings:
    return ServeSettings(
        bootstrap_servers=NO_KAFKA,
        topic="t",
        data_dir=tmp_path / "data",
        listen="127.0.0.1:0",
        shutdown_grace=1.0,
        **kwargs,
    )


# ----- ingester death --------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the point of the test
async def test_an_ingester_that_dies_in_its_error_handling_stops_the_replica_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def session(self: Ingester) -> None:
        raise RuntimeError("a bug in the ingester")

    def next_offsets(self: Replica) -> dict[int, int]:
        raise RuntimeError("and another one in its error handler")

    monkeypatch.setattr(Ingester, "_session", session)
    monkeypatch.setattr(Replica, "next_offsets", next_offsets)
    with caplog.at_level(logging.INFO):
        code = await asyncio.wait_for(server.serve(_settings(tmp_path)), timeout=120)
    assert code != 0
    assert "ingester thread died" in caplog.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_serving_replica_whose_ingester_dies_stops_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def session(self: Ingester) -> None:
        self._on_progress(Snapshot(serving=True, partitions=1, topic_id="id"))  # caught up, serving
        time.sleep(1.0)
        raise RuntimeError("a bug in the ingester")

    def next_offsets(self: Replica) -> dict[int, int]:
        raise RuntimeError("and another one in its error handler")

    monkeypatch.setattr(Ingester, "_session", session)
    monkeypatch.setattr(Replica, "next_offsets", next_offsets)
    died: list[str] = []
    replica = server.running_replica(_settings(tmp_path), on_fatal=died.append)
    async with replica as (_srv, port, progress), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await _wait(lambda: progress.serving, "serving")
        await _wait(lambda: bool(died), "the supervisor to notice the dead ingester")
        assert not progress.serving
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.Kvs2Stub(channel).Get(pb.GetRequest(key=b"k"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# ----- janitor and shutdown ----------------------------------------------------------------------------
class RecordingWriter:
    def __init__(self) -> None:
        self.tombstones: list[bytes] = []
        self.full = False
        self.on_conditional: Callable[[bytes], object] = lambda _request_id: None

    def tombstone(self, side: bytes, partition: int) -> Future[WriteToken]:
        if self.full:
            raise KafkaUnavailable("the producer's queue is full: Kafka is not accepting writes fast enough")
        self.tombstones.append(side)
        return Future()

    def write_conditional(
        self, request_id: bytes, key: bytes, value: bytes | None, expected: int, partition: int
    ) -> Future[WriteToken]:
        fut: Future[WriteToken] = Future()
        fut.set_result(WriteToken(partition, 5))
        self.on_conditional(request_id)
        return fut


class FlakyReplica:
    """Lists one finished conditional record; the first look-up hits an unexpected error."""

    def __init__(self) -> None:
        self.side = side_key(b"r" * REQUEST_ID_BYTES, b"k")
        self.calls = 0

    def garbage(self, limit: int = 1000) -> list[bytes]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("MDB_BAD_TXN: something unexpected")
        return [self.side]

    def urgent_garbage(self) -> list[bytes]:
        return []


async def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_the_janitor_survives_an_unexpected_error() -> None:
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(serving=True, partitions=1))
    writer, replica = RecordingWriter(), FlakyReplica()
    conditional = ConditionalWrites(writer, replica, progress, cleanup_grace=0.04)  # type: ignore[arg-type]
    stop = asyncio.Event()
    janitor = asyncio.create_task(conditional.janitor(stop))
    try:
        await _wait(lambda: replica.side in writer.tombstones or janitor.done(), "a tombstone")
        assert not janitor.done(), janitor.exception()
    finally:
        stop.set()
        await janitor


async def test_shutdown_flushes_and_closes_even_when_the_janitor_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []

    async def broken_janitor(self: ConditionalWrites, stop: asyncio.Event) -> None:
        raise RuntimeError("a janitor bug")

    real_close_writer, real_close_replica = Writer.close, Replica.close

    def close_writer(self: Writer, timeout: float = 10.0) -> int:
        steps.append("producer flushed")
        return real_close_writer(self, timeout=0.1)

    def close_replica(self: Replica) -> None:
        steps.append("lmdb closed")
        real_close_replica(self)

    monkeypatch.setattr(ConditionalWrites, "janitor", broken_janitor)
    monkeypatch.setattr(Writer, "close", close_writer)
    monkeypatch.setattr(Replica, "close", close_replica)
    async with server.running_replica(_settings(tmp_path)):
        await asyncio.sleep(0.1)  # the janitor has failed by now
    assert steps == ["producer flushed", "lmdb closed"]


async def test_a_known_condition_failed_survives_a_full_queue_for_its_tombstone(tmp_path: Path) -> None:
    progress = Progress(asyncio.get_running_loop())
    progress.update(Snapshot(serving=True, partitions=1))
    writer = RecordingWriter()
    writer.full = True
    replica = Replica(tmp_path / "db", map_size=1 << 22)
    replica.reset(TopicIdentity("t", "id", 1))
    conditional = ConditionalWrites(writer, replica, progress)  # type: ignore[arg-type]
    # Every replica (this one too) applies the record and finds the condition false.
    loop = asyncio.get_running_loop()
    writer.on_conditional = lambda rid: loop.call_soon(conditional.resolve, [Outcome(rid, False, 9, 0, 5)])
    try:
        result = await conditional.write(b"k", b"v", 0, timeout=10)
        assert (result.applied, result.revision) == (False, 9)  # CONDITION_FAILED, not UNAVAILABLE
    finally:
        replica.close()


# ----- Kafka settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "acks",
        "request.required.acks",
        "enable.idempotence",
        "partitioner",
        "allow.auto.create.topics",
        "transactional.id",
        "max.in.flight.requests.per.connection",
    ],
)
def test_settings_that_break_guarantees_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        _settings(tmp_path, kafka_config={name: "1"})


def test_an_env_variable_cannot_sneak_in_a_guarantee_breaking_setting(tmp_path: Path) -> None:
    kafka = kafka_config_from_env({"KVS2_KAFKA_ENABLE_IDEMPOTENCE": "false", "KVS2_KAFKA_LINGER_MS": "5"})
    with pytest.raises(ConfigError, match="KVS2_KAFKA_ENABLE_IDEMPOTENCE"):
        _settings(tmp_path, kafka_config=kafka)


def test_serve_refuses_them_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KVS2_KAFKA_CONFIG", raising=False)
    argv = ["serve", "--bootstrap-servers", NO_KAFKA, "--topic", "t", "--data-dir", str(tmp_path)]
    assert cli_main([*argv, "--kafka-config", "acks=1"]) == 2
    assert "acks" in capsys.readouterr().err


def test_harmless_settings_pass(tmp_path: Path) -> None:
    settings = _settings(tmp_path, kafka_config={"linger.ms": "5", "sasl.username": "alice"})
    assert settings.kafka_config["linger.ms"] == "5"


def test_no_client_lets_kafka_auto_create_the_topic() -> None:
    assert client_config("127.0.0.1:9", {})["allow.auto.create.topics"] == "false"


def test_the_harness_kafka_version_variable_is_not_a_kafka_setting() -> None:
    assert kafka_config_from_env({"KVS2_KAFKA_VERSION": "4.4.0"}) == {}
