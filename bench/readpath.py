"""A microbenchmark of the read path's Python costs (issue 12 item 2), no network, one process:

  - `Replica.get` against the LMDB floor (one `env.begin`/`get` per read), to show what the resize gate
    and the transaction handling add;
  - `Replica.multi_get` per key, 100 and 1000 keys;
  - building a MultiGetReply the servicer's way (`reply.parts.add(...)` per key) against a list of parts;
  - the layers above storage, in process: `Store.get`/`multi_get` (eventual), the servicer's `Get`/
    `MultiGet` handlers with a stand-in context (what a gRPC call costs above grpc itself), and the
    embedded replica (`kvs2.embedded`): `get_local`, `await get`, `await multi_get` — the issue's
    targets are Get p50 ≤ 5 µs and MultiGet ≥ 2M keys/s for it;
  - Kafka's murmur2 (linearizable and read-your-writes reads map every key to its partition).

Run: `.venv/bin/python -m bench.readpath [--keys 100000] [--calls 20000]` (pin it: `taskset -c 0`).
Figures are microseconds of this thread's CPU time per call (`time.thread_time`, the best of 5 rounds:
on a shared machine wall time mostly measures the other processes); the embedded Get also as p50/p99
of single calls in wall time. Nothing here is asserted; it only informs what to change.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kvs2._proto import kvs2_pb2 as pb
from kvs2.config import Limits
from kvs2.core import Store
from kvs2.embedded import EmbeddedReplica
from kvs2.partitioner import murmur2, partition_for
from kvs2.progress import Progress, Snapshot
from kvs2.server import Kvs2Servicer
from kvs2.storage import Record, Replica, TopicIdentity

Row = tuple[str, float, str]


def _per_call(fn: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """CPU µs per call of `fn`: the best of `rounds` rounds of `calls` calls."""
    times = []
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(calls):
            fn()
        times.append((time.thread_time() - start) / calls * 1e6)
    return min(times)


async def _per_await(fn: Callable[[], Awaitable[object]], calls: int, rounds: int = 5) -> float:
    """As `_per_call`, for a coroutine function awaited back to back on the running loop."""
    times = []
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(calls):
            await fn()
        times.append((time.thread_time() - start) / calls * 1e6)
    return min(times)


def _percentiles(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """p50 and p99 in µs of single timed calls (the timer's own cost, ~0.1 µs, included)."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        start = clock()
        fn()
        samples.append(clock() - start)
    samples.sort()
    return samples[len(samples) // 2] / 1e3, samples[len(samples) * 99 // 100] / 1e3


class _Context:
    """What the servicer's read handlers ask of a grpc.aio context: no deadline."""

    def time_remaining(self) -> float | None:
        return None


def storage_rows(replica: Replica, n_keys: int, calls: int) -> list[Row]:
    key = b"key-0000001"
    env = replica._env
    data = replica._data
    rows: list[Row] = [("Replica.get", _per_call(lambda: replica.get(key, "id"), calls), "µs/call")]

    def floor() -> object:
        with env.begin(db=data, buffers=False) as txn:
            return txn.get(key)

    rows.append(("lmdb begin+get+end (floor)", _per_call(floor, calls), "µs/call"))
    for n in (100, 1000):
        keys = [f"key-{i * 97 % n_keys:07d}".encode() for i in range(n)]

        def multi(keys: list[bytes] = keys) -> object:
            return replica.multi_get(keys, "id")

        us = _per_call(multi, max(10, calls // n))
        rows.append((f"Replica.multi_get({n})", us / n, f"µs/key → {n / us * 1e6:,.0f} keys/s"))
        entries = replica.multi_get(keys)

        def build_add(keys: list[bytes] = keys, entries: list[Any] = entries) -> object:
            reply = pb.MultiGetReply()
            add = reply.parts.add
            for k, e in zip(keys, entries, strict=True):
                if e is None:
                    add(key=k, status=pb.NOT_FOUND)
                else:
                    add(key=k, data=e.value, revision=e.revision)
            return reply.SerializeToString()

        rows.append(
            (
                f"MultiGetReply({n}) parts.add + serialize",
                _per_call(build_add, max(10, calls // n)) / n,
                "µs/key",
            )
        )
    rows.append(("murmur2 of an 11-byte key", _per_call(lambda: murmur2(key), calls), "µs/call"))
    rows.append(("partition_for (cached)", _per_call(lambda: partition_for(key, 6), calls), "µs/call"))
    return rows


async def layer_rows(replica: Replica, n_keys: int, calls: int) -> list[Row]:
    loop = asyncio.get_running_loop()
    progress = Progress(loop)
    progress.update(Snapshot(serving=True, partitions=1, topic_id="id", applied={0: n_keys}))
    writer: Any = SimpleNamespace()  # reads never write
    store = Store(replica, writer, progress, Limits(max_multiget_keys=10_000))
    servicer = Kvs2Servicer(store, default_timeout=5.0)
    context: Any = _Context()
    key = b"key-0000001"
    rows: list[Row] = []
    rows.append(("Store.get (eventual)", await _per_await(lambda: store.get(key), calls), "µs/call"))
    request = pb.GetRequest(key=key)
    rows.append(
        ("servicer Get handler", await _per_await(lambda: servicer.Get(request, context), calls), "µs/call")
    )
    for n in (100, 1000):
        keys = [f"key-{i * 97 % n_keys:07d}".encode() for i in range(n)]
        multi = pb.MultiGetRequest(keys=keys)

        async def handler(multi: pb.MultiGetRequest = multi) -> object:
            return (await servicer.MultiGet(multi, context)).SerializeToString()

        us = await _per_await(handler, max(10, calls // n))
        rows.append((f"servicer MultiGet({n}) + serialize", us / n, f"µs/key → {n / us * 1e6:,.0f} keys/s"))

    embedded = EmbeddedReplica("unused:9092", "bench", replica.path, read_your_writes=False)
    embedded._parts = SimpleNamespace(store=store, replica=replica, progress=progress)  # type: ignore[assignment]
    p50, p99 = _percentiles(lambda: embedded.get_local(key), calls)
    rows.append(("embedded get_local", _per_call(lambda: embedded.get_local(key), calls), "µs/call"))
    rows.append(("embedded get_local p50 / p99", p50, f"µs / {p99:.2f} µs (single timed calls)"))
    rows.append(("embedded await get", await _per_await(lambda: embedded.get(key), calls), "µs/call"))
    for n in (100, 1000):
        keys = [f"key-{i * 97 % n_keys:07d}".encode() for i in range(n)]

        async def many(keys: list[bytes] = keys) -> object:
            return await embedded.multi_get(keys)

        us = await _per_await(many, max(10, calls // n))
        rows.append((f"embedded await multi_get({n})", us / n, f"µs/key → {n / us * 1e6:,.0f} keys/s"))
        local = getattr(embedded, "multi_get_local", None)
        if local is not None:

            def now(local: Any = local, keys: list[bytes] = keys) -> object:
                return local(keys)

            us = _per_call(now, max(10, calls // n))
            rows.append((f"embedded multi_get_local({n})", us / n, f"µs/key → {n / us * 1e6:,.0f} keys/s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        replica = Replica(Path(tmp) / "db", map_size=1 << 30, sync=False)
        replica.reset(TopicIdentity("bench", "id", 1))
        batch = [Record(f"key-{i:07d}".encode(), b"v" * 100, 0, i) for i in range(args.keys)]
        for i in range(0, len(batch), 10_000):
            replica.apply(batch[i : i + 10_000], {0: min(i + 10_000, args.keys)})
        rows = storage_rows(replica, args.keys, args.calls)
        rows += asyncio.run(layer_rows(replica, args.keys, args.calls))
        replica.close()
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:8.2f} {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
