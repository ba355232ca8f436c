"""Time to SERVING for a new replica by peer snapshot vs by replay, and the peer's reads meanwhile.

`python -m bench.snapshot --keys 1000000 --keys 10000000` (or `make bench` rows via `bench.run --only
snapshot`). For each store size: pre-fill a topic with that many distinct keys (100-byte values), start
replica A and wait for SERVING; then start B empty by replay and C empty with `--bootstrap-peers A`, one
after the other, and read each one's start → SERVING time from its log. While C fetches its snapshot, a
client reads A in a loop: A's Get rate during the transfer is the "peer's read throughput" figure.
Nothing here asserts: figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from bench.run import RESULTS, ROOT, Figure, _append, _log_time, _prefill
from tests.harness.common import progress
from tests.harness.kafka import KafkaBroker, create_topic
from tests.harness.replica import ReplicaProcess


def _seconds_to_serving(log: str) -> float:
    lines = log.splitlines()
    start = next(line for line in lines if "INFO" in line)
    done = next(line for line in lines if "health: SERVING" in line)
    return (_log_time(done) - _log_time(start)).total_seconds()


def _read_loop(target: str, stop: threading.Event, counts: list[int]) -> None:
    from kvs2.client import Client

    with Client(target, timeout=10) as c:
        while not stop.is_set():
            c.get(b"key-0000001")
            counts[0] += 1


def bench_snapshot(work: Path, sizes: list[int]) -> list[Figure]:
    figures: list[Figure] = []
    broker = KafkaBroker(work / "kafka").start()
    try:
        for keys in sizes:
            topic = f"snap-{keys}"
            create_topic(broker.bootstrap_servers, topic, 6, config={"cleanup.policy": "compact"})
            _prefill(broker.bootstrap_servers, topic, keys, keys, 100)
            a = ReplicaProcess(broker.bootstrap_servers, topic, work / f"a-{keys}", work / f"a-{keys}.log")
            a.start()
            a.wait_serving(timeout=7200)
            b = ReplicaProcess(broker.bootstrap_servers, topic, work / f"b-{keys}", work / f"b-{keys}.log")
            b.start()
            b.wait_serving(timeout=7200)
            replay = _seconds_to_serving(b.log_text())
            b.stop()
            progress(f"{keys:,} keys: replay {replay:.1f}s")

            stop = threading.Event()
            counts = [0]
            reader = threading.Thread(target=_read_loop, args=(a.target, stop, counts))
            reader.start()
            time.sleep(1.0)
            before, t0 = counts[0], time.monotonic()
            time.sleep(2.0)
            idle_rate = (counts[0] - before) / (time.monotonic() - t0)
            c = ReplicaProcess(
                broker.bootstrap_servers,
                topic,
                work / f"c-{keys}",
                work / f"c-{keys}.log",
                extra_args=("--bootstrap-peers", a.target),
            )
            before, t0 = counts[0], time.monotonic()
            c.start()
            c.wait_serving(timeout=7200)
            busy_rate = (counts[0] - before) / (time.monotonic() - t0)
            stop.set()
            reader.join()
            snapshot = _seconds_to_serving(c.log_text())
            from_snapshot = "bootstrapped from a snapshot" in c.log_text()
            c.stop()
            a.stop()
            progress(f"{keys:,} keys: snapshot {snapshot:.1f}s")
            figures += [
                Figure(
                    f"new replica to SERVING, {keys:,} keys",
                    f"snapshot {snapshot:.1f}s vs replay {replay:.1f}s ({replay / snapshot:.1f}x)",
                    f"100-byte values, 6 partitions; snapshot used: {from_snapshot}; times from each log",
                ),
                Figure(
                    f"peer Get rate while it sends a snapshot, {keys:,} keys",
                    f"{busy_rate:,.0f} req/s (idle {idle_rate:,.0f} req/s)",
                    "one sequential client; unthrottled (--snapshot-max-bytes-per-second 0)",
                ),
            ]
    finally:
        broker.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, action="append", help="store sizes (repeatable)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "snapshot")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="e.g. 'smoke run, busy machine'")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    return _append(args.results, bench_snapshot(args.work, args.keys or [1_000_000, 10_000_000]), args.note)


if __name__ == "__main__":
    raise SystemExit(main())
