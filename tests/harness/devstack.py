"""`make up` / `make down`: Kafka on 127.0.0.1:19092 and two replicas on 127.0.0.1:50051 and :50052
(Redis protocol on 127.0.0.1:16379 and :16380).

Everything runs in the background and outlives the command; PID files and logs live in `.kvs2/`.
`down` stops exactly the PIDs `up` recorded (replicas first, then Kafka). Data stays for the next `up`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tests.harness import kafka
from tests.harness.common import ManagedProcess, live_pid, progress, state_root, stop_pid, wait_until
from tests.harness.replica import kvs2_command

KAFKA_PORT = 19092
TOPIC = "kvs2"
PARTITIONS = 6
REPLICAS = {"a": 50051, "b": 50052}
REDIS_PORTS = {"a": 16379, "b": 16380}  # `--redis-listen`: the Redis-protocol front door
# Each replica's Prometheus metrics endpoint (kvs2 serve --metrics-listen).
METRICS_PORTS = {"a": 59051, "b": 59052}


def _replica_dir(name: str) -> Path:
    return state_root() / f"replica-{name}"


def _pid_file(name: str) -> Path:
    return state_root() / f"replica-{name}.pid"


def _start_replica(name: str, port: int, bootstrap: str) -> None:
    running = live_pid(_pid_file(name), b"serve")
    target = f"127.0.0.1:{port}"
    if running is not None:
        progress(f"replica {name} already running (pid {running}) on {target}")
        return
    log_path = state_root() / f"replica-{name}.log"
    argv = [
        *kvs2_command(),
        "serve",
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        TOPIC,
        "--data-dir",
        str(_replica_dir(name)),
        "--listen",
        target,
        "--redis-listen",
        f"127.0.0.1:{REDIS_PORTS[name]}",
        "--create-topic",
        "--partitions",
        str(PARTITIONS),
        "--metrics-listen",
        f"127.0.0.1:{METRICS_PORTS[name]}",
    ]
    process = ManagedProcess(f"replica-{name}", argv, log_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    process.start()
    _pid_file(name).write_text(f"{process.pid}\n")
    progress(
        f"replica {name}: pid {process.pid}, gRPC {target}, Redis 127.0.0.1:{REDIS_PORTS[name]}, "
        f"metrics {_metrics_url(name)}, log {log_path}"
    )


def _metrics_url(name: str) -> str:
    return f"http://127.0.0.1:{METRICS_PORTS[name]}/metrics"


def up() -> int:
    bootstrap = kafka.up(KAFKA_PORT, state_root() / "kafka")
    for name, port in REPLICAS.items():
        _start_replica(name, port, bootstrap)
    from kvs2.client import Client

    for name, port in REPLICAS.items():
        with Client(f"127.0.0.1:{port}", timeout=1.0) as client:

            def serving(c: Client = client) -> bool:
                return c.health() == "SERVING"

            try:
                wait_until(serving, timeout=90, what=f"replica {name} to be SERVING")
            except TimeoutError as exc:
                print(f"error: {exc}; see {state_root() / f'replica-{name}.log'}", file=sys.stderr)
                return 1
    kvs2 = " ".join(kvs2_command())
    print(
        f"""
kvs2 is up: Kafka at {bootstrap}, topic {TOPIC!r} ({PARTITIONS} partitions), two replicas SERVING.
  replica a: 127.0.0.1:50051      replica b: 127.0.0.1:50052      logs: {state_root()}/*.log
  metrics a: {_metrics_url("a")}   metrics b: {_metrics_url("b")}

Try it:
  {kvs2} set --target 127.0.0.1:50051 hello world
  {kvs2} get --target 127.0.0.1:50052 hello
  {kvs2} mget --target 127.0.0.1:50052 --json hello missing
  {kvs2} status --target 127.0.0.1:50052          (positions and lag per partition)
  grpcurl -plaintext 127.0.0.1:50051 list          (reflection is on)

Any Redis client works too (RESP2/RESP3; replica a: 127.0.0.1:16379, replica b: 127.0.0.1:16380):
  redis-cli -p 16379 SET hello world               (redis-cli: apt-get install redis-tools)
  redis-cli -p 16380 GET hello
  redis-cli -p 16380 --scan --pattern 'h*'
  redis-cli -p 16379 KVS2.SET k v                  (replies with the write's token P:O)
  redis-cli -p 16380 KVS2.GET k AFTER P:O          (read-your-writes through the other replica)
Stop it with: make down
"""
    )
    return 0


def down() -> int:
    for name in REPLICAS:
        pid = live_pid(_pid_file(name), b"serve")
        if pid is None:
            progress(f"replica {name} is not running")
        else:
            progress(f"stopping replica {name} (pid {pid})")
            stop_pid(pid, grace=20.0)
        _pid_file(name).unlink(missing_ok=True)
    kafka.down(state_root() / "kafka")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.devstack", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args(argv)
    return up() if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
