"""`make bench`: measure a kvs2 replica on this machine and append the figures to bench/RESULTS.md.

What is measured (each with the settings printed beside it):
  replay     records/s a fresh replica applies from a pre-filled topic (start → SERVING, from its log)
  Get        ghz, unary Get of one existing key
  MultiGet   ghz, 100 keys per call → keys/s
  Set        ghz, unary Set (acks=all, idempotent)
  Write      ghz, 1000 puts of 100-byte values per call → acknowledged records/s, server CPU per record;
             peer: etcd Txn of 128 Puts (`--only write` runs just these two rows)
  peers      etcd serializable Range (etcd's own benchmark tool) and redis GET (redis-benchmark), same box
  RESP       the Redis front door (`--redis-listen`) and redis-server under the same redis-benchmark GET and
             MGET(100 keys), with each server's CPU per request from /proc (`--only resp` runs just these)
The server under test is pinned to CPU 0 and every load generator to CPU 1 (2-core machine).
Nothing here is a pass/fail test: targets live in RESULTS.md, not in assertions.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from confluent_kafka import Producer, libversion

from bench.consistency import read_levels, watch_fanout
from tests.harness.common import ManagedProcess, free_port, progress, wait_until
from tests.harness.debian import AptUnavailable, ensure_apt
from tests.harness.gobuild import ETCD_VERSION, TOOLS, ensure_tool
from tests.harness.kafka import KAFKA_VERSION, KafkaBroker, create_topic
from tests.harness.replica import ReplicaProcess

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
SERVER_CPU = "0"
LOAD_CPU = "1"
BOTH_CPUS = "0,1"  # the server may use both cores (the load generator still runs on CPU 1)

ETCD_PROTO = ROOT / "bench" / "peers" / "etcd_range.proto"


@dataclass
class Figure:
    name: str
    value: str
    detail: str


def _pin(pid: int, cpu: str) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=False, capture_output=True)


@dataclass
class Load:
    """One ghz run: requests/s, latency percentiles (ms) and the share of OK answers."""

    rps: float
    p50: float
    p99: float
    ok: str

    def latency(self) -> str:
        return f"p50 {self.p50:.2f} ms, p99 {self.p99:.2f} ms"


def _ghz(
    target: str,
    call: str,
    data: Mapping[str, object],
    concurrency: int,
    duration: str,
    proto: Path = ROOT / "proto" / "kvs2.proto",
) -> Load:
    ghz = ensure_tool("ghz")
    payload = json.dumps(data)
    data_args = ["-d", payload]
    if len(payload) > 64_000:  # a 1000-item Write is longer than an argument may be: pass it as a file
        data_file = Path(tempfile.mkstemp(prefix="ghz-data-", suffix=".json")[1])
        data_file.write_text(payload)
        data_args = ["-D", str(data_file)]
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            str(ghz),
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
            "--format",
            "json",
            target,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    if data_args[0] == "-D":
        Path(data_args[1]).unlink(missing_ok=True)
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
            + (" (in flight when the timed run ended)" if code != "OK" and n <= concurrency else "")
            for code, n in sorted(codes.items(), key=lambda item: -item[1])
        ),
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


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
        if i % 50_000 == 0:
            producer.poll(0)
            progress(f"prefill: {i}/{records} records")
    assert producer.flush(120) == 0
    return records / (time.monotonic() - started)


def _log_time(line: str) -> dt.datetime:
    return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def _replay_seconds(log: str) -> float:
    start = next(line for line in log.splitlines() if "building replica" in line)
    done = next(line for line in log.splitlines() if "caught up" in line)
    return (_log_time(done) - _log_time(start)).total_seconds()


def bench_kvs2(work: Path, records: int, duration: str) -> tuple[list[Figure], dict[str, str]]:
    figures: list[Figure] = []
    broker = KafkaBroker(work / "kafka").start()
    try:
        topic = "bench"
        partitions = 6
        create_topic(broker.bootstrap_servers, topic, partitions, config={"cleanup.policy": "compact"})
        distinct = min(records, 100_000)
        rate = _prefill(broker.bootstrap_servers, topic, records, distinct, 100)
        progress(f"prefill done at {rate:,.0f} records/s (confluent-kafka producer)")

        replica = ReplicaProcess(broker.bootstrap_servers, topic, work / "replica", work / "replica.log")
        replica.start()
        assert replica.process is not None
        _pin(replica.process.pid, SERVER_CPU)
        replica.wait_serving(timeout=600)
        seconds = _replay_seconds(replica.log_text())
        figures.append(
            Figure(
                "replay into LMDB",
                f"{records / seconds:,.0f} records/s",
                f"{records:,} records, {distinct:,} distinct keys, 100-byte values, {partitions} partitions,"
                f" {seconds:.1f}s from first fetch to caught up",
            )
        )
        one_key = {"key": _b64(b"key-0000001")}
        load = _ghz(replica.target, "kvs2.Kvs2.Get", one_key, 32, duration)
        figures.append(
            Figure(
                "Get",
                f"{load.rps:,.0f} req/s",
                f"{load.latency()}; ghz -c 32, 4 conns, {duration}; {load.ok}",
            )
        )
        keys = {"keys": [_b64(f"key-{i * 97 % distinct:07d}".encode()) for i in range(100)]}
        load = _ghz(replica.target, "kvs2.Kvs2.MultiGet", keys, 16, duration)
        figures.append(
            Figure(
                "MultiGet(100 keys)",
                f"{load.rps * 100:,.0f} keys/s ({load.rps:,.0f} req/s)",
                f"{load.latency()}; ghz -c 16, 4 conns, {duration}; {load.ok}",
            )
        )
        load = _ghz(
            replica.target,
            "kvs2.Kvs2.Set",
            {"key": _b64(b"bench-set"), "value": _b64(b"v" * 100)},
            64,
            duration,
        )
        figures.append(
            Figure(
                "Set",
                f"{load.rps:,.0f} req/s",
                f"{load.latency()}; ghz -c 64, 4 conns, {duration}; acks=all, idempotent; {load.ok}",
            )
        )
        other = ReplicaProcess(broker.bootstrap_servers, topic, work / "replica-b", work / "replica-b.log")
        other.start()
        other.wait_serving(timeout=600)
        for name, value, detail in read_levels(other.target, replica.target):
            figures.append(Figure(name, value, f"one client, sequential calls; {detail}"))
        figures.append(
            Figure(
                "Watch fan-out",
                watch_fanout(broker.bootstrap_servers, topic, replica.target),
                "asyncio clients in one process, prefix watch, 100-byte values",
            )
        )
        other.stop()
        replica.stop()
        workers = ReplicaProcess(
            broker.bootstrap_servers,
            topic,
            work / "replica-w",
            work / "replica-w.log",
            extra_args=("--workers", "2"),
        )
        workers.start()
        assert workers.process is not None
        _pin(workers.process.pid, BOTH_CPUS)
        workers.wait_serving(timeout=600)
        load = _ghz(workers.target, "kvs2.Kvs2.Get", one_key, 32, duration)
        figures.append(
            Figure(
                f"Get, --workers 2 (server on CPU {BOTH_CPUS})",
                f"{load.rps:,.0f} req/s",
                f"{load.latency()}; ghz -c 32, 4 conns, {duration}, ghz on CPU {LOAD_CPU}; {load.ok}",
            )
        )
        workers.stop()
    finally:
        broker.stop()
    return figures, {"ghz": TOOLS["ghz"].version}


def bench_etcd(work: Path, duration: str, cpus: str = SERVER_CPU) -> Figure:
    etcd = ensure_tool("etcd")
    client_port, peer_port = free_port(), free_port()
    endpoint = f"127.0.0.1:{client_port}"
    proc = ManagedProcess(
        "etcd",
        [
            "taskset",
            "-c",
            cpus,
            str(etcd),
            "--data-dir",
            str(work / f"etcd-{cpus.replace(',', '')}"),
            "--listen-client-urls",
            f"http://{endpoint}",
            "--advertise-client-urls",
            f"http://{endpoint}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{peer_port}",
        ],
        work / "etcd.log",
    ).start()
    try:

        def put() -> bool:
            body = json.dumps({"key": _b64(b"key-0000001"), "value": _b64(b"v" * 100)}).encode()
            try:
                urllib.request.urlopen(f"http://{endpoint}/v3/kv/put", body, timeout=1).read()
            except OSError:
                return False
            return True

        wait_until(put, timeout=30, what="etcd to accept a put")
        request = {"key": _b64(b"key-0000001"), "serializable": True}
        cpu_before, started = cpu_seconds(proc.pid), time.monotonic()
        load = _ghz(endpoint, "etcdserverpb.KV.Range", request, 32, duration, proto=ETCD_PROTO)
        per_call = (cpu_seconds(proc.pid) - cpu_before) / max(1.0, load.rps * (time.monotonic() - started))
        return Figure(
            f"peer: etcd serializable Range (server on CPU {cpus})",
            f"{load.rps:,.0f} req/s",
            f"etcd {ETCD_VERSION}, one key; {load.latency()}; ghz -c 32, 4 conns, {duration}; {load.ok};"
            f" server CPU ≈ {per_call * 1e6:.0f} µs/request (/proc, over the ghz run)",
        )
    finally:
        proc.stop()


def _start_redis_server(log_dir: Path) -> tuple[ManagedProcess, int]:
    """redis-server, the peer, pinned to the server CPU like kvs2's replica; no persistence."""
    port = free_port()
    proc = ManagedProcess(
        "redis",
        [
            "taskset",
            "-c",
            SERVER_CPU,
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ],
        log_dir / f"kvs2-bench-redis-{port}.log",
    ).start()
    return proc, port


def bench_redis(duration_s: int) -> Figure | None:
    try:
        ensure_apt("redis-server", "redis-server")  # redis-benchmark and redis-cli come with it
    except AptUnavailable as exc:
        progress(f"redis-server not measured: {exc}")
        return None
    proc, port = _start_redis_server(Path("/tmp"))
    try:
        wait_until(
            lambda: (
                subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0
            ),
            timeout=10,
            what="redis",
        )
        subprocess.run(
            ["redis-cli", "-p", str(port), "set", "key:__rand_int__", "v"], check=True, capture_output=True
        )
        out = subprocess.run(
            [
                "taskset",
                "-c",
                LOAD_CPU,
                "redis-benchmark",
                "-p",
                str(port),
                "-t",
                "get",
                "-c",
                "32",
                "-n",
                str(50_000 * duration_s // 10),
                "-q",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        line = [x for x in out.stdout.replace("\r", "\n").splitlines() if "requests per second" in x][-1]
        rps = line.split(":")[1].split("requests")[0].strip()
        version = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True
        ).stdout.split()[2]
        return Figure(
            "peer: redis GET",
            f"{float(rps):,.0f} req/s",
            f"redis {version}, redis-benchmark -c 32, no pipelining",
        )
    finally:
        proc.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_benchmark(port: int, clients: int, requests: int, command: list[str]) -> tuple[float, str]:
    """One redis-benchmark run of a custom command on CPU LOAD_CPU: (requests/s, its CSV latency line)."""
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
        timeout=600,
    )
    row = next(csv.reader([out.stdout.strip().splitlines()[-1]]))
    rps = float(row[1])
    return rps, f"p50 {float(row[4]):.2f} ms, p99 {float(row[6]):.2f} ms"


def _resp_rows(label: str, pid: int, port: int, seconds: int, keys: list[str]) -> list[Figure]:
    """GET of one key and MGET of 100 keys through redis-benchmark, with the server's CPU per request."""
    figures = []
    for name, command, clients, per_request_keys, rate in (
        ("GET", ["GET", keys[1]], 32, 1, 20_000),
        ("MGET(100 keys)", ["MGET", *keys[:100]], 32, 100, 2_000),
    ):
        requests = rate * seconds
        idle_from = cpu_seconds(pid)
        time.sleep(2.0)
        idle = (cpu_seconds(pid) - idle_from) / 2.0  # background threads (Kafka consumer, ingester)
        before, started = cpu_seconds(pid), time.monotonic()
        rps, latency = _redis_benchmark(port, clients, requests, command)
        busy = cpu_seconds(pid) - before - idle * (time.monotonic() - started)
        per_request = busy / requests
        value = (
            f"{rps:,.0f} req/s" if per_request_keys == 1 else f"{rps * 100:,.0f} keys/s ({rps:,.0f} req/s)"
        )
        figures.append(
            Figure(
                f"{label} {name}",
                value,
                f"server CPU {per_request * 1e6:.1f} µs/request (/proc, less its idle"
                f" {idle * 100:.1f}% of a core); {latency}; "
                f"redis-benchmark -c {clients} -n {requests:,}, no pipelining",
            )
        )
    return figures


def bench_resp(work: Path, seconds: int) -> list[Figure]:
    """The Redis front door (`--redis-listen`) against redis-server, same load, same pinning."""
    ensure_apt("redis-server", "redis-server")
    keys = [f"key-{i:07d}" for i in range(10_000)]
    figures: list[Figure] = []
    broker = KafkaBroker(work / "kafka-resp").start()
    try:
        create_topic(broker.bootstrap_servers, "resp", 6, config={"cleanup.policy": "compact"})
        _prefill(broker.bootstrap_servers, "resp", len(keys), len(keys), 100)
        port = free_port()
        replica = ReplicaProcess(
            broker.bootstrap_servers,
            "resp",
            work / "replica-resp",
            work / "replica-resp.log",
            extra_args=("--redis-listen", f"127.0.0.1:{port}"),
        )
        replica.start()
        assert replica.process is not None
        _pin(replica.process.pid, SERVER_CPU)
        try:
            replica.wait_serving(timeout=300)
            figures += _resp_rows(
                f"kvs2 RESP (server on CPU {SERVER_CPU})", replica.process.pid, port, seconds, keys
            )
        finally:
            replica.stop()
    finally:
        broker.stop()
    server, port = _start_redis_server(work)
    try:
        import redis

        client = redis.Redis(port=port)
        wait_until(lambda: _pings(client), timeout=30, what="redis-server")
        client.mset({k: b"v" * 100 for k in keys})
        figures += _resp_rows(f"peer: redis-server (on CPU {SERVER_CPU})", server.pid, port, seconds, keys)
        client.close()
    finally:
        server.stop()
    return figures


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


# ----- batched writes (issue 12 item 1) --------------------------------------------------------------
ETCD_TXN_PROTO = ROOT / "bench" / "peers" / "etcd_txn.proto"
WRITE_BATCH = 1000
ETCD_TXN_OPS = 128  # etcd's default --max-txn-ops


def _write_request(items: int, value_size: int) -> dict[str, object]:
    """One Write call's JSON for ghz: `items` distinct keys (the same ones in every call), fixed value."""
    value = _b64(b"v" * value_size)
    return {"items": [{"key": _b64(f"batch-{i:06d}".encode()), "value": value} for i in range(items)]}


def bench_write(work: Path, duration: str, concurrency: int = 4) -> list[Figure]:
    """`Write` with 1000 puts of 100 bytes per call (acks=all), server CPU per acknowledged record."""
    broker = KafkaBroker(work / "kafka-write").start()
    try:
        topic = "bench-write"
        create_topic(broker.bootstrap_servers, topic, 6, config={"cleanup.policy": "compact"})
        replica = ReplicaProcess(broker.bootstrap_servers, topic, work / "replica-write", work / "write.log")
        replica.start()
        try:  # the replica stops whatever happens (a failed run must leave no process behind)
            assert replica.process is not None
            _pin(replica.process.pid, SERVER_CPU)
            replica.wait_serving(timeout=600)
            pid = replica.process.pid
            cpu_before, started = cpu_seconds(pid), time.monotonic()
            request = _write_request(WRITE_BATCH, 100)
            load = _ghz(replica.target, "kvs2.Kvs2.Write", request, concurrency, duration)
            elapsed = time.monotonic() - started
            records = load.rps * WRITE_BATCH
            per_record = (cpu_seconds(pid) - cpu_before) / max(1.0, records * elapsed)
        finally:
            replica.stop()
        return [
            Figure(
                f"Write ({WRITE_BATCH}-item batches)",
                f"{records:,.0f} records/s ({load.rps:,.0f} calls/s)",
                f"100-byte values, acks=all, idempotent, linger.ms=1; {load.latency()} per call; "
                f"ghz -c {concurrency}, 4 conns, {duration}; {load.ok}; server CPU ≈ "
                f"{per_record * 1e6:.1f} µs/record (/proc, over the ghz run)",
            )
        ]
    finally:
        broker.stop()


def bench_etcd_txn(work: Path, duration: str, concurrency: int = 4) -> Figure:
    """The etcd peer of `Write`: Puts batched in Txns of 128 ops (etcd's default limit)."""
    etcd = ensure_tool("etcd")
    client_port, peer_port = free_port(), free_port()
    endpoint = f"127.0.0.1:{client_port}"
    proc = ManagedProcess(
        "etcd-txn",
        [
            "taskset",
            "-c",
            SERVER_CPU,
            str(etcd),
            "--data-dir",
            str(work / "etcd-txn"),
            "--listen-client-urls",
            f"http://{endpoint}",
            "--advertise-client-urls",
            f"http://{endpoint}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{peer_port}",
        ],
        work / "etcd-txn.log",
    ).start()
    try:
        wait_until(lambda: _etcd_up(endpoint), timeout=30, what="etcd to answer")
        value = _b64(b"v" * 100)
        ops = [
            {"request_put": {"key": _b64(f"batch-{i:06d}".encode()), "value": value}}
            for i in range(ETCD_TXN_OPS)
        ]
        cpu_before, started = cpu_seconds(proc.pid), time.monotonic()
        load = _ghz(endpoint, "etcdserverpb.KV.Txn", {"success": ops}, concurrency, duration, ETCD_TXN_PROTO)
        records = load.rps * ETCD_TXN_OPS
        per_record = (cpu_seconds(proc.pid) - cpu_before) / max(1.0, records * (time.monotonic() - started))
        return Figure(
            f"peer: etcd Txn of {ETCD_TXN_OPS} Puts (server on CPU {SERVER_CPU})",
            f"{records:,.0f} records/s ({load.rps:,.0f} txns/s)",
            f"etcd {ETCD_VERSION}, 100-byte values, fsync on; {load.latency()} per txn; "
            f"ghz -c {concurrency}, 4 conns, {duration}; {load.ok}; "
            f"server CPU ≈ {per_record * 1e6:.1f} µs/record",
        )
    finally:
        proc.stop()


def _etcd_up(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(f"http://{endpoint}/health", timeout=1).read()
    except OSError:
        return False
    return True


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} x {cpu}, {mem:.0f} GiB, {platform.platform()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000, help="records to pre-fill for replay")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each load run")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the Markdown file to append to")
    parser.add_argument(
        "--only",
        choices=["resp", "write"],
        help="run only these rows (resp: the Redis front door vs redis-server; write: Write vs etcd Txn)",
    )
    args = parser.parse_args(argv)
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    if args.only == "resp":
        return _append(args.results, bench_resp(args.work, args.seconds), "--only resp")
    if args.only == "write":
        return _append(args.results, _write_rows(args.work, f"{args.seconds}s"), "--only write")
    figures, _ = bench_kvs2(args.work, args.records, f"{args.seconds}s")
    try:
        figures += bench_resp(args.work, args.seconds)
    except Exception as exc:
        figures.append(Figure("kvs2 RESP", "not measured", f"{exc}"))
    for cpus in (SERVER_CPU, BOTH_CPUS):
        try:
            figures.append(bench_etcd(args.work, f"{args.seconds}s", cpus))
        except Exception as exc:  # a peer that cannot run must not lose the kvs2 figures
            figures.append(Figure(f"peer: etcd serializable Range (CPU {cpus})", "not measured", f"{exc}"))
    figures += _write_rows(args.work, f"{args.seconds}s")
    try:
        redis = bench_redis(args.seconds)
        figures.append(redis or Figure("peer: redis GET", "not measured", "redis-server not installable"))
    except Exception as exc:
        figures.append(Figure("peer: redis GET", "not measured", f"{exc}"))
    return _append(args.results, figures, "")


def _write_rows(work: Path, duration: str) -> list[Figure]:
    figures: list[Figure] = []
    try:
        figures += bench_write(work, duration)
    except Exception as exc:
        figures.append(Figure("Write (1000-item batches)", "not measured", f"{exc}"))
    try:
        figures.append(bench_etcd_txn(work, duration))
    except Exception as exc:
        figures.append(Figure(f"peer: etcd Txn of {ETCD_TXN_OPS} Puts", "not measured", f"{exc}"))
    return figures


def _append(results: Path, figures: list[Figure], note: str, settings: str = "") -> int:
    versions = (
        f"Python {platform.python_version()}, grpcio {metadata.version('grpcio')}, "
        f"confluent-kafka {metadata.version('confluent-kafka')} (librdkafka {libversion()[0]}), "
        f"lmdb {metadata.version('lmdb')}, "
        f"Apache Kafka {KAFKA_VERSION} (KRaft, one node, same machine), ghz {TOOLS['ghz'].version}"
    )
    default_settings = (
        f"one replica (`kvs2 serve`, a single Python process) pinned to CPU {SERVER_CPU}; load generators\n"
        f"  pinned to CPU {LOAD_CPU}; Kafka unpinned on the same machine."
    )
    rows = "\n".join(f"| {f.name} | {f.value} | {f.detail} |" for f in figures)
    section = f"""
## {dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}{f" ({note})" if note else ""}

- machine: {machine()}
- versions: {versions}
- settings: {settings or default_settings}

| what | result | settings |
|---|---|---|
{rows}
"""
    if not results.exists():
        results.write_text("# Benchmark results\n\nAppended by `make bench` (bench/run.py), newest last.\n")
    with results.open("a") as fh:
        fh.write(section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
