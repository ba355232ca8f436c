"""`make bench`: measure kvs2 and its peers in one run and append the figures to bench/RESULTS.md.

Every row says its throughput and the **server's CPU time per request** (from /proc of the server
processes during the run, less their idle share), so per-core costs compare fairly whatever each load
generator costs. The server under test is pinned to CPU 0 and every load generator to CPU 1 (2-core
machine); Kafka is unpinned. Parts, in the order they run (`--only a,b` runs a subset, e.g. for smoke runs):

  replay    a fresh replica replays --records distinct keys (100-byte values); records/s, and its RSS
            (total and anonymous) after catch-up
  floor     a bare grpc.aio server whose Get returns a fixed reply (bench/floor.py): the floor of a call
  get       Get of one key, ghz -c 32; then open loop (ghz --async --rps) at 25/50/75/100 % of that peak
  multiget  MultiGet of 100 and of 1000 keys → keys/s
  resp      the Redis front door (--redis-listen on the same replica): redis-benchmark GET and MGET(100),
            then open-loop GET (bench/loadgen.py: redis-benchmark has no rate limit); `--only resp` also
            runs `redis`, its peer
  latency   one sequential client: Set p50/p99; Set on A → PUT on B's Watch p50/p99; Get per consistency level
  set       Set, ghz -c 64
  write     Write of 1000-item batches → records/s; peer: etcd Txn of 128 Puts (its default limit)
  watch     Watch fan-out, 50 watchers
  workers   Get with `--workers 2` (server on both cores) vs the single process above, CPU-µs per Get
  embedded  an embedded replica (kvs2.embedded) in its own pinned process: Get p50, MultiGet keys/s
  etcd      etcd serializable Range on CPU 0 (+ open loop) and on both cores
  redis     redis-server: the same redis-benchmark GET and MGET(100), and open-loop GET
Then the PNG plot of latency against offered load (bench/latency-<stamp>.png), and a table of the issues'
targets (#12, #14) with the measured value and met or not. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from confluent_kafka import Producer, libversion

from bench import procstat
from bench.consistency import percentiles_ms, read_levels, sequential_set, set_to_watch, watch_fanout
from bench.plot import Point, plot
from bench.servers import redis_version, start_etcd, start_floor, start_redis_server
from bench.targets import Metrics, table
from bench.tools import BOTH_CPUS, LOAD_CPU, SERVER_CPU, Load, ghz, redis_benchmark, redis_open_loop
from bench.tools import ROOT as ROOT  # re-exported: bench/snapshot.py imports it from here
from tests.harness.common import children_die_with_parent, free_port, progress
from tests.harness.debian import ensure_apt
from tests.harness.gobuild import ETCD_VERSION, TOOLS
from tests.harness.kafka import KAFKA_VERSION, KafkaBroker, create_topic
from tests.harness.replica import ReplicaProcess

RESULTS = ROOT / "bench" / "RESULTS.md"
ETCD_PROTO = ROOT / "bench" / "peers" / "etcd_range.proto"
ETCD_TXN_PROTO = ROOT / "bench" / "peers" / "etcd_txn.proto"
WRITE_BATCH = 1000
ETCD_TXN_OPS = 128  # etcd's default --max-txn-ops
# ghz ends each timed level by closing its connections: calls still in flight then count as Unavailable.
GHZ_OPEN = "ghz --async --rps, -c 32, 4 conns (calls in flight when a level ends count as Unavailable)"
LEVELS = (0.25, 0.50, 0.75, 1.00)  # open-loop offered load, as shares of the measured peak
PARTS = (
    "replay",
    "floor",
    "get",
    "multiget",
    "resp",
    "latency",
    "set",
    "write",
    "watch",
    "workers",
    "embedded",
    "etcd",
    "redis",
)
ALIASES = {"resp": ("resp", "redis")}  # `--only resp`: the front door and its peer, as before


@dataclass
class Figure:
    name: str
    value: str
    detail: str


def _pin(pid: int, cpu: str) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=False, capture_output=True)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _key(i: int) -> bytes:
    return f"key-{i:07d}".encode()


def _prefill(bootstrap: str, topic: str, records: int, keys: int, value_size: int) -> float:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
        }
    )
    value = b"v" * value_size
    started = time.monotonic()
    for i in range(records):
        while True:
            try:
                producer.produce(topic, key=f"key-{i % keys:07d}".encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 100_000 == 0:
            producer.poll(0)
            progress(f"prefill: {i:,}/{records:,} records")
    assert producer.flush(120) == 0
    return records / (time.monotonic() - started)


def _log_time(line: str) -> dt.datetime:
    return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def _replay_seconds(log: str) -> float | None:
    """From the replica's log: first fetch ("building replica") to "caught up"; None if not logged."""
    lines = log.splitlines()
    start = next((line for line in lines if "building replica" in line), None)
    done = next((line for line in lines if "caught up" in line), None)
    if start is None or done is None:
        return None
    return (_log_time(done) - _log_time(start)).total_seconds()


class Bench:
    """One run: the shared Kafka broker, the pre-filled topic and replicas A (gRPC + RESP, CPU 0) and B,
    started on first use and stopped at the end; the figures, target metrics and plot series so far."""

    def __init__(self, work: Path, records: int, seconds: int, open_seconds: float) -> None:
        self.work = work
        self.records = records
        self.seconds = seconds
        self.duration = f"{seconds}s"
        self.open_seconds = open_seconds
        self.figures: list[Figure] = []
        self.metrics: Metrics = {}
        self.series: dict[str, list[Point]] = {}
        self.topic = "bench"
        self._broker: KafkaBroker | None = None
        self._a: ReplicaProcess | None = None
        self._b: ReplicaProcess | None = None
        self.redis_port = 0
        self.replay_wall = 0.0

    # ----- shared fixtures ---------------------------------------------------------------------------
    @property
    def broker(self) -> KafkaBroker:
        if self._broker is None:
            progress("starting Kafka")
            self._broker = KafkaBroker(self.work / "kafka").start()
            create_topic(self._broker.bootstrap_servers, self.topic, 6, config={"cleanup.policy": "compact"})
            rate = _prefill(self._broker.bootstrap_servers, self.topic, self.records, self.records, 100)
            progress(f"prefill: {self.records:,} records at {rate:,.0f} records/s (confluent-kafka producer)")
        return self._broker

    def replica(self, name: str, cpus: str, extra: tuple[str, ...] = ()) -> ReplicaProcess:
        """A started, pinned replica on the bench topic, SERVING (the caller stops it)."""
        r = ReplicaProcess(
            self.broker.bootstrap_servers,
            self.topic,
            self.work / name,
            self.work / f"{name}.log",
            extra_args=extra,
        )
        started = time.monotonic()
        r.start()
        assert r.process is not None
        _pin(r.process.pid, cpus)
        try:
            r.wait_serving(timeout=1800)
        except BaseException:
            r.stop()
            raise
        self.replay_wall = time.monotonic() - started
        return r

    @property
    def a(self) -> ReplicaProcess:
        if self._a is None:
            self.redis_port = free_port()
            progress(f"replica A (CPU {SERVER_CPU}) replays {self.records:,} records")
            self._a = self.replica(
                "replica-a", SERVER_CPU, ("--redis-listen", f"127.0.0.1:{self.redis_port}")
            )
        return self._a

    @property
    def a_pid(self) -> int:
        assert self.a.process is not None
        return self.a.process.pid

    @property
    def b(self) -> ReplicaProcess:
        if self._b is None:
            progress("replica B (unpinned) replays the topic")
            self._b = self.replica("replica-b", BOTH_CPUS)
        return self._b

    def stop_replicas(self) -> None:
        for r in (self._b, self._a):
            if r is not None:
                r.stop()
        self._a = self._b = None

    def close(self) -> None:
        self.stop_replicas()
        if self._broker is not None:
            self._broker.stop()
            self._broker = None

    # ----- recording ---------------------------------------------------------------------------------
    def row(self, name: str, value: str, detail: str) -> None:
        self.figures.append(Figure(name, value, detail))
        progress(f"  {name}: {value}")

    def ghz_row(
        self,
        name: str,
        pids: list[int],
        target: str,
        call: str,
        data: Mapping[str, object],
        concurrency: int,
        per_call: int = 1,
        unit: str = "request",
        proto: Path = ROOT / "proto" / "kvs2.proto",
        extra: str = "",
    ) -> tuple[Load, procstat.Cost]:
        """A closed-loop ghz run with the servers' CPU per request; value in calls/s (or units/s)."""
        load, cost = procstat.measure(
            pids, lambda: ghz(target, call, data, concurrency, self.duration, proto)
        )
        per = load.count * per_call
        value = (
            f"{load.rps:,.0f} req/s"
            if per_call == 1
            else f"{load.rps * per_call:,.0f} {unit}s/s ({load.rps:,.0f} calls/s)"
        )
        self.row(
            name,
            value,
            f"{cost.note(per, unit)}; {load.latency()}{' per call' if per_call > 1 else ''}; "
            f"ghz -c {concurrency}, 4 conns, {self.duration}; {load.ok}{extra}",
        )
        return load, cost

    def open_loop(self, series: str, peak: float, tool: str, send: Callable[[float], Point]) -> None:
        """Latency at 25/50/75/100 % of `peak` requests/s, open loop: one row, and the plot's `series`."""
        if self.open_seconds <= 0 or peak <= 0:
            return
        points = [send(peak * share) for share in LEVELS]
        self.series[series] = points

        def each(values: list[float], fmt: str) -> str:
            return " / ".join(format(v, fmt) for v in values)

        caveats = "".join(
            f"; at {share:.0%}: {p.note}" for share, p in zip(LEVELS, points, strict=True) if p.note
        )
        p50s, p99s = each([p.p50_ms for p in points], ".2f"), each([p.p99_ms for p in points], ".2f")
        offered, answered = (
            each([p.offered for p in points], ",.0f"),
            each([p.achieved for p in points], ",.0f"),
        )
        self.row(
            f"{series}: open-loop latency at 25/50/75/100 % of peak",
            f"p50 {p50s} ms; p99 {p99s} ms",
            f"offered {offered} req/s (peak {peak:,.0f}), answered {answered} /s; {tool}, "
            f"{self.open_seconds:g}s per level{caveats}",
        )

    def ghz_open(
        self, target: str, call: str, data: Mapping[str, object], proto: Path
    ) -> Callable[[float], Point]:
        def send(rate: float) -> Point:
            load = ghz(target, call, data, 32, f"{self.open_seconds:g}s", proto, rps=rate)
            return Point(rate, load.rps, load.p50, load.p99, "" if load.ok.count(" ") <= 1 else load.ok)

        return send

    def resp_open(self, port: int) -> Callable[[float], Point]:
        def send(rate: float) -> Point:
            r = redis_open_loop(port, rate, self.open_seconds)
            notes = []
            if not r["kept_up"]:
                notes.append(f"the generator fell behind (sent {r['send_rate']:,.0f}/s)")
            elif r["worst_send_lag_ms"] > 5:
                notes.append(
                    f"the generator's sends ran up to {r['worst_send_lag_ms']:.0f} ms late (counted in)"
                )
            if r["errors"] or r["sent"] > r["answered"]:
                notes.append(f"{r['errors']} errors, {r['sent'] - r['answered']} unanswered")
            return Point(rate, float(r["achieved"]), float(r["p50_ms"]), float(r["p99_ms"]), ", ".join(notes))

        return send


# ----- the parts ---------------------------------------------------------------------------------------
GET_ONE = {"key": _b64(_key(1))}


def part_replay(b: Bench) -> None:
    b.a  # noqa: B018 (starts replica A: the replay is measured on it)
    seconds = _replay_seconds(b.a.log_text())
    how = "from its log: first fetch to caught up"
    if seconds is None:
        seconds, how = b.replay_wall, "wall clock: start to SERVING (the log lines were not found)"
    b.metrics["replay_records_s"] = b.records / seconds
    b.row(
        "replay into LMDB",
        f"{b.records / seconds:,.0f} records/s",
        f"{b.records:,} records, all distinct keys, 100-byte values, 6 partitions, {seconds:.1f}s ({how});"
        f" server on CPU {SERVER_CPU}",
    )
    time.sleep(5.0)  # let the consumer's prefetch settle: the figure is the steady state after catch-up
    mem = procstat.memory(b.a_pid)
    b.metrics.update(rss_mb=mem.rss / 2**20, anon_mb=mem.anon / 2**20, rss_keys=b.records)
    b.row(
        f"RSS of a replica holding {b.records:,} keys",
        f"{mem.rss / 2**20:,.0f} MB",
        f"{mem.note()}; /proc/PID/status 5 s after SERVING",
    )


def _us(load: Load, cost: procstat.Cost, per_call: int = 1) -> float:
    return cost.per(load.count * per_call) * 1e6


def part_floor(b: Bench) -> None:
    """The floor with the replica's event loop (the target's reference); with the other loop too when
    uvloop is installed, to show what the loop alone is worth."""
    replica_loop = "uvloop" if procstat.uses_uvloop(b.a_pid) else "asyncio"
    loops = [replica_loop]
    if importlib.util.find_spec("uvloop") is not None:
        loops.append("asyncio" if replica_loop == "uvloop" else "uvloop")
    for loop in loops:
        proc, target = start_floor(b.work, loop)
        try:
            load, cost = b.ghz_row(
                f"floor: bare grpc.aio Get, fixed reply ({loop}, server on CPU {SERVER_CPU})",
                [proc.pid],
                target,
                "kvs2.Kvs2.Get",
                GET_ONE,
                32,
                extra="; bench/floor.py"
                + ("; the replica's event loop" if loop == replica_loop else "; not the replica's loop"),
            )
            if loop == replica_loop:
                b.metrics["floor_cpu_us"] = _us(load, cost)
        finally:
            proc.stop()


def part_get(b: Bench) -> None:
    load, cost = b.ghz_row(
        f"Get (server on CPU {SERVER_CPU})", [b.a_pid], b.a.target, "kvs2.Kvs2.Get", GET_ONE, 32
    )
    b.metrics["get_cpu_us"] = _us(load, cost)
    b.metrics["get_rps"] = load.rps
    b.open_loop(
        "kvs2 Get (gRPC)",
        load.rps,
        GHZ_OPEN,
        b.ghz_open(b.a.target, "kvs2.Kvs2.Get", GET_ONE, ROOT / "proto" / "kvs2.proto"),
    )


def part_multiget(b: Bench) -> None:
    for n in (100, 1000):
        keys = {"keys": [_b64(_key(i * 97 % b.records)) for i in range(n)]}
        load, _ = b.ghz_row(
            f"MultiGet({n} keys) (server on CPU {SERVER_CPU})",
            [b.a_pid],
            b.a.target,
            "kvs2.Kvs2.MultiGet",
            keys,
            16,
            per_call=n,
            unit="key",
        )
        b.metrics[f"multiget{n}_keys_s"] = load.rps * n


def _resp_rows(b: Bench, label: str, pid: int, port: int, prefix: str, series: str) -> None:
    """redis-benchmark GET of one key and MGET of 100 keys, closed loop, with the server's CPU per
    request; the request count comes from a short probe so each run lasts about --seconds."""
    keys = [_key(i).decode() for i in range(100)]
    for name, command, per in (("GET", ["GET", keys[1]], 1), ("MGET(100 keys)", ["MGET", *keys], 100)):
        probe = redis_benchmark(port, 32, 3000 if per == 1 else 300, command)  # also warms up
        requests = max(1000, int(probe.rps * b.seconds))

        def run(command: list[str] = command, requests: int = requests) -> Load:
            return redis_benchmark(port, 32, requests, command)

        load, cost = procstat.measure([pid], run)
        value = (
            f"{load.rps:,.0f} req/s" if per == 1 else f"{load.rps * per:,.0f} keys/s ({load.rps:,.0f} req/s)"
        )
        b.row(
            f"{label} {name}",
            value,
            f"{cost.note(requests)}; {load.latency()}; redis-benchmark -c 32 -n {requests:,}, no pipelining",
        )
        key = "get" if per == 1 else "mget"
        b.metrics[f"{prefix}_{key}_cpu_us"] = cost.per(requests) * 1e6
        b.metrics[f"{prefix}_{key}_rps"] = load.rps
        if per > 1:
            b.metrics[f"{prefix}_mget_keys_s"] = load.rps * per
    b.open_loop(
        series,
        b.metrics[f"{prefix}_get_rps"],
        "bench/loadgen.py (Python, open loop), 8 conns",
        b.resp_open(port),
    )


def part_resp(b: Bench) -> None:
    ensure_apt("redis-server", "redis-server")
    ensure_apt("redis-tools", "redis-benchmark")  # a dependency of redis-server; asked for by name too
    b.a  # noqa: B018 (replica A also serves RESP)
    _resp_rows(b, f"kvs2 RESP (server on CPU {SERVER_CPU})", b.a_pid, b.redis_port, "resp", "kvs2 GET (RESP)")


def part_redis(b: Bench) -> None:
    ensure_apt("redis-server", "redis-server")
    ensure_apt("redis-tools", "redis-benchmark")
    import redis

    proc, port = start_redis_server(b.work)
    try:
        client = redis.Redis(port=port)
        client.mset({_key(i): b"v" * 100 for i in range(10_000)})
        client.close()
        _resp_rows(
            b,
            f"peer: redis-server {redis_version()} (on CPU {SERVER_CPU})",
            proc.pid,
            port,
            "redis",
            "redis-server GET",
        )
    finally:
        proc.stop()


def part_latency(b: Bench) -> None:
    p50, p99 = percentiles_ms(sequential_set(b.a.target, 1000))
    b.metrics.update(set_p50_ms=p50, set_p99_ms=p99)
    b.row(
        "Set, one sequential client",
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
        "1,000 calls, 100-byte value, acks=all",
    )
    p50, p99 = percentiles_ms(set_to_watch(b.a.target, b.b.target, 1000))
    b.metrics.update(visible_p50_ms=p50, visible_p99_ms=p99)
    b.row(
        "Set call start on A → PUT event on B's Watch",
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
        "1,000 writes, one at a time (the next Set after the event arrived); A on CPU 0, B unpinned",
    )
    for name, value, detail in read_levels(b.b.target, b.a.target):
        b.row(name, value, f"one client, sequential calls; {detail}")


def part_set(b: Bench) -> None:
    data = {"key": _b64(b"bench-set"), "value": _b64(b"v" * 100)}
    b.ghz_row(
        f"Set (server on CPU {SERVER_CPU})",
        [b.a_pid],
        b.a.target,
        "kvs2.Kvs2.Set",
        data,
        64,
        extra="; acks=all, idempotent",
    )


def part_write(b: Bench) -> None:
    value = _b64(b"v" * 100)
    request = {
        "items": [{"key": _b64(f"batch-{i:06d}".encode()), "value": value} for i in range(WRITE_BATCH)]
    }
    load, _ = b.ghz_row(
        f"Write ({WRITE_BATCH}-item batches, server on CPU {SERVER_CPU})",
        [b.a_pid],
        b.a.target,
        "kvs2.Kvs2.Write",
        request,
        4,
        per_call=WRITE_BATCH,
        unit="record",
        extra="; 100-byte values, acks=all, idempotent, the replica's producer settings",
    )
    b.metrics["write_records_s"] = load.rps * WRITE_BATCH
    proc, endpoint = start_etcd(b.work, "etcd-txn")
    try:
        ops = [
            {"request_put": {"key": _b64(f"batch-{i:06d}".encode()), "value": value}}
            for i in range(ETCD_TXN_OPS)
        ]
        load, _ = b.ghz_row(
            f"peer: etcd Txn of {ETCD_TXN_OPS} Puts (server on CPU {SERVER_CPU})",
            [proc.pid],
            endpoint,
            "etcdserverpb.KV.Txn",
            {"success": ops},
            4,
            per_call=ETCD_TXN_OPS,
            unit="record",
            proto=ETCD_TXN_PROTO,
            extra=f"; etcd {ETCD_VERSION}, 100-byte values, fsync on",
        )
        b.metrics["etcd_txn_records_s"] = load.rps * ETCD_TXN_OPS
    finally:
        proc.stop()


def part_watch(b: Bench) -> None:
    b.row(
        "Watch fan-out",
        watch_fanout(b.broker.bootstrap_servers, b.topic, b.a.target, records=10_000),
        "asyncio clients in one process, prefix watch, 100-byte values",
    )


def part_workers(b: Bench) -> None:
    b.stop_replicas()  # CPU 0 to itself
    progress("replica with --workers 2 (CPUs 0,1) replays the topic")
    w = b.replica("replica-w", BOTH_CPUS, ("--workers", "2"))
    try:
        assert w.process is not None
        load, cost = b.ghz_row(
            f"Get, --workers 2 (server on CPUs {BOTH_CPUS})",
            [w.process.pid],
            w.target,
            "kvs2.Kvs2.Get",
            GET_ONE,
            32,
            extra=f"; ghz on CPU {LOAD_CPU} too; CPU summed over the leader and its follower",
        )
        b.metrics["workers2_get_cpu_us"] = _us(load, cost)
    finally:
        w.stop()
    if "get_cpu_us" in b.metrics:
        b.row(
            "Get CPU per request, --workers 1 vs --workers 2",
            f"{b.metrics['get_cpu_us']:.0f} vs {b.metrics['workers2_get_cpu_us']:.0f} µs",
            "server CPU-µs per Get (/proc, whole process tree), ghz -c 32 both times; --workers 1 on CPU "
            f"{SERVER_CPU}, --workers 2 on CPUs {BOTH_CPUS}",
        )


def part_embedded(b: Bench) -> None:
    b.stop_replicas()
    progress("embedded replica (in its own process, CPU 0) replays the topic")
    out = subprocess.run(
        [
            "taskset",
            "-c",
            SERVER_CPU,
            sys.executable,
            "-m",
            "bench.inproc",
            "--bootstrap-servers",
            b.broker.bootstrap_servers,
            "--topic",
            b.topic,
            "--data-dir",
            str(b.work / "embedded"),
            "--keys",
            str(b.records),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=3600,
    )
    r: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    b.metrics["embedded_get_p50_us"] = r["get_local_p50_us"]
    b.metrics["embedded_multiget_keys_s"] = r["multi_get_1000_keys_per_s"]
    where = f"in process, pinned to CPU {SERVER_CPU}, {b.records:,} keys"
    b.row(
        "embedded replica get_local (sync)",
        f"p50 {r['get_local_p50_us']:.1f} µs, p99 {r['get_local_p99_us']:.1f} µs",
        f"{where}; 100,000 random keys, each call timed",
    )
    b.row(
        "embedded replica await get (async API)",
        f"p50 {r['get_p50_us']:.1f} µs, p99 {r['get_p99_us']:.1f} µs",
        where,
    )
    for n in (100, 1000):
        b.row(
            f"embedded replica await multi_get({n} keys)",
            f"{r[f'multi_get_{n}_keys_per_s']:,.0f} keys/s",
            where,
        )
    b.row(
        "embedded replica replay + RSS",
        f"{r['replay_seconds']:.1f} s to SERVING",
        f"RSS {r['rss'] / 2**20:,.0f} MB (anonymous {r['anon'] / 2**20:,.0f} MB) 2 s after SERVING; {where}",
    )


def part_etcd(b: Bench) -> None:
    request = {"key": _b64(_key(1)), "serializable": True}
    for cpus in (SERVER_CPU, BOTH_CPUS):
        proc, endpoint = start_etcd(b.work, f"etcd-{cpus.replace(',', '')}", cpus)
        try:
            load, cost = b.ghz_row(
                f"peer: etcd serializable Range (server on CPU {cpus})",
                [proc.pid],
                endpoint,
                "etcdserverpb.KV.Range",
                request,
                32,
                proto=ETCD_PROTO,
                extra=f"; etcd {ETCD_VERSION}, one key",
            )
            if cpus == SERVER_CPU:
                b.metrics["etcd_range_cpu_us"] = _us(load, cost)
                b.metrics["etcd_range_rps"] = load.rps
                b.open_loop(
                    "etcd Range",
                    load.rps,
                    GHZ_OPEN,
                    b.ghz_open(endpoint, "etcdserverpb.KV.Range", request, ETCD_PROTO),
                )
        finally:
            proc.stop()


FUNCTIONS: dict[str, Callable[[Bench], None]] = {
    "replay": part_replay,
    "floor": part_floor,
    "get": part_get,
    "multiget": part_multiget,
    "resp": part_resp,
    "latency": part_latency,
    "set": part_set,
    "write": part_write,
    "watch": part_watch,
    "workers": part_workers,
    "embedded": part_embedded,
    "etcd": part_etcd,
    "redis": part_redis,
}


def _selected(only: str | None) -> list[str]:
    if not only:
        return list(PARTS)
    wanted: set[str] = set()
    for name in only.split(","):
        name = name.strip()
        if name not in FUNCTIONS:
            raise SystemExit(f"--only: unknown part {name!r}; parts are {', '.join(PARTS)}")
        wanted.update(ALIASES.get(name, (name,)))
    return [p for p in PARTS if p in wanted]


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} x {cpu}, {mem:.0f} GiB, {platform.platform()}"


def _load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


@contextlib.contextmanager
def _timed(name: str, started: float) -> Iterator[None]:
    t0 = time.monotonic()
    progress(f"[{time.monotonic() - started:6.0f}s] {name} …")
    yield
    progress(f"[{time.monotonic() - started:6.0f}s] {name} done in {time.monotonic() - t0:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000, help="distinct keys to pre-fill and replay")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each closed-loop load run")
    parser.add_argument(
        "--open-seconds",
        type=float,
        default=5.0,
        help="duration of each open-loop level (0: no open-loop runs)",
    )
    parser.add_argument("--only", help=f"comma-separated parts to run (default all): {', '.join(PARTS)}")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the Markdown file to append to")
    parser.add_argument("--note", default="", help="a note for the section's heading (e.g. 'smoke run')")
    args = parser.parse_args(argv)
    parts = _selected(args.only)
    children_die_with_parent(True)  # an interrupted run leaves no replica, broker or peer behind
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    progress(
        f"make bench: parts {', '.join(parts)}; {args.records:,} keys, {args.seconds}s per load run, "
        f"{args.open_seconds:g}s per open-loop level. On a quiet 2-core machine the whole run takes about "
        "10 minutes (budget: 25); each step prints its elapsed time."
    )
    if os.getloadavg()[0] > 1.0:
        progress(
            f"WARNING: load average {_load_average()} — other work shares this machine; the figures (and the "
            "ratios between peers) will be noisy. The section records the load average before and after."
        )
    bench = Bench(args.work, args.records, args.seconds, args.open_seconds)
    started = time.monotonic()
    load_before = _load_average()
    try:
        for part in parts:
            with _timed(part, started):
                try:
                    FUNCTIONS[part](bench)
                except Exception as exc:  # one part failing must not lose the others' figures
                    traceback.print_exc()
                    bench.row(
                        f"{part}", "not measured", f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                    )
    finally:
        bench.close()
    elapsed = time.monotonic() - started
    stamp = dt.datetime.now(dt.UTC)
    png: Path | None = None
    if bench.series:
        png = plot(
            bench.series,
            args.results.parent / f"latency-{stamp.strftime('%Y%m%d-%H%M')}.png",
            f"Latency against offered load, open loop; server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU} "
            f"({stamp:%Y-%m-%d %H:%M} UTC)",
        )
    note = ", ".join(x for x in (args.note, f"--only {args.only}" if args.only else "") if x)
    extra = [
        f"- run: {elapsed / 60:.1f} min; load average before {load_before}, after {_load_average()}",
    ]
    return _append(
        args.results, bench.figures, note, metrics=bench.metrics, png=png, extra=extra, stamp=stamp
    )


def _commit() -> str:
    """The code measured: its commit, and whether the work tree differed from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}{' with uncommitted changes' if dirty else ''}"


def _versions() -> str:
    return (
        f"Python {platform.python_version()}, grpcio {metadata.version('grpcio')}, "
        f"confluent-kafka {metadata.version('confluent-kafka')} (librdkafka {libversion()[0]}), "
        f"lmdb {metadata.version('lmdb')}, "
        f"Apache Kafka {KAFKA_VERSION} (KRaft, one node, same machine), ghz {TOOLS['ghz'].version}, "
        f"etcd {ETCD_VERSION}"
    )


def _append(
    results: Path,
    figures: list[Figure],
    note: str,
    settings: str = "",
    *,
    metrics: Metrics | None = None,
    png: Path | None = None,
    extra: list[str] | None = None,
    stamp: dt.datetime | None = None,
) -> int:
    """Append one section; `settings` replaces the default settings line (bench/snapshot.py's own)."""
    stamp = stamp or dt.datetime.now(dt.UTC)
    settings = settings or (
        f"one replica (`kvs2 serve`) pinned to CPU {SERVER_CPU}; every peer server pinned the same way;\n"
        f"  load generators pinned to CPU {LOAD_CPU}; Kafka unpinned on the same machine. Server CPU per\n"
        "  request is read from /proc/PID/stat of the server processes around each load run, less their\n"
        "  idle share."
    )
    rows = "\n".join(f"| {f.name} | {f.value} | {f.detail} |" for f in figures)
    lines = "\n".join(extra or [])
    section = f"""
## {stamp.strftime("%Y-%m-%d %H:%M UTC")}{f" ({note})" if note else ""}

- machine: {machine()}
- versions: {_versions()}
- code: commit {_commit()} (the replica's Kafka producer and consumer settings are those of
  dataplane/kvs2/kafka_io.py at that commit: `Writer` and `ChangelogReader`)
- settings: {settings}
{lines}

| what | result | settings |
|---|---|---|
{rows}
"""
    if png is not None:
        section += (
            f"\nLatency against offered load (open loop; gRPC rows by ghz `--async --rps`, RESP rows by "
            f"bench/loadgen.py): ![latency against offered load]({png.name})\n"
        )
    if metrics is not None:
        section += f"\n### Targets (issues #12 and #14), this run\n\n{table(metrics)}\n"
    if not results.exists():
        results.write_text("# Benchmark results\n\nAppended by `make bench` (bench/run.py), newest last.\n")
    with results.open("a") as fh:
        fh.write(section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
