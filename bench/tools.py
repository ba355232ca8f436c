"""The load generators bench/run.py drives, each pinned to the load core: ghz (gRPC, closed loop with
`-c`, open loop with `--async --rps`), redis-benchmark (RESP, closed loop) and bench/loadgen.py (RESP,
open loop). Each returns the same small `Load` record."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.gobuild import ensure_tool

ROOT = Path(__file__).resolve().parents[1]
SERVER_CPU = "0"
LOAD_CPU = "1"
BOTH_CPUS = "0,1"  # the server may use both cores (the load generator still runs on CPU 1)
KVS2_PROTO = ROOT / "proto" / "kvs2.proto"


@dataclass
class Load:
    """One load run: answers/s, latency percentiles (ms), how many requests, and the answers' codes."""

    rps: float
    p50: float
    p99: float
    ok: str
    count: int

    def latency(self) -> str:
        return f"p50 {self.p50:.2f} ms, p99 {self.p99:.2f} ms"


def ghz(
    target: str,
    call: str,
    data: Mapping[str, object],
    concurrency: int,
    duration: str,
    proto: Path = KVS2_PROTO,
    rps: float = 0,
) -> Load:
    """ghz on LOAD_CPU. With `rps`, open loop: `--async --rps` sends on schedule without waiting for
    answers (closed loop otherwise: `concurrency` workers, each waiting for its answer)."""
    payload = json.dumps(data)
    data_file: Path | None = None
    data_args = ["-d", payload]
    if len(payload) > 64_000:  # a 1000-item Write is longer than an argument may be: pass it as a file
        data_file = Path(tempfile.mkstemp(prefix="ghz-data-", suffix=".json")[1])
        data_file.write_text(payload)
        data_args = ["-D", str(data_file)]
    rate = ["--async", "--rps", str(max(1, math.ceil(rps)))] if rps else []
    argv = [
        "taskset",
        "-c",
        LOAD_CPU,
        str(ensure_tool("ghz")),
        "--insecure",
        "--proto",
        str(proto),
        "--call",
        call,
        *data_args,
        "-c",
        str(concurrency),
        "--connections",
        "4",
        "-z",
        duration,
        *rate,
        "--format",
        "json",
        target,
    ]
    try:
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=900)
    finally:
        if data_file is not None:
            data_file.unlink(missing_ok=True)
    result: dict[str, Any] = json.loads(out.stdout)
    latencies = {e["percentage"]: float(e["latency"]) / 1e6 for e in result.get("latencyDistribution") or []}
    codes: dict[str, int] = result.get("statusCodeDistribution") or {}
    return Load(
        rps=float(result["rps"]),
        p50=latencies.get(50, float("nan")),
        p99=latencies.get(99, float("nan")),
        ok=", ".join(
            f"{n} {code}"
            # ghz ends a timed run by closing its connections: at most `concurrency` calls in flight then
            # fail as Canceled/Unavailable (a count-bounded run of the same load shows none).
            + (
                " (in flight when the timed run ended)"
                if code != "OK" and n <= concurrency and not rps
                else ""
            )
            for code, n in sorted(codes.items(), key=lambda item: -item[1])
        ),
        count=int(result.get("count") or 0),
    )


def redis_benchmark(port: int, clients: int, requests: int, command: list[str]) -> Load:
    """One redis-benchmark run of a command on LOAD_CPU, closed loop, no pipelining."""
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            str(clients),
            "-n",
            str(requests),
            "--csv",
            *command,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    # CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",…
    row = next(csv.reader([out.stdout.strip().splitlines()[-1]]))
    return Load(float(row[1]), float(row[4]), float(row[6]), f"{requests} requests", requests)


def redis_open_loop(port: int, rate: float, seconds: float) -> dict[str, Any]:
    """bench/loadgen.py (open loop, GET of one key) on LOAD_CPU; its JSON result."""
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            sys.executable,
            "-m",
            "bench.loadgen",
            "--port",
            str(port),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=seconds + 120,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result
