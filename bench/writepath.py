"""The write and replay side of issue 12, measured against one Kafka broker and real replicas.

  replay    a fresh replica replays a pre-filled topic (1 M distinct keys by default, 100-byte values):
            records/s from its log (first fetch → caught up), then its RSS (and anonymous part) from /proc
  write     `Write` with 1000 puts of 100-byte values per call (ghz), acknowledged records/s and the
            server's CPU per record from /proc
  set       single `Set` latency, one sequential client: p50 / p99
  visible   `Set` call start on replica A → the PUT event on replica B's Watch, one sequential client

The replica under test is pinned to CPU 0 and the load generators to CPU 1; Kafka runs unpinned on
the same machine. Usage: `python -m bench.writepath [--only replay,write,set,visible] [--keys N]`.
Prints one line per figure; nothing here asserts anything (timing belongs in bench/, never in tests).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kvs2.client import AsyncClient, Client

from bench.procstat import cpu_seconds
from bench.run import _b64, _pin, _prefill, _replay_seconds
from bench.tools import LOAD_CPU, SERVER_CPU
from bench.tools import ghz as _ghz
from tests.harness.common import progress
from tests.harness.kafka import KafkaBroker, create_topic
from tests.harness.replica import ReplicaProcess


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2] * 1e3
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
    mean = statistics.mean(ordered) * 1e3
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (n={len(ordered)}, mean {mean:.2f} ms)"


def _memory(pid: int) -> str:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[name] = int(rest.split()[0]) // 1024
    return (
        f"RSS {fields['VmRSS']} MB (anonymous {fields['RssAnon']} MB, file {fields['RssFile']} MB; "
        f"peak {fields['VmHWM']} MB)"
    )


def replay(broker: KafkaBroker, work: Path, records: int, keys: int) -> None:
    topic = "replay"
    create_topic(broker.bootstrap_servers, topic, 6, config={"cleanup.policy": "compact"})
    rate = _prefill(broker.bootstrap_servers, topic, records, keys, 100)
    progress(f"prefill done at {rate:,.0f} records/s")
    replica = ReplicaProcess(broker.bootstrap_servers, topic, work / "replay", work / "replay.log")
    replica.start()
    try:
        assert replica.process is not None
        _pin(replica.process.pid, SERVER_CPU)
        replica.wait_serving(timeout=900)
        seconds = _replay_seconds(replica.log_text())
        assert seconds is not None, "the replica's log has no catch-up times"
        rate = records / seconds
        cpu = cpu_seconds(replica.process.pid)
        print(
            f"replay: {rate:,.0f} records/s ({records:,} records, {keys:,} keys, {seconds:.1f}s; "
            f"replica CPU {cpu:.1f}s from its start, {cpu / records * 1e6:.1f} µs/record)"
        )
        time.sleep(3)
        print(f"replay: after catch-up {_memory(replica.process.pid)}")
    finally:
        replica.stop()


def _write_request(items: int, value_size: int) -> dict[str, object]:
    value = _b64(b"v" * value_size)
    return {"items": [{"key": _b64(f"batch-{i:06d}".encode()), "value": value} for i in range(items)]}


def write(target: str, pid: int, seconds: int, concurrency: int = 4, items: int = 1000) -> None:
    before, started = cpu_seconds(pid), time.monotonic()
    load = _ghz(target, "kvs2.Kvs2.Write", _write_request(items, 100), concurrency, f"{seconds}s")
    elapsed = time.monotonic() - started
    records = load.rps * items
    per_record = (cpu_seconds(pid) - before) / max(1.0, records * elapsed)
    print(
        f"write: {records:,.0f} records/s ({load.rps:,.1f} calls/s); "
        f"server CPU {per_record * 1e6:.1f} µs/record; {load.latency()} per call; "
        f"ghz -c {concurrency}; {load.ok}"
    )


def set_latency(target: str, n: int) -> None:
    samples = []
    with Client(target) as c:
        for i in range(n):
            started = time.perf_counter()
            c.set(b"lat", str(i).encode())
            samples.append(time.perf_counter() - started)
    print(f"set: {_percentiles(samples)}")


def visible(writer: str, reader: str, n: int) -> None:
    async def run() -> list[float]:
        seen: dict[bytes, float] = {}
        arrived = asyncio.Event()
        async with AsyncClient(writer) as a, AsyncClient(reader) as b:
            await a.set(b"vis/warm", b"x")

            async def follow() -> None:
                async for event in b.watch(prefix=b"vis/", progress_interval_ms=60_000):
                    if event.kind == "put":
                        seen[event.key] = time.perf_counter()
                        arrived.set()

            watcher = asyncio.ensure_future(follow())
            await asyncio.sleep(1.0)
            samples = []
            for i in range(n):
                key = f"vis/{i}".encode()
                started = time.perf_counter()
                await a.set(key, b"v" * 100)
                while key not in seen:
                    arrived.clear()
                    await asyncio.wait_for(arrived.wait(), 10)
                samples.append(seen[key] - started)
            watcher.cancel()
            return samples

    print(f"visible (Set start on A → PUT on B's Watch): {_percentiles(asyncio.run(run()))}")


def _writes(broker: KafkaBroker, work: Path, extra: tuple[str, ...], only: set[str], args: Any) -> None:
    topic = f"writes-{work.name}"
    create_topic(broker.bootstrap_servers, topic, 6, config={"cleanup.policy": "compact"})
    a = ReplicaProcess(broker.bootstrap_servers, topic, work / "a", work / "a.log", extra_args=extra)
    b = ReplicaProcess(broker.bootstrap_servers, topic, work / "b", work / "b.log", extra_args=extra)
    a.start()
    b.start()
    try:
        assert a.process is not None and b.process is not None
        _pin(a.process.pid, SERVER_CPU)
        _pin(b.process.pid, SERVER_CPU)
        a.wait_serving(timeout=120)
        b.wait_serving(timeout=120)
        if "set" in only:
            set_latency(a.target, args.samples)
        if "visible" in only:
            visible(a.target, b.target, args.samples // 2)
        if "write" in only:
            b.stop()  # the replica under test applies its own writes; nobody else on CPU 0
            write(a.target, a.process.pid, args.seconds)
    finally:
        a.stop()
        b.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="replay,write,set,visible")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument(
        "--extra",
        default="",
        help="extra `kvs2 serve` arguments, space-separated; sets separated by ';' are measured in turn",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    work = Path(tempfile.mkdtemp(prefix="kvs2-writepath-"))
    broker = KafkaBroker(work / "kafka").start()
    try:
        if "replay" in only:
            replay(broker, work, args.records, args.keys)
        for n, extra in enumerate(args.extra.split(";")):
            if not only & {"write", "set", "visible"}:
                break
            print(f"--- replicas with extra arguments: {extra!r}")
            _writes(broker, work / f"w{n}", tuple(extra.split()), only, args)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)  # a 1 M-record topic and its replicas: ~0.5 GB


if __name__ == "__main__":
    main()
