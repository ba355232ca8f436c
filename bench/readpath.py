"""A microbenchmark of the read path's Python costs (issue 12 item 2), no network, one process:

  - `Replica.get` as it is (resize gate + context managers + a fresh read transaction per read),
    against the LMDB floor (one `env.begin`/`get` per read) and the same
    without `with`, to show what the per-read lock and context-manager round trips cost;
  - `Replica.multi_get` per key, 100 and 1000 keys;
  - building a MultiGetReply the servicer's way (`reply.parts.add(...)` per key) against a list of parts.

Run: `.venv/bin/python -m bench.readpath [--keys 100000] [--calls 20000]`. Figures are per-call
microseconds (median of 5 timed rounds). Nothing here is asserted; it only informs what to change.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kvs2._proto import kvs2_pb2 as pb
from kvs2.storage import Record, Replica, TopicIdentity


def _per_call(fn: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """Median µs per call of `fn` over `rounds` rounds of `calls` calls."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


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
        key = b"key-0000001"
        env = replica._env
        data = replica._data
        rows: list[tuple[str, float, str]] = []
        rows.append(("Replica.get (as is)", _per_call(lambda: replica.get(key), args.calls), "µs/call"))

        def floor() -> object:
            with env.begin(db=data, buffers=False) as txn:
                return txn.get(key)

        rows.append(("lmdb begin+get+end (floor)", _per_call(floor, args.calls), "µs/call"))

        def ungated() -> object:  # what `get` costs without the resize gate's lock and context managers
            txn = env.begin(db=data, buffers=False)
            try:
                return txn.get(key)
            finally:
                txn.abort()

        rows.append(("lmdb begin+get+abort, no with", _per_call(ungated, args.calls), "µs/call"))
        for n in (100, 1000):
            keys = [f"key-{i * 97 % args.keys:07d}".encode() for i in range(n)]

            def multi(keys: list[bytes] = keys) -> object:
                return replica.multi_get(keys)

            us = _per_call(multi, max(10, args.calls // n))
            rows.append((f"Replica.multi_get({n})", us / n, f"µs/key → {n / us * 1e6:,.0f} keys/s"))
            entries = replica.multi_get(keys)

            def build_add(keys: list[bytes] = keys, entries: list = entries) -> object:  # type: ignore[type-arg]
                reply = pb.MultiGetReply()
                add = reply.parts.add
                for k, e in zip(keys, entries, strict=True):
                    if e is None:
                        add(key=k, status=pb.NOT_FOUND)
                    else:
                        add(key=k, data=e.value, revision=e.revision)
                return reply.SerializeToString()

            def build_list(keys: list[bytes] = keys, entries: list = entries) -> object:  # type: ignore[type-arg]
                part = pb.MultiGetResponsePart
                parts = [
                    part(key=k, status=pb.NOT_FOUND)
                    if e is None
                    else part(key=k, data=e.value, revision=e.revision)
                    for k, e in zip(keys, entries, strict=True)
                ]
                return pb.MultiGetReply(parts=parts).SerializeToString()

            calls = max(10, args.calls // n)
            rows.append(
                (f"MultiGetReply({n}) parts.add + serialize", _per_call(build_add, calls) / n, "µs/key")
            )
            rows.append(
                (f"MultiGetReply({n}) list of parts + serialize", _per_call(build_list, calls) / n, "µs/key")
            )
        replica.close()
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:8.2f} {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
