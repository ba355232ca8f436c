"""Time to SERVING for a new replica by peer snapshot vs by replay, and the peer's reads meanwhile.

`python -m bench.snapshot --keys 1000000 --keys 10000000` (or `make bench` rows via `bench.run --only
snapshot`). For each store size: pre-fill a topic with that many distinct keys (100-byte values), start
replica A and wait for SERVING; then start B empty by replay and C empty with `--bootstrap-peers A`, one
after the other, and read each one's start → SERVING time from its log. While C fetches its snapshot, a
client reads A in a loop: A's Get rate during the transfer is the "peer's read throughput" figure.
Then, with every replica stopped (no writes ran, and each was SERVING: caught up with the same end
offsets), a digest of each data directory — XXH3-128 over every (key, revision ‖ value) of the `data`
database in key order, plus the stored next offsets and topic identity — shows whether the replica built
from the snapshot, the one built by replay and the peer hold exactly the same store.
Nothing here asserts: figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path

import lmdb
import xxhash

from bench.run import RESULTS, ROOT, Figure, _append, _log_time, _prefill
from tests.harness.common import progress
from tests.harness.kafka import KafkaBroker, create_topic
from tests.harness.replica import ReplicaProcess


def _seconds_to_serving(log: str) -> float:
    lines = log.splitlines()
    start = next(line for line in lines if "INFO" in line)
    done = next(line for line in lines if "health: SERVING" in line)
    return (_log_time(done) - _log_time(start)).total_seconds()


def _log_span(log: str, first: str, last: str) -> float:
    lines = log.splitlines()
    start = next(line for line in lines if first in line)
    done = next(line for line in lines if last in line)
    return (_log_time(done) - _log_time(start)).total_seconds()


def _transfer(log: str) -> tuple[str, str]:
    """Which channel the snapshot's data took, and its rate, from the receiver's log."""
    for line in log.splitlines():
        if "snapshot bytes over the data channel" in line:
            _, _, tail = line.partition(" in ")
            return "the data channel", tail.strip()  # "2.1s (970 MB/s)"
    return "gRPC chunks", ""


def store_digest(data_dir: Path) -> str:
    """XXH3-128 of a stopped replica's store: data (key order), next offsets, topic identity."""
    env = lmdb.open(str(data_dir), readonly=True, lock=False, max_dbs=10, subdir=True)
    try:
        digest = xxhash.xxh3_128()
        with env.begin() as txn:
            for name in (b"data", b"offsets", b"meta"):
                db = env.open_db(name, txn=txn, create=False)
                for key, value in txn.cursor(db=db):
                    if name == b"meta" and key in (b"caught_up_at", b"skipped"):
                        continue  # when each replica was last caught up differs, rightly
                    digest.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
        return digest.hexdigest()
    finally:
        env.close()


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
            # Logs are kept after a run for reading; a new run starts them afresh, or the timings read
            # from them would be the first run's (ReplicaProcess appends).
            for name in ("a", "b", "c"):
                (work / f"{name}-{keys}.log").unlink(missing_ok=True)
            create_topic(broker.bootstrap_servers, topic, 6, config={"cleanup.policy": "compact"})
            _prefill(broker.bootstrap_servers, topic, keys, keys, 100)
            a = ReplicaProcess(broker.bootstrap_servers, topic, work / f"a-{keys}", work / f"a-{keys}.log")
            a.start()
            a.wait_serving(timeout=7200)
            b = ReplicaProcess(broker.bootstrap_servers, topic, work / f"b-{keys}", work / f"b-{keys}.log")
            t0 = time.monotonic()
            b.start()
            b.wait_serving(timeout=7200)
            replay_wall = time.monotonic() - t0
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
            snapshot_wall = time.monotonic() - t0
            busy_rate = (counts[0] - before) / snapshot_wall
            stop.set()
            reader.join()
            clog, alog = c.log_text(), a.log_text()
            snapshot = _seconds_to_serving(clog)
            from_snapshot = "bootstrapped from a snapshot" in clog
            fetch = _log_span(clog, "replica must be built", "bootstrapped from a snapshot")
            catch_up = _log_span(clog, "bootstrapped from a snapshot", "health: SERVING")
            sent = next(line for line in alog.splitlines() if "snapshot sent" in line)
            channel, rate = _transfer(clog)
            c.stop()
            a.stop()
            digests = {name: store_digest(work / f"{name}-{keys}") for name in ("a", "b", "c")}
            same = "peer = snapshot = replay" if len(set(digests.values())) == 1 else f"DIFFER: {digests}"
            size = (work / f"c-{keys}" / "data.mdb").stat().st_size
            progress(f"{keys:,} keys: snapshot {snapshot:.1f}s; stores {same}")
            figures += [
                Figure(
                    f"new replica to SERVING, {keys:,} keys",
                    f"snapshot {snapshot:.1f}s vs replay {replay:.1f}s ({replay / snapshot:.1f}x)",
                    f"100-byte values, 6 partitions; snapshot used: {from_snapshot}; times from each log "
                    f"(process start to SERVING as the bench saw it: {snapshot_wall:.1f}s vs "
                    f"{replay_wall:.1f}s)",
                ),
                Figure(
                    f"snapshot breakdown, {keys:,} keys",
                    f"fetch+verify+install {fetch:.1f}s, open+catch-up {catch_up:.1f}s; {size / 1e6:,.0f} MB",
                    f"peer: {sent[sent.index('snapshot sent') :]}",
                ),
                Figure(
                    f"snapshot transfer, {keys:,} keys",
                    f"over {channel}" + (f", {rate}" if rate else ""),
                    "the receiver's log (kvs2.bootstrap: the data channel beside the Snapshot RPC, else "
                    "gRPC chunks); rate from the receiver's first to last data byte, XXH3 and disk writes "
                    "included",
                ),
                Figure(
                    f"new replica equals its peer, {keys:,} keys",
                    same,
                    "XXH3-128 of each stopped replica's data, offsets and topic identity (bench.snapshot."
                    f"store_digest): {digests['c'][:12]}…",
                ),
                Figure(
                    f"peer Get rate while it sends a snapshot, {keys:,} keys",
                    f"{busy_rate:,.0f} req/s (idle {idle_rate:,.0f} req/s)",
                    "one sequential client; unthrottled (--snapshot-max-bytes-per-second 0)",
                ),
            ]
            for name in ("a", "b", "c"):  # 10 M keys take GBs: keep only the logs
                shutil.rmtree(work / f"{name}-{keys}", ignore_errors=True)
    finally:
        broker.stop()
        shutil.rmtree(work / "kafka", ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, action="append", help="store sizes (repeatable)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "snapshot")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="e.g. 'smoke run, busy machine'")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    figures = bench_snapshot(args.work, args.keys or [1_000_000, 10_000_000])
    settings = (
        "replicas (`kvs2 serve`, defaults: unthrottled snapshots, Watch history of 100,000 offsets per\n"
        "  partition) and Kafka unpinned on the same machine; the reader is one sequential Get client in\n"
        "  the bench process."
    )
    return _append(args.results, figures, args.note, settings)


if __name__ == "__main__":
    raise SystemExit(main())
