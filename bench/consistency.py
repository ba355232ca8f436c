"""What each read consistency level costs, and how fast Watch fans out: measured against running
replicas (called by bench/run.py, which owns the Kafka broker and the replicas)."""

from __future__ import annotations

import asyncio
import contextlib
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


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds of samples in seconds."""
    ordered = sorted(samples)
    return (
        ordered[len(ordered) // 2] * 1e3,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
    )


def sequential_set(target: str, n: int = 1000) -> list[float]:
    """Latency of `n` Sets (100-byte values, acks=all) from one client, one call at a time: what a
    single writer waits per write, with no batching help from concurrent calls."""
    value = b"v" * 100
    with Client(target) as c:
        c.set(b"seq-set", value)  # connection and first-call set-up out of the figures
        return _timed(lambda: c.set(b"seq-set", value), n)


def set_to_watch(writer_target: str, watcher_target: str, n: int = 1000) -> list[float]:
    """Write→visible on another replica: from the start of a Set call on replica A until replica B's
    Watch delivers that PUT, one write at a time (the next Set starts after the event arrived)."""

    async def run() -> list[float]:
        arrived: dict[bytes, float] = {}
        waiting: dict[bytes, asyncio.Future[None]] = {}
        ready = asyncio.Event()
        async with AsyncClient(watcher_target) as b, AsyncClient(writer_target) as a:

            async def follow() -> None:
                async for event in b.watch(prefix=b"visible/", progress_interval_ms=100):
                    if event.kind == "progress":
                        ready.set()
                    elif event.kind == "put" and event.value is not None:
                        arrived[event.value] = time.perf_counter()
                        future = waiting.pop(event.value, None)
                        if future is not None and not future.done():
                            future.set_result(None)

            task = asyncio.create_task(follow())
            try:
                await asyncio.wait_for(ready.wait(), 60)
                samples = []
                loop = asyncio.get_running_loop()
                for i in range(n + 10):
                    value = f"{i}".encode()
                    future = waiting[value] = loop.create_future()
                    started = time.perf_counter()
                    await a.set(b"visible/k", value)
                    await asyncio.wait_for(future, 30)
                    if i >= 10:  # the first few warm up both connections
                        samples.append(arrived[value] - started)
                return samples
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return asyncio.run(run())
