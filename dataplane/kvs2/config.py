"""Settings of `kvs2 serve`, from flags and environment variables.

Every flag has an environment variable so that a Kubernetes pod can be configured from a ConfigMap
or Secret without templating the command line. Kafka client settings pass through untouched:
`--kafka-config KEY=VALUE`, `KVS2_KAFKA_CONFIG=k=v,k=v`, or one variable per setting,
`KVS2_KAFKA_SASL_USERNAME` → `sasl.username` (how Secret-referenced credentials arrive).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvs2.authz import Policy, Users
from kvs2.credentials import ServerTls
from kvs2.errors import ConfigError

KAFKA_ENV_PREFIX = "KVS2_KAFKA_"
# Variables with the prefix that are not librdkafka settings (KVS2_KAFKA_VERSION: the test harness's
# choice of broker release, often exported in the environment replicas inherit).
_RESERVED_KAFKA_ENV = {"KVS2_KAFKA_CONFIG", "KVS2_KAFKA_VERSION"}
# The Kafka TLS/SASL files of kvs2.kafka_security are flags, not librdkafka settings.
_RESERVED_KAFKA_ENV |= {
    f"KVS2_KAFKA_{name}_FILE" for name in ("CA", "CERT", "KEY", "SASL_USERNAME", "SASL_PASSWORD")
} | {"KVS2_KAFKA_TLS"}

# Kafka settings kvs2's guarantees rest on: refused from --kafka-config / KVS2_KAFKA_*, with the reason.
PROTECTED_KAFKA_SETTINGS = {
    "acks": "a write is acknowledged only once every in-sync replica has it (acks=all)",
    "request.required.acks": "a write is acknowledged only once every in-sync replica has it (acks=all)",
    "enable.idempotence": "a retried write is never duplicated or reordered (idempotent producer)",
    "partitioner": "every replica and every Kafka client puts a key in the same partition (murmur2_random)",
    "allow.auto.create.topics": "a missing topic is reported, never silently re-created empty",
    "transactional.id": "its producer is not transactional",
    "max.in.flight.requests.per.connection": "a timed-out write is retried alone and never written twice "
    "(one request in flight; see kvs2.kafka_io)",
    # The replica's consumer (kvs2.kafka_io.CONSUMER_GUARANTEES).
    "isolation.level": "a replica never applies records of aborted or open transactions (read_committed)",
    "enable.partition.eof": "a replica learns from end-of-partition events that it has caught up",
    "auto.offset.reset": "a replica whose offsets Kafka no longer holds rebuilds instead of skipping records",
    "enable.auto.commit": "a replica keeps its offsets in LMDB with its data, not in a consumer group",
    "enable.auto.offset.store": "a replica keeps its offsets in LMDB with its data, not in a group",
    "group.id": "a replica reads every partition by assignment and never joins a consumer group",
}

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_MAX_MULTIGET_KEYS = 10_000
# LMDB's compiled-in maximum key size (mdb_env_get_maxkeysize) for py-lmdb's bundled build.
DEFAULT_MAX_KEY_BYTES = 511


@dataclass(frozen=True)
class Limits:
    """Request limits; each one is reported by name and value when a request exceeds it."""

    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    max_multiget_keys: int = DEFAULT_MAX_MULTIGET_KEYS


@dataclass(frozen=True)
class ServeSettings:
    bootstrap_servers: str
    topic: str
    data_dir: Path
    listen: str = DEFAULT_LISTEN
    limits: Limits = field(default_factory=Limits)
    kafka_config: Mapping[str, str] = field(default_factory=dict)
    shutdown_grace: float = 10.0
    # Longest a Set waits for Kafka's acknowledgement when the client gave no deadline.
    default_write_timeout: float = 30.0
    # Seconds before a replica tombstones a conditional record that replay no longer needs (kvs2.conditional).
    cas_cleanup_grace: float = 30.0
    create_topic: bool = False
    partitions: int = 6
    replication_factor: int = 1
    map_size: int = 1 << 34  # 16 GiB of address space; LMDB files are sparse
    log_level: str = "INFO"
    # Server processes for this replica (kvs2.workers): one runs the ingester, all serve on the port.
    workers: int = 1
    # HOST:PORT for Redis-protocol clients (kvs2.redis_server); empty: off.
    redis_listen: str = ""
    # Seconds subtracted from the topic's delete.retention.ms by the resurrection guard (kvs2.guard).
    guard_margin: float = 60.0
    # Peers (HOST:PORT) to ask for a snapshot when this replica has to build (kvs2.bootstrap).
    bootstrap_peers: tuple[str, ...] = ()
    # Snapshots this replica sends at once, and the bandwidth of each (0: unlimited) (kvs2.snapshot).
    snapshot_max_streams: int = 1
    snapshot_max_bytes_per_second: int = 0
    # HOST:PORT of the snapshot data channel (kvs2.datachannel); "": --listen's host, any free port (the
    # port travels in the Snapshot RPC); "off": snapshots' data goes over gRPC.
    snapshot_data_listen: str = ""
    # Bound on the Watch change history in bytes (0: bounded by offsets only) (kvs2.storage).
    history_bytes: int = 1 << 30
    # Observability (kvs2.metrics, kvs2.logs): /metrics on its own HOST:PORT ("" = off); log format;
    # seconds between catch-up progress lines while NOT_SERVING.
    metrics_listen: str = ""
    log_format: str = "text"
    progress_log_interval: float = 10.0
    # gRPC TLS (kvs2.credentials; mutual when it has a client CA), per-subject rights (kvs2.authz), and
    # a plaintext port serving only grpc.health.v1 for probes that cannot speak TLS.
    tls: ServerTls | None = None
    authz: Policy | None = None
    health_listen: str | None = None
    # Users of the Redis port (AUTH), a Secret volume (kvs2.authz.Users). The Redis port takes `tls`
    # (and its client CA) and `authz` too (kvs2.redis_server.RedisFront).
    redis_users: Users | None = None
    # The asyncio event loop (kvs2.eventloop): auto (uvloop when installed), uvloop, or asyncio.
    event_loop: str = "auto"

    def __post_init__(self) -> None:
        mutual = self.tls is not None and self.tls.mutual
        if self.authz is not None and not mutual and self.redis_users is None:
            raise ConfigError(
                "--authz/--authz-file need mutual TLS (a client CA: --tls-client-ca or ca.crt) "
                "or Redis users (--redis-users): identities to give rights to"
            )
        if self.redis_users is not None and not self.redis_listen:
            raise ConfigError("--redis-users needs --redis-listen (the users authenticate on the Redis port)")
        if not self.bootstrap_servers:
            raise ConfigError("--bootstrap-servers (KVS2_BOOTSTRAP_SERVERS) is required")
        if not self.topic:
            raise ConfigError("--topic (KVS2_TOPIC) is required")
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"--listen must be HOST:PORT, got {self.listen!r}")
        if self.redis_listen:
            host, sep, port = self.redis_listen.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"--redis-listen must be HOST:PORT, got {self.redis_listen!r}")
        if self.snapshot_data_listen not in ("", "off") and not _is_host_port(self.snapshot_data_listen):
            raise ConfigError(
                f"--snapshot-data-listen must be HOST:PORT or off, got {self.snapshot_data_listen!r}"
            )
        if self.snapshot_max_streams < 0 or self.snapshot_max_bytes_per_second < 0:
            raise ConfigError(
                "--snapshot-max-streams and --snapshot-max-bytes-per-second must not be negative"
            )
        if self.limits.max_multiget_keys < 1:
            raise ConfigError("--max-multiget-keys must be at least 1")
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if self.event_loop not in ("auto", "uvloop", "asyncio"):
            raise ConfigError(f"--event-loop must be auto, uvloop or asyncio, got {self.event_loop!r}")
        if self.metrics_listen and not _is_host_port(self.metrics_listen):
            raise ConfigError(f"--metrics-listen must be HOST:PORT, got {self.metrics_listen!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format must be text or json, got {self.log_format!r}")
        if self.partitions < 1 or self.replication_factor < 1:
            raise ConfigError("--partitions and --replication-factor must be at least 1")
        check_kafka_config(self.kafka_config)


def check_kafka_config(config: Mapping[str, str]) -> None:
    """Refuse settings that would silently break kvs2's guarantees (issue 8)."""
    for name in sorted(config):
        why = PROTECTED_KAFKA_SETTINGS.get(name.strip().lower())
        if why is not None:
            env = KAFKA_ENV_PREFIX + name.upper().replace(".", "_")
            raise ConfigError(
                f"Kafka setting {name!r} (from --kafka-config, KVS2_KAFKA_CONFIG or {env}) cannot be "
                f"changed: kvs2 sets it so that {why}"
            )


def parse_peers(raw: str) -> tuple[str, ...]:
    """`"a:1, b:2,"` → `("a:1", "b:2")` (--bootstrap-peers)."""
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _is_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit())


def parse_kafka_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """`["a.b=1", "c=2"]` → `{"a.b": "1", "c": "2"}`; a pair without `=` is a ConfigError."""
    out: dict[str, str] = {}
    for pair in pairs:
        pair = pair.strip()
        if not pair:
            continue
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"Kafka setting {pair!r} is not KEY=VALUE")
        out[name.strip()] = value.strip()
    return out


def kafka_config_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """Kafka client settings from the environment: `KVS2_KAFKA_CONFIG` first, then one-per-variable."""
    out = parse_kafka_pairs(env.get("KVS2_KAFKA_CONFIG", "").split(","))
    for name, value in sorted(env.items()):
        if name.startswith(KAFKA_ENV_PREFIX) and name not in _RESERVED_KAFKA_ENV:
            out[name.removeprefix(KAFKA_ENV_PREFIX).lower().replace("_", ".")] = value
    return out
