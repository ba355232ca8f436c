"""`--workers` metrics of a real replica on real Kafka: `process_*` appear once (the leader's), and a follower
the leader drops for not keeping up stops counting in `kvs2_watch_streams_open` — its streams are gone with
it, and a gauge that kept them would claim clients the replica no longer serves."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.request
from typing import Any

import grpc
from kvs2._proto import kvs2_pb2 as pb
from kvs2._proto import kvs2_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.common import free_port, wait_until
from tests.harness.kafka import KafkaBroker
from tests.integration.dataplane.conftest import StartReplica

STREAMS = 16  # over two processes by SO_REUSEPORT's hash: all on one of them has odds of 2 in 65536


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def _scrape(listen: str) -> dict[str, list[float]]:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(float(s.value))
    return out


def test_a_dropped_followers_watch_streams_stop_counting_and_process_metrics_appear_once(
    kafka: KafkaBroker, topic: str, start_replica: StartReplica
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    a = start_replica(
        kafka.bootstrap_servers, topic, "a", extra_args=("--workers", "2", "--metrics-listen", listen)
    )
    b = start_replica(kafka.bootstrap_servers, topic, "b")
    assert a.process is not None
    (follower,) = _children(a.process.pid)
    scraped = _scrape(listen)
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"):
        assert len(scraped[name]) == 1, (name, scraped[name])  # the leader's alone, not one per worker

    # One connection each: without a local subchannel pool, channels to one target share a connection.
    channels = [
        grpc.insecure_channel(a.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(STREAMS)
    ]
    # Typed as Any: grpc-stubs' CallIterator lacks the grpc.Call and grpc.Future methods it has.
    calls: list[Any] = [
        pb_grpc.Kvs2Stub(ch).Watch(pb.WatchRequest(prefix=b"w/", progress_interval_ms=100)) for ch in channels
    ]
    try:
        for call in calls:
            next(call)  # a first PROGRESS event: the stream is open on one of the processes
        assert _scrape(listen)["kvs2_watch_streams_open"] == [STREAMS]

        os.kill(follower, signal.SIGSTOP)  # it stops reading the leader's news, so the leader drops it
        with b.client() as c:
            for i in range(4000):
                c.set(f"k{i}".encode(), b"v")
                if i % 200 == 0 and "killed it" in a.log_text():
                    break
        wait_until(lambda: "killed it" in a.log_text(), timeout=90, what="the leader to drop the follower")
        wait_until(
            lambda: f"in place of {follower}" in a.log_text(), timeout=60, what="a replacement follower"
        )

        def alive() -> list[Any]:
            return [call for call in calls if not call.done()]

        # The dropped follower's streams end (their connections reset); the leader's go on.
        wait_until(lambda: len(alive()) < STREAMS, timeout=60, what="the dropped follower's streams to end")
        left = len(alive())
        assert left > 0, "every stream was on the follower: the test proves nothing; run it again"
        wait_until(
            lambda: _scrape(listen)["kvs2_watch_streams_open"] == [left],
            timeout=30,
            what=f"kvs2_watch_streams_open to count the {left} streams still open",
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(follower, signal.SIGCONT)
        for call in calls:
            call.cancel()
        for ch in channels:
            ch.close()
