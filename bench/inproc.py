"""Reads from an embedded replica (`kvs2.embedded`), in the application's own process, no network.

`python -m bench.inproc --bootstrap-servers B --topic T --data-dir D --keys N` replays the topic into a
fresh embedded replica, then times (one key per call, each call timed on its own):
  - `get_local` (synchronous, eventual: the fastest read an application can make),
  - `await get` (the async read API, through the core's consistency checks),
  - `await multi_get` of 100 and 1000 keys (keys/s),
and prints one JSON object (bench/run.py runs it pinned to the server core and reads that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from kvs2.embedded import EmbeddedReplica

from bench.procstat import memory


def _pcts(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def run(bootstrap: str, topic: str, data_dir: Path, keys: int, seconds: float) -> dict[str, float]:
    rng = random.Random(7)
    sample = [f"key-{rng.randrange(keys):07d}".encode() for _ in range(10_000)]
    started = time.perf_counter()
    async with EmbeddedReplica(bootstrap, topic, data_dir) as kv:
        await kv.wait_serving(timeout=1800)
        replay = time.perf_counter() - started
        await asyncio.sleep(2.0)
        mem = memory(os.getpid())
        out: dict[str, float] = {"replay_seconds": replay, "rss": mem.rss, "anon": mem.anon}
        perf = time.perf_counter
        samples = []
        for _ in range(10):
            for key in sample:
                t0 = perf()
                kv.get_local(key)
                samples.append(perf() - t0)
        out["get_local_p50_us"], out["get_local_p99_us"] = (x * 1e6 for x in _pcts(samples))
        samples = []
        for _ in range(2):
            for key in sample:
                t0 = perf()
                await kv.get(key)
                samples.append(perf() - t0)
        out["get_p50_us"], out["get_p99_us"] = (x * 1e6 for x in _pcts(samples))
        for batch in (100, 1000):
            batches = [sample[i : i + batch] for i in range(0, len(sample), batch)]
            done, t0 = 0, perf()
            while perf() - t0 < seconds:
                for keys_ in batches:
                    await kv.multi_get(keys_)
                    done += len(keys_)
            out[f"multi_get_{batch}_keys_per_s"] = done / (perf() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--keys", type=int, required=True, help="keys are key-0000000 … key-<N-1>")
    parser.add_argument("--seconds", type=float, default=3.0, help="per MultiGet batch size")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kvs2-inproc-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        result = asyncio.run(run(args.bootstrap_servers, args.topic, data_dir, args.keys, args.seconds))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
