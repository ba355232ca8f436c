"""What each read consistency level costs, and how fast Watch fans out: measured against running
replicas (called by bench/run.py, which owns the Kafka broker and the replicas)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from confluent_kafka import Producer
from kvs2.client import AsyncClient, Client


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2] * 1e3
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"


def _timed(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def read_levels(writer_target: str, reader_target: str, n: int = 2000) -> list[tuple[str, str, str]]:
    """Sequential Get latency on `reader_target` per level, while another thread writes through
    `writer_target` (so linearizable and token reads really wait for replication)."""
    rows: list[tuple[str, str, str]] = []
    stop = threading.Event()

    def background_writes() -> None:
        with Client(writer_target) as w:
            i = 0
            while not stop.is_set():
                w.set(b"bench-bg", str(i).encode())
                i += 1

    thread = threading.Thread(target=background_writes)
    thread.start()
    try:
        with Client(reader_target) as r, Client(writer_target) as w:
            key = b"key-0000001"
            rows.append(("Get eventual", _percentiles(_timed(lambda: r.get(key), n)), "local LMDB read"))
            rows.append(
                (
                    "Get linearizable",
                    _percentiles(_timed(lambda: r.get(key, consistency="linearizable"), n)),
                    "ListOffsets round trip + wait until applied, under concurrent writes",
                )
            )
            rows.append(
                (
                    "Get with max_lag=1000",
                    _percentiles(_timed(lambda: r.get(key, max_lag=1000), n)),
                    "lag from the consumer's cached watermarks: no Kafka round trip",
                )
            )
            samples = []
            for i in range(n // 4):
                written = w.set(b"ryw", str(i).encode())
                started = time.perf_counter()
                r.get(b"ryw", after=[written])
                samples.append(time.perf_counter() - started)
            rows.append(
                (
                    "Get after a token (read-your-writes, other replica)",
                    _percentiles(samples),
                    "Set on replica A, then Get on replica B with its token: includes waiting for B to apply",
                )
            )
            samples = []
            revision = 0
            for i in range(n // 4):
                started = time.perf_counter()
                revision = w.set_if(b"cas-bench", str(i).encode(), revision).revision
                samples.append(time.perf_counter() - started)
            rows.append(("Set with if_revision (CAS)", _percentiles(samples), "produce + wait for own apply"))
    finally:
        stop.set()
        thread.join()
    return rows


def watch_fanout(bootstrap: str, topic: str, target: str, watchers: int = 50, records: int = 20_000) -> str:
    """Events/s delivered to `watchers` concurrent Watch streams on one replica for `records` writes."""

    async def run() -> float:
        clients = [AsyncClient(target) for _ in range(watchers)]
        received = [0] * watchers
        ready = 0
        all_ready = asyncio.Event()

        async def follow(i: int) -> None:
            nonlocal ready
            async for event in clients[i].watch(prefix=b"fan/", progress_interval_ms=200):
                if event.kind == "progress" and received[i] == 0 and not all_ready.is_set():
                    ready += 1
                    if ready == watchers:
                        all_ready.set()
                elif event.kind == "put":
                    received[i] += 1
                    if received[i] == records:
                        return

        tasks = [asyncio.create_task(follow(i)) for i in range(watchers)]
        await asyncio.wait_for(all_ready.wait(), 60)
        started = time.perf_counter()
        await asyncio.to_thread(_produce, bootstrap, topic, records)
        await asyncio.wait_for(asyncio.gather(*tasks), 600)
        elapsed = time.perf_counter() - started
        for c in clients:
            await c.close()
        return elapsed

    elapsed = asyncio.run(run())
    rate = watchers * records / elapsed
    return f"{rate:,.0f} events/s ({watchers} watchers x {records:,} writes in {elapsed:.1f}s)"


def _produce(bootstrap: str, topic: str, records: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "partitioner": "murmur2_random"})
    for i in range(records):
        while True:
            try:
                producer.produce(topic, key=f"fan/{i % 1000}".encode(), value=b"v" * 100)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
