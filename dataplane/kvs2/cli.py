"""`kvs2`: run a replica (`serve`), the operator (`operator`), or talk to a replica (`get`, `set`,
`del`, `mget`, `scan`, `watch`, `health`, `load`).

Keys and values on the command line are UTF-8 text. `--json` prints machine-readable output; a value
that is not UTF-8 is given as base64 under `value_b64`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from kvs2 import __version__, load
from kvs2._proto import kvs2_pb2 as pb
from kvs2.authz import policy_from_options, users_from_option
from kvs2.client import Client, Value, Written
from kvs2.config import (
    DEFAULT_LISTEN,
    DEFAULT_MAX_MULTIGET_KEYS,
    Limits,
    ServeSettings,
    kafka_config_from_env,
    parse_kafka_pairs,
    parse_peers,
)
from kvs2.credentials import client_tls_from_options, server_tls_from_options
from kvs2.errors import ConfigError
from kvs2.kafka_security import librdkafka_settings, security_from_options
from kvs2.logs import configure_logging

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
        help="create the topic (compacted, min.compaction.lag.ms=60000) if missing; for local development "
        "(the operator does it in k8s)",
    )
    p.add_argument(
        "--cas-cleanup-grace",
        type=float,
        default=float(_env("KVS2_CAS_CLEANUP_GRACE", "30")),
        help="seconds before tombstoning conditional records replay no longer needs",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(_env("KVS2_WORKERS", "1")),
        help="server processes sharing the port (SO_REUSEPORT); one of them runs the ingester",
    )
    p.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default=_env("KVS2_EVENT_LOOP", "auto"),
        help="asyncio event loop: uvloop when installed (auto, the default), or the standard one",
    )
    p.add_argument(
        "--redis-listen",
        default=_env("KVS2_REDIS_LISTEN", ""),
        metavar="HOST:PORT",
        help="also serve Redis-protocol clients (RESP2/RESP3) here; off by default; TLS as gRPC's",
    )
    p.add_argument(
        "--redis-users",
        default=_env("KVS2_REDIS_USERS", ""),
        metavar="DIR",
        help="Redis AUTH users: a directory (Secret volume), one file per user holding its password; "
        "rights from --authz/--authz-file",
    )
    p.add_argument(
        "--guard-margin",
        type=float,
        default=float(_env("KVS2_GUARD_MARGIN", "60")),
        help="seconds less than the topic's delete.retention.ms after which a replica that was behind "
        "rebuilds instead of resuming (the resurrection guard)",
    )
    p.add_argument(
        "--map-size",
        type=int,
        default=int(_env("KVS2_MAP_SIZE", str(1 << 34))),
        help="initial LMDB map size in bytes (address space; it doubles whenever it fills)",
    )
    p.add_argument(
        "--history-bytes",
        type=int,
        default=int(_env("KVS2_HISTORY_BYTES", str(1 << 30))),
        help="most bytes the Watch change history may take on disk (oldest go first; 0: no bound)",
    )
    p.add_argument(
        "--bootstrap-peers",
        default=_env("KVS2_BOOTSTRAP_PEERS", ""),
        metavar="HOST:PORT,...",
        help="peers to ask for a snapshot when this replica has no data or must rebuild; else it replays",
    )
    p.add_argument(
        "--snapshot-max-streams",
        type=int,
        default=int(_env("KVS2_SNAPSHOT_MAX_STREAMS", "1")),
        help="snapshots this replica sends to new peers at once",
    )
    p.add_argument(
        "--snapshot-max-bytes-per-second",
        type=int,
        default=int(_env("KVS2_SNAPSHOT_MAX_BYTES_PER_SECOND", "0")),
        help="bandwidth of each snapshot this replica sends (0: unlimited)",
    )
    p.add_argument(
        "--snapshot-data-listen",
        default=_env("KVS2_SNAPSHOT_DATA_LISTEN", ""),
        metavar="HOST:PORT|off",
        help="where snapshots' data bytes are sent from (a raw TCP channel beside the Snapshot RPC, TLS "
        "when gRPC is; default: --listen's host, any free port; off: over gRPC)",
    )
    p.add_argument("--partitions", type=int, default=int(_env("KVS2_PARTITIONS", "6")))
    p.add_argument("--replication-factor", type=int, default=int(_env("KVS2_REPLICATION_FACTOR", "1")))
    p.add_argument("--log-level", default=_env("KVS2_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--metrics-listen",
        default=_env("KVS2_METRICS_LISTEN", ""),
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (off unless set)",
    )
    p.add_argument("--log-format", choices=["text", "json"], default=_env("KVS2_LOG_FORMAT", "text"))
    p.add_argument(
        "--progress-log-interval",
        type=float,
        default=float(_env("KVS2_PROGRESS_LOG_INTERVAL", "10")),
        help="seconds between catch-up progress log lines while NOT_SERVING",
    )
    _add_serve_security(p)


def _add_serve_security(p: argparse.ArgumentParser) -> None:
    """Flags of kvs2.credentials, kvs2.authz, kvs2.health_port and kvs2.kafka_security (README "Security")."""
    tls = p.add_argument_group("gRPC TLS (files re-read on change: rotation needs no restart)")
    tls.add_argument(
        "--tls-dir",
        default=_env("KVS2_TLS_DIR", ""),
        help="a kubernetes.io/tls Secret volume: tls.crt, tls.key, and ca.crt (if not empty: mTLS)",
    )
    tls.add_argument("--tls-cert", default=_env("KVS2_TLS_CERT", ""), help="server certificate chain (PEM)")
    tls.add_argument("--tls-key", default=_env("KVS2_TLS_KEY", ""), help="its private key (PEM)")
    tls.add_argument(
        "--tls-client-ca",
        default=_env("KVS2_TLS_CLIENT_CA", ""),
        help="CA of client certificates: mutual TLS, clients without such a certificate are refused",
    )
    tls.add_argument(
        "--health-listen",
        default=_env("KVS2_HEALTH_LISTEN", ""),
        help="HOST:PORT of a plaintext port serving only grpc.health.v1 (for kubelet probes)",
    )
    tls.add_argument(
        "--authz-file",
        default=_env("KVS2_AUTHZ_FILE", ""),
        help="YAML map of client certificate subject (CN or SAN) to rights [read, write]; needs mTLS",
    )
    tls.add_argument(
        "--authz",
        action="append",
        default=[e for e in _env("KVS2_AUTHZ", "").split(";") if e.strip()],
        metavar="SUBJECT=RIGHTS",
        help="one subject's rights, e.g. alice=read,write (repeatable; KVS2_AUTHZ='a=read;b=read,write')",
    )
    kafka = p.add_argument_group("Kafka TLS and SASL, from files (mounted Secrets)")
    kafka.add_argument("--kafka-ca-file", default=_env("KVS2_KAFKA_CA_FILE", ""), help="CA of the brokers")
    kafka.add_argument(
        "--kafka-cert-file", default=_env("KVS2_KAFKA_CERT_FILE", ""), help="client certificate (mTLS)"
    )
    kafka.add_argument("--kafka-key-file", default=_env("KVS2_KAFKA_KEY_FILE", ""), help="its key")
    kafka.add_argument(
        "--kafka-sasl-username-file", default=_env("KVS2_KAFKA_SASL_USERNAME_FILE", ""), help="SASL user"
    )
    kafka.add_argument(
        "--kafka-sasl-password-file",
        default=_env("KVS2_KAFKA_SASL_PASSWORD_FILE", ""),
        help="SASL password (mechanism: sasl.mechanism, default SCRAM-SHA-512)",
    )
    kafka.add_argument(
        "--kafka-tls",
        action="store_true",
        default=_env("KVS2_KAFKA_TLS", "") in ("1", "true"),
        help="TLS to Kafka with the system's CAs (implied by --kafka-ca-file)",
    )


def _serve(args: argparse.Namespace) -> int:
    kafka = kafka_config_from_env(os.environ)
    kafka.update(parse_kafka_pairs(args.kafka_config))
    security = security_from_options(
        args.kafka_ca_file,
        args.kafka_cert_file,
        args.kafka_key_file,
        args.kafka_sasl_username_file,
        args.kafka_sasl_password_file,
        args.kafka_tls,
    )
    kafka.update(librdkafka_settings(security, kafka))
    settings = ServeSettings(
        bootstrap_servers=args.bootstrap_servers,
        topic=args.topic,
        data_dir=Path(args.data_dir),
        listen=args.listen,
        limits=Limits(max_multiget_keys=args.max_multiget_keys),
        kafka_config=kafka,
        shutdown_grace=args.shutdown_grace,
        default_write_timeout=args.write_timeout,
        cas_cleanup_grace=args.cas_cleanup_grace,
        workers=args.workers,
        redis_listen=args.redis_listen,
        guard_margin=args.guard_margin,
        map_size=args.map_size,
        history_bytes=args.history_bytes,
        bootstrap_peers=parse_peers(args.bootstrap_peers),
        snapshot_max_streams=args.snapshot_max_streams,
        snapshot_max_bytes_per_second=args.snapshot_max_bytes_per_second,
        snapshot_data_listen=args.snapshot_data_listen,
        create_topic=args.create_topic,
        partitions=args.partitions,
        replication_factor=args.replication_factor,
        log_level=args.log_level,
        metrics_listen=args.metrics_listen,
        log_format=args.log_format,
        progress_log_interval=args.progress_log_interval,
        tls=server_tls_from_options(args.tls_dir, args.tls_cert, args.tls_key, args.tls_client_ca),
        authz=policy_from_options(args.authz_file, args.authz),
        health_listen=args.health_listen or None,
        redis_users=users_from_option(args.redis_users),
        event_loop=args.event_loop,
    )
    configure_logging(settings.log_level, settings.log_format)
    from kvs2.metrics import worker_files
    from kvs2.server import run_replica

    with worker_files(settings.workers if settings.metrics_listen else 1):
        return run_replica(settings)  # may raise RestartToRebuild: `main` execs after this clean-up


# ----- client commands ------------------------------------------------------------------------------
def _text(raw: bytes) -> dict[str, str]:
    """JSON for bytes: `{"value": text}` when UTF-8, else `{"value_b64": base64}`."""
    try:
        return {"value": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_b64": base64.b64encode(raw).decode()}


def _show(value: Value | None, key: bytes, as_json: bool) -> dict[str, Any] | str:
    if not as_json:
        return "(not found)" if value is None else value.data.decode("utf-8", errors="replace")
    out: dict[str, Any] = {"key": key.decode("utf-8", errors="replace")}
    if value is None:
        return {**out, "status": "NOT_FOUND"}
    return {**out, "status": "OK", "revision": value.revision, **_text(value.data)}


def _emit(obj: object, as_json: bool) -> None:
    print(json.dumps(obj) if as_json else obj, flush=True)


def _tokens(raw: Sequence[str]) -> list[Written]:
    """`--after P:O` (repeatable): the partition:offset a write printed."""
    out = []
    for item in raw:
        partition, sep, offset = item.partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise ConfigError(f"--after takes PARTITION:OFFSET, got {item!r}")
        out.append(Written(int(partition), int(offset)))
    return out


def _cmd_get(client: Client, args: argparse.Namespace) -> int:
    key = args.key.encode()
    value = client.get(
        key,
        consistency=args.consistency,
        after=_tokens(args.after),
        max_lag=args.max_lag,
        max_staleness_ms=args.max_staleness_ms,
    )
    _emit(_show(value, key, args.json), args.json)
    return 0 if value is not None else 1


def _cmd_mget(client: Client, args: argparse.Namespace) -> int:
    keys = [k.encode() for k in args.keys]
    parts = client.multi_get(
        keys, consistency=args.consistency, after=_tokens(args.after), max_lag=args.max_lag
    )
    if args.json:
        _emit([_show(v, k, True) for k, v in parts], True)
    else:
        for k, v in parts:
            print(f"{k.decode(errors='replace')}\t{_show(v, k, False)}")
    return 0


def _cmd_write(client: Client, args: argparse.Namespace) -> int:
    key = args.key.encode()
    if args.if_revision is not None:
        cas = (
            client.set_if(key, args.value.encode(), args.if_revision)
            if args.command == "set"
            else client.delete_if(key, args.if_revision)
        )
        status = "PUBLISHED" if cas.applied else "CONDITION_FAILED"
        fields = {"status": status, "revision": cas.revision, **_position(cas.written)}
        _emit(fields if args.json else " ".join(f"{k}={v}" for k, v in fields.items()), args.json)
        return 0 if cas.applied else 1
    w = client.set(key, args.value.encode()) if args.command == "set" else client.delete(key)
    result = {"status": "PUBLISHED", **_position(w)}
    _emit(result if args.json else f"PUBLISHED partition={w.partition} offset={w.offset}", args.json)
    return 0


def _position(w: Written) -> dict[str, int]:
    return {"partition": w.partition, "offset": w.offset}


def _cmd_scan(client: Client, args: argparse.Namespace) -> int:
    start, end, prefix = args.start.encode(), args.end.encode(), args.prefix.encode()
    if args.count:
        n = client.count(start, end, prefix=prefix)
        _emit({"count": n} if args.json else n, args.json)
        return 0
    token, shown = b"", 0
    while args.limit == 0 or shown < args.limit:
        page_size = 0 if args.limit == 0 else min(1000, args.limit - shown)
        page = client.range(
            start, end, prefix=prefix, limit=page_size, keys_only=args.keys_only, page_token=token,
            consistency=args.consistency,
        )  # fmt: skip
        for item in page.items:
            if args.json:
                fields = {} if item.value is None else {"revision": item.revision, **_text(item.value)}
                _emit({"key": item.key.decode("utf-8", errors="replace"), **fields}, True)
            elif item.value is None:
                print(item.key.decode(errors="replace"))
            else:
                print(f"{item.key.decode(errors='replace')}\t{item.value.decode(errors='replace')}")
        shown += len(page.items)
        token = page.next_page_token
        if not token:
            break
    return 0


def _cmd_watch(client: Client, args: argparse.Namespace) -> int:
    start = {t.partition: t.offset for t in _tokens(args.from_)}
    events = client.watch(
        key=args.key.encode(), prefix=args.prefix.encode(), from_=start or None,
        progress_interval_ms=args.progress_ms,
    )  # fmt: skip
    for event in events:
        if event.kind == "progress":
            if args.json and args.progress:
                _emit({"type": "PROGRESS", "applied": {str(p): o for p, o in event.applied.items()}}, True)
            continue
        key = event.key.decode("utf-8", errors="replace")
        if args.json:
            value = {} if event.value is None else _text(event.value)
            position = {"partition": event.partition, "offset": event.offset}
            _emit({"type": event.kind.upper(), "key": key, **value, **position}, True)
        else:
            shown = "" if event.value is None else "\t" + event.value.decode(errors="replace")
            print(f"{event.kind.upper()}\t{key}{shown}", flush=True)
    return 0


def _cmd_health(client: Client, args: argparse.Namespace) -> int:
    status = client.health(args.service)
    _emit({"status": status} if args.json else status, args.json)
    return 0 if status == "SERVING" else 1


def _cmd_status(client: Client, args: argparse.Namespace) -> int:
    reply = client.replica_status()
    rows = [
        {
            "partition": p.partition,
            "applied": p.applied,
            "end_offset": p.end_offset,
            "lag": p.lag,
            "caught_up_ago_s": None if p.seconds_since_caught_up < 0 else round(p.seconds_since_caught_up, 1),
        }
        for p in reply.partitions
    ]
    health = "SERVING" if reply.serving else "NOT_SERVING"
    phase = pb.ReplicaPhase.Name(reply.phase).removeprefix("PHASE_")
    if args.json:
        _emit(
            {
                "target": args.target,
                "topic": reply.topic,
                "health": health,
                "partitions": rows,
                "phase": phase,
                "guard_rebuilds": reply.guard_rebuilds,
                "guard_last_reason": reply.guard_last_reason,
            },
            True,
        )
        return 0
    total = sum(p.lag for p in reply.partitions)
    print(
        f"replica {args.target}  topic {reply.topic!r}  {health}  lag {total} records  phase {phase}  "
        f"guard rebuilds {reply.guard_rebuilds}"
    )
    print(f"{'PARTITION':>9}  {'APPLIED':>12}  {'END OFFSET':>12}  {'LAG':>10}  CAUGHT UP")
    for r in rows:
        ago = "never" if r["caught_up_ago_s"] is None else f"{r['caught_up_ago_s']}s ago"
        print(f"{r['partition']:>9}  {r['applied']:>12}  {r['end_offset']:>12}  {r['lag']:>10}  {ago}")
    return 0


_COMMANDS = {
    "get": _cmd_get,
    "mget": _cmd_mget,
    "set": _cmd_write,
    "del": _cmd_write,
    "scan": _cmd_scan,
    "watch": _cmd_watch,
    "health": _cmd_health,
    "load": load.command,
    "status": _cmd_status,
}


def _client_command(args: argparse.Namespace) -> int:
    tls = client_tls_from_options(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    with Client(args.target, timeout=args.timeout, tls=tls) as client:
        return _COMMANDS[args.command](client, args)


def _add_client(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--target", default=_env("KVS2_TARGET", DEFAULT_TARGET), help="HOST:PORT of a replica"
    )
    common.add_argument("--timeout", type=float, default=10.0, help="deadline per call (seconds)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--tls-ca", default=_env("KVS2_CLIENT_TLS_CA", ""), help="CA of the server: use TLS")
    common.add_argument(
        "--tls-cert", default=_env("KVS2_CLIENT_TLS_CERT", ""), help="client certificate (mTLS)"
    )
    common.add_argument("--tls-key", default=_env("KVS2_CLIENT_TLS_KEY", ""), help="its private key")
    common.add_argument(
        "--tls-server-name",
        default=_env("KVS2_CLIENT_TLS_SERVER_NAME", ""),
        help="name the server's certificate must carry when it differs from --target's host",
    )
    reads = argparse.ArgumentParser(add_help=False)
    reads.add_argument("--consistency", choices=["eventual", "linearizable"], default="eventual")
    reads.add_argument(
        "--after", action="append", default=[], metavar="P:O", help="read-your-writes token (repeatable)"
    )
    reads.add_argument("--max-lag", type=int, default=0, help="at most this many records behind Kafka")
    reads.add_argument(
        "--max-staleness-ms", type=int, default=0, help="caught up with Kafka at most this long ago"
    )
    p = sub.add_parser("get", parents=[common, reads], help="read a key")
    p.add_argument("key")
    cas = argparse.ArgumentParser(add_help=False)
    cas.add_argument(
        "--if-revision",
        type=int,
        default=None,
        metavar="N",
        help="compare-and-set: only if the key's revision is N (0: only if absent); exit 1 if not",
    )
    p = sub.add_parser("set", parents=[common, cas], help="write a key")
    p.add_argument("key")
    p.add_argument("value")
    p = sub.add_parser("del", parents=[common, cas], help="delete a key")
    p.add_argument("key")
    p = sub.add_parser("mget", parents=[common, reads], help="read several keys at once")
    p.add_argument("keys", nargs="+")
    p = sub.add_parser("scan", parents=[common], help="list keys in a range or under a prefix")
    p.add_argument("--prefix", default="")
    p.add_argument("--start", default="", help="first key (inclusive)")
    p.add_argument("--end", default="", help="end key (exclusive)")
    p.add_argument("--limit", type=int, default=0, help="at most this many keys (0: all)")
    p.add_argument("--keys-only", action="store_true")
    p.add_argument("--count", action="store_true", help="only count the keys")
    p.add_argument("--consistency", choices=["eventual", "linearizable"], default="eventual")
    p = sub.add_parser("watch", parents=[common], help="follow changes to a key or a prefix")
    p.add_argument("--key", default="")
    p.add_argument("--prefix", default="")
    p.add_argument("--from", dest="from_", action="append", default=[], metavar="P:O", help="resume position")
    p.add_argument("--progress-ms", type=int, default=1000)
    p.add_argument("--progress", action="store_true", help="with --json, also print PROGRESS events")
    sub.add_parser("status", parents=[common], help="the replica's positions and lag per partition")
    p = sub.add_parser("health", parents=[common], help="the replica's gRPC health status")
    p.add_argument("--service", default="")
    load.add_parser(sub, common)


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["operator"]:
        # Everything after `operator` is the operator's own command line (argparse's REMAINDER would
        # refuse a first argument that looks like a flag, e.g. `kvs2 operator --namespace x`).
        from kvs2_operator.main import run

        return int(run(argv[1:]))
    args = build_parser().parse_args(argv)
    from kvs2.restart import RestartToRebuild

    try:
        if args.command == "serve":
            return _serve(args)
        return _client_command(args)
    except RestartToRebuild as restart:  # a running replica must rebuild: run `kvs2 serve` afresh
        restart.exec_self(argv)
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
