"""Server CPU per request of a kvs2 replica under a fixed number of gRPC calls (issue 12 item 2):
the standard asyncio loop against uvloop (`--event-loop`), and one process against `--workers 2`.

Why CPU per request and not requests/s: on this shared 2-core machine throughput mostly measures the
other processes; the CPU the server's processes spent per answered call (user + system from /proc,
summed over every worker process, less what they burn idle over the same time) compares fairly.

Run: `.venv/bin/python -m bench.servercpu [--gets 20000] [--multigets 2000]`. Starts its own Kafka
(tests/harness), one replica per configuration pinned like `make bench` (server on CPU 0, or CPUs 0,1
with two workers; ghz on CPU 1), count-bounded ghz runs (-n, so no call is cut off at the end).
Prints a Markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procstat import cpu_seconds
from bench.run import _b64, _pin, _prefill
from bench.tools import BOTH_CPUS, LOAD_CPU, ROOT, SERVER_CPU
from tests.harness.gobuild import ensure_tool
from tests.harness.kafka import KafkaBroker, create_topic
from tests.harness.replica import ReplicaProcess


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (the worker processes of `--workers`)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            out += _tree(int(child))
    return out


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p, tree=False) for p in pids)


def _ghz_count(
    target: str, call: str, data: dict[str, Any], requests: int, concurrency: int
) -> dict[str, Any]:
    out = subprocess.run(
        [
            "taskset", "-c", LOAD_CPU, str(ensure_tool("ghz")), "--insecure",
            "--proto", str(ROOT / "proto" / "kvs2.proto"), "--call", call, "-d", json.dumps(data),
            "-c", str(concurrency), "--connections", "4", "-n", str(requests), "--format", "json", target,
        ],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def measure(
    pid: int, target: str, call: str, data: dict[str, Any], requests: int
) -> tuple[float, float, str]:
    """(server CPU µs per call, calls/s, status counts) of one count-bounded ghz run."""
    pids = _tree(pid)
    idle_from = _cpu(pids)
    time.sleep(2.0)
    idle = (_cpu(pids) - idle_from) / 2.0  # the ingester and librdkafka's threads, per second
    before, started = _cpu(pids), time.monotonic()
    result = _ghz_count(target, call, data, requests, 32)
    elapsed = time.monotonic() - started
    busy = _cpu(pids) - before - idle * elapsed
    codes = result.get("statusCodeDistribution") or {}
    return busy / requests * 1e6, float(result["rps"]), ", ".join(f"{n} {c}" for c, n in codes.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gets", type=int, default=20_000)
    parser.add_argument("--multigets", type=int, default=2_000)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a `dataplane` directory of an older kvs2 (e.g. from `git archive`) to measure first, "
        "on the standard loop (it may not know --event-loop)",
    )
    args = parser.parse_args(argv)
    configs: list[tuple[str, tuple[str, ...], str, dict[str, str]]] = []
    if args.baseline is not None:
        configs.append(("baseline, 1 process", (), SERVER_CPU, {"PYTHONPATH": str(args.baseline)}))
    configs += [
        ("asyncio loop, 1 process", ("--event-loop", "asyncio"), SERVER_CPU, {}),
        ("uvloop, 1 process", ("--event-loop", "uvloop"), SERVER_CPU, {}),
        ("asyncio loop, --workers 2", ("--event-loop", "asyncio", "--workers", "2"), BOTH_CPUS, {}),
        ("uvloop, --workers 2", ("--event-loop", "uvloop", "--workers", "2"), BOTH_CPUS, {}),
    ]
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kvs2-servercpu-") as tmp:
        work = Path(tmp)
        broker = KafkaBroker(work / "kafka").start()
        try:
            create_topic(broker.bootstrap_servers, "bench", 6, config={"cleanup.policy": "compact"})
            _prefill(broker.bootstrap_servers, "bench", 10_000, 10_000, 100)
            get = {"key": _b64(b"key-0000001")}
            multi = {"keys": [_b64(f"key-{i * 97 % 10_000:07d}".encode()) for i in range(100)]}
            for n, (label, extra, cpus, env) in enumerate(configs):
                replica = ReplicaProcess(
                    broker.bootstrap_servers,
                    "bench",
                    work / f"r{n}",
                    work / f"r{n}.log",
                    extra_args=extra,
                    env=env,
                )
                replica.start()
                try:
                    assert replica.process is not None
                    replica.wait_serving(timeout=300)
                    pid = replica.process.pid
                    time.sleep(1.0)  # followers forked and serving
                    for p in _tree(pid):
                        _pin(p, cpus)
                    us, rps, codes = measure(pid, replica.target, "kvs2.Kvs2.Get", get, args.gets)
                    rows.append(f"| Get, {label} (CPU {cpus}) | {us:.0f} µs | {rps:,.0f} calls/s; {codes} |")
                    us, rps, codes = measure(pid, replica.target, "kvs2.Kvs2.MultiGet", multi, args.multigets)
                    rows.append(
                        f"| MultiGet(100), {label} (CPU {cpus}) | {us:.0f} µs ({us / 100:.2f} µs/key) |"
                        f" {rps * 100:,.0f} keys/s; {codes} |"
                    )
                    print(rows[-2], rows[-1], sep="\n", flush=True)
                finally:
                    replica.stop()
        finally:
            broker.stop()
    print("| what | server CPU per call | throughput (busy machine) |\n|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
