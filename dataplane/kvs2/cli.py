"""`kvs2`: run a replica (`serve`), the operator (`operator`), or talk to a replica (`get`, `set`,
`del`, `mget`, `health`).

Keys and values on the command line are UTF-8 text. `--json` prints machine-readable output; a value
that is not UTF-8 is given as base64 under `value_b64`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from kvs2 import __version__
from kvs2.client import Client, Value
from kvs2.config import (
    DEFAULT_LISTEN,
    DEFAULT_MAX_MULTIGET_KEYS,
    Limits,
    ServeSettings,
    kafka_config_from_env,
    parse_kafka_pairs,
)
from kvs2.errors import ConfigError

DEFAULT_TARGET = "127.0.0.1:50051"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run a replica: ingest the topic into LMDB and serve gRPC")
    p.add_argument("--bootstrap-servers", default=_env("KVS2_BOOTSTRAP_SERVERS", ""))
    p.add_argument("--topic", default=_env("KVS2_TOPIC", ""))
    p.add_argument("--data-dir", default=_env("KVS2_DATA_DIR", "./kvs2-data"))
    p.add_argument("--listen", default=_env("KVS2_LISTEN", DEFAULT_LISTEN))
    p.add_argument(
        "--max-multiget-keys",
        type=int,
        default=int(_env("KVS2_MAX_MULTIGET_KEYS", str(DEFAULT_MAX_MULTIGET_KEYS))),
    )
    p.add_argument(
        "--kafka-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra librdkafka setting (repeatable); also KVS2_KAFKA_CONFIG and KVS2_KAFKA_<NAME>",
    )
    p.add_argument("--shutdown-grace", type=float, default=float(_env("KVS2_SHUTDOWN_GRACE", "10")))
    p.add_argument(
        "--write-timeout",
        type=float,
        default=float(_env("KVS2_WRITE_TIMEOUT", "30")),
        help="longest a write waits for Kafka when the client sets no deadline (seconds)",
    )
    p.add_argument(
        "--create-topic",
        action="store_true",
        default=_env("KVS2_CREATE_TOPIC", "") in ("1", "true"),
        help="create the topic (compacted) if missing; for local development (the operator does it in k8s)",
    )
    p.add_argument("--partitions", type=int, default=int(_env("KVS2_PARTITIONS", "6")))
    p.add_argument("--replication-factor", type=int, default=int(_env("KVS2_REPLICATION_FACTOR", "1")))
    p.add_argument("--log-level", default=_env("KVS2_LOG_LEVEL", "INFO"))


def _serve(args: argparse.Namespace) -> int:
    kafka = kafka_config_from_env(os.environ)
    kafka.update(parse_kafka_pairs(args.kafka_config))
    settings = ServeSettings(
        bootstrap_servers=args.bootstrap_servers,
        topic=args.topic,
        data_dir=Path(args.data_dir),
        listen=args.listen,
        limits=Limits(max_multiget_keys=args.max_multiget_keys),
        kafka_config=kafka,
        shutdown_grace=args.shutdown_grace,
        default_write_timeout=args.write_timeout,
        create_topic=args.create_topic,
        partitions=args.partitions,
        replication_factor=args.replication_factor,
        log_level=args.log_level,
    )
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from kvs2.server import serve

    asyncio.run(serve(settings))
    return 0


# ----- client commands ------------------------------------------------------------------------------
def _show(value: Value | None, key: bytes, as_json: bool) -> dict[str, Any] | str:
    if not as_json:
        return "(not found)" if value is None else value.data.decode("utf-8", errors="replace")
    out: dict[str, Any] = {"key": key.decode("utf-8", errors="replace")}
    if value is None:
        out["status"] = "NOT_FOUND"
        return out
    out["status"] = "OK"
    out["revision"] = value.revision
    try:
        out["value"] = value.data.decode("utf-8")
    except UnicodeDecodeError:
        out["value_b64"] = base64.b64encode(value.data).decode()
    return out


def _emit(obj: object, as_json: bool) -> None:
    print(json.dumps(obj) if as_json else obj)


def _client_command(args: argparse.Namespace) -> int:
    with Client(args.target, timeout=args.timeout) as client:
        if args.command == "get":
            key = args.key.encode()
            value = client.get(key)
            _emit(_show(value, key, args.json), args.json)
            return 0 if value is not None else 1
        if args.command == "mget":
            parts = client.multi_get([k.encode() for k in args.keys])
            if args.json:
                _emit([_show(v, k, True) for k, v in parts], True)
            else:
                for k, v in parts:
                    print(f"{k.decode(errors='replace')}\t{_show(v, k, False)}")
            return 0
        if args.command in ("set", "del"):
            key = args.key.encode()
            w = client.set(key, args.value.encode()) if args.command == "set" else client.delete(key)
            result = {"status": "PUBLISHED", "partition": w.partition, "offset": w.offset}
            _emit(result if args.json else f"PUBLISHED partition={w.partition} offset={w.offset}", args.json)
            return 0
        if args.command == "health":
            status = client.health(args.service)
            _emit({"status": status} if args.json else status, args.json)
            return 0 if status == "SERVING" else 1
    raise AssertionError(args.command)


def _add_client(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--target", default=_env("KVS2_TARGET", DEFAULT_TARGET), help="HOST:PORT of a replica"
    )
    common.add_argument("--timeout", type=float, default=10.0, help="deadline per call (seconds)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("get", parents=[common], help="read a key")
    p.add_argument("key")
    p = sub.add_parser("set", parents=[common], help="write a key")
    p.add_argument("key")
    p.add_argument("value")
    p = sub.add_parser("del", parents=[common], help="delete a key")
    p.add_argument("key")
    p = sub.add_parser("mget", parents=[common], help="read several keys at once")
    p.add_argument("keys", nargs="+")
    p = sub.add_parser("health", parents=[common], help="the replica's gRPC health status")
    p.add_argument("--service", default="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvs2", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"kvs2 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_client(sub)
    op = sub.add_parser("operator", help="run the Kubernetes operator", add_help=False)
    op.add_argument("operator_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "operator":
            from kvs2_operator.main import run

            return int(run(list(args.operator_args)))
        return _client_command(args)
    except ConfigError as exc:
        print(f"kvs2: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        print(f"kvs2: {code.name if code else 'ERROR'}: {detail}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
