"""A typed, validated view of a KeyValueStore object.

Why it exists although the CRD has a schema: the operator must not trust that the installed CRD is the
one in this repository (an older CRD, a `kubectl replace` with validation off), so it parses the spec
itself, applies the same defaults, and turns what it cannot accept into `SpecError` (reason
InvalidSpec) with a message that names the field. Everything after this module works on frozen
dataclasses, never on raw dicts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvs2_operator.crd import GROUP, GRPC_PORT, KIND, VERSION
from kvs2_operator.errors import SpecError
from kvs2_operator.grpc_tls import GrpcTls, parse_grpc_tls
from kvs2_operator.kafka_security import KafkaSasl, KafkaTls, check_client_config, parse_sasl, parse_tls
from kvs2_operator.protection import NetworkPolicySpec, parse_network_policy

DEFAULT_PARTITIONS = 3
DEFAULT_REPLICATION_FACTOR = 3
DEFAULT_STORAGE_SIZE = "1Gi"
DEFAULT_SHUTDOWN_GRACE = 10
#: A Kubernetes resource quantity (the API server's own regular expression, as the CRD uses it).
QUANTITY_RE = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
TOPIC_NAME_RE = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SECURITY_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
DELETION_POLICIES = ("Retain", "Delete")
DEFAULT_REDIS_PORT = 6379
#: The group the image's `kvs2` user belongs to (Dockerfile); volumes are made writable for it.
IMAGE_GID = 65532
#: Requests given to a data-plane container whose spec sets no resources, so pods are never BestEffort.
DEFAULT_RESOURCES: Mapping[str, Any] = {"requests": {"cpu": "100m", "memory": "256Mi"}}
#: librdkafka settings the data plane owns: overriding them would break the store's guarantees (ordering,
#: durability, exactly-once production, key→partition mapping) or bypass spec.kafka.authentication.
RESERVED_CLIENT_CONFIG = (
    "bootstrap.servers",
    "metadata.broker.list",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "partitioner",
    "allow.auto.create.topics",
    "transactional.id",
    "max.in.flight.requests.per.connection",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
)
RESERVED_CLIENT_CONFIG_PREFIXES = ("sasl.",)
PVC_RETENTION_POLICIES = ("Delete", "Retain")


@dataclass(frozen=True)
class OperatorDefaults:
    """What the operator fills in where a spec is silent (its flags; see main.py)."""

    #: The data-plane image matching the operator's own version (`--default-image`).
    image: str | None = None
    #: fsGroup of data-plane pods; None where the platform assigns one (OpenShift restricted-v2).
    fs_group: int | None = IMAGE_GID
    #: The operator's own namespace (env POD_NAMESPACE): a store's NetworkPolicy admits it to the metrics
    #: port, where the operator reads each pod's phase and lag (kvs2_operator.replicas).
    operator_namespace: str | None = None


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str]
    name_defaulted: bool

    def min_insync_replicas(self) -> int:
        """`min.insync.replicas`: an explicit config wins, else min(2, rf - 1), at least 1.

        rf=1 → 1 (nothing else is possible), rf=2 → 1 (one broker may be down for maintenance),
        rf=3 → 2 (an acknowledged write survives the loss of any one broker).
        """
        explicit = self.config.get("min.insync.replicas")
        if explicit is not None:
            return int(explicit)
        return max(1, min(2, self.replication_factor - 1))

    def desired_config(self) -> dict[str, str]:
        """The topic configs the operator creates and keeps: the user's, plus compaction and min ISR."""
        config = dict(self.config)
        config["cleanup.policy"] = "compact"
        config["min.insync.replicas"] = str(self.min_insync_replicas())
        return config


@dataclass(frozen=True)
class Authentication:
    secret_name: str
    mechanism: str
    security_protocol: str
    username_key: str
    password_key: str


@dataclass(frozen=True)
class KafkaSpec:
    bootstrap_servers: str
    topic: TopicSpec
    client_config: Mapping[str, str]
    authentication: Authentication | None
    # Kafka TLS and file-mounted SASL (kvs2_operator.kafka_security).
    tls: KafkaTls | None = None
    sasl: KafkaSasl | None = None


@dataclass(frozen=True)
class StorageSpec:
    size: str
    storage_class_name: str | None
    ephemeral: bool


@dataclass(frozen=True)
class PdbSpec:
    enabled: bool
    max_unavailable: int | str | None
    min_available: int | str | None


@dataclass(frozen=True)
class RedisSpec:
    """spec.redis: the Redis-protocol port of the data plane (`kvs2 serve --redis-listen`); off unless
    enabled. With spec.tls it speaks TLS with the same certificate (and client CA); `users_secret` requires
    AUTH (kvs2_operator.grpc_tls.redis_users_parts)."""

    enabled: bool = False
    port: int = DEFAULT_REDIS_PORT
    users_secret: str | None = None


@dataclass(frozen=True)
class PodTemplate:
    """Scheduling and identity knobs copied into the data-plane pod template as given."""

    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    #: None: the default (spread across zones and nodes, soft).
    topology_spread_constraints: tuple[Mapping[str, Any], ...] | None = None
    priority_class_name: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    service_account_name: str | None = None


@dataclass(frozen=True)
class StoreSpec:
    replicas: int
    image: str
    image_pull_policy: str
    log_level: str
    shutdown_grace_seconds: int
    workers: int
    kafka: KafkaSpec
    storage: StorageSpec
    resources: Mapping[str, Any]
    pdb: PdbSpec
    topic_deletion_policy: str
    redis: RedisSpec = field(default_factory=RedisSpec)
    pod: PodTemplate = field(default_factory=PodTemplate)
    fs_group: int | None = IMAGE_GID
    #: What happens to a replica's PVC when the store scales down (the StatefulSet's whenScaled).
    pvc_retention_on_scale_down: str = "Delete"
    # gRPC TLS, mTLS and per-subject rights (kvs2_operator.grpc_tls).
    tls: GrpcTls | None = None
    # A NetworkPolicy admitting peers and the given clients (kvs2_operator.protection).
    network_policy: NetworkPolicySpec | None = None


@dataclass(frozen=True)
class StoreRef:
    """The identity of one KeyValueStore: always parseable, so a status can be written even for a bad spec."""

    namespace: str
    name: str
    uid: str
    generation: int

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class Store:
    """One KeyValueStore: its identity, its parsed spec and the status it had when read."""

    ref: StoreRef
    spec: StoreSpec
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.ref.namespace

    @property
    def name(self) -> str:
        return self.ref.name


def default_topic_name(namespace: str, name: str) -> str:
    """`<namespace>.<name>`: unique per store, because a namespace name never contains a dot."""
    return f"{namespace}.{name}"


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path} must be an object, got {type(value).__name__}")
    return value


def _int(value: Any, path: str, *, default: int, minimum: int, maximum: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path} must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise SpecError(f"{path} must be between {minimum} and {maximum}, got {value}")
    return value


def _str(value: Any, path: str, *, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
    if value is None:
        if default is None:
            raise SpecError(f"{path} is required")
        return default
    if not isinstance(value, str) or not value:
        raise SpecError(f"{path} must be a non-empty string, got {value!r}")
    if choices and value not in choices:
        raise SpecError(f"{path} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _str_map(value: Any, path: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, item in _obj(value, path).items():
        if not isinstance(item, str):
            raise SpecError(f"{path}.{key} must be a string (quote numbers in YAML), got {item!r}")
        result[str(key)] = item
    return result


def _int_or_percent(value: Any, path: str) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]+%", value):
        return value
    raise SpecError(f"{path} must be a non-negative integer or a percentage such as '50%', got {value!r}")


def parse_topic(raw: Mapping[str, Any], namespace: str, name: str) -> TopicSpec:
    topic_name = raw.get("name")
    defaulted = topic_name is None
    if defaulted:
        topic_name = default_topic_name(namespace, name)
    topic_name = _str(topic_name, "spec.kafka.topic.name")
    if not TOPIC_NAME_RE.match(topic_name) or topic_name in (".", ".."):
        hint = " (the default <namespace>.<name> is too long: set spec.kafka.topic.name)" if defaulted else ""
        raise SpecError(
            f"spec.kafka.topic.name {topic_name!r} is not a legal Kafka topic name: "
            f"1-249 characters of [a-zA-Z0-9._-], not '.' or '..'{hint}"
        )
    rf = _int(
        raw.get("replicationFactor"),
        "spec.kafka.topic.replicationFactor",
        default=DEFAULT_REPLICATION_FACTOR,
        minimum=1,
        maximum=32767,
    )
    config = _str_map(raw.get("config"), "spec.kafka.topic.config")
    policy = config.get("cleanup.policy")
    if policy is not None and policy != "compact":
        raise SpecError(
            f"spec.kafka.topic.config cleanup.policy must be 'compact' (got {policy!r}): "
            "the topic is the store's only durable copy, deletion-based retention would lose keys"
        )
    min_isr = config.get("min.insync.replicas")
    if min_isr is not None and (not min_isr.isdigit() or not 1 <= int(min_isr) <= rf):
        raise SpecError(
            f"spec.kafka.topic.config min.insync.replicas must be an integer between 1 and the "
            f"replication factor {rf}, got {min_isr!r}"
        )
    return TopicSpec(
        name=topic_name,
        partitions=_int(
            raw.get("partitions"),
            "spec.kafka.topic.partitions",
            default=DEFAULT_PARTITIONS,
            minimum=1,
            maximum=100000,
        ),
        replication_factor=rf,
        config=config,
        name_defaulted=defaulted,
    )


def _parse_auth(raw: Any) -> Authentication | None:
    if raw is None:
        return None
    auth = _obj(raw, "spec.kafka.authentication")
    return Authentication(
        secret_name=_str(auth.get("secretName"), "spec.kafka.authentication.secretName"),
        mechanism=_str(
            auth.get("mechanism"),
            "spec.kafka.authentication.mechanism",
            default="SCRAM-SHA-512",
            choices=SASL_MECHANISMS,
        ),
        security_protocol=_str(
            auth.get("securityProtocol"),
            "spec.kafka.authentication.securityProtocol",
            default="SASL_SSL",
            choices=SECURITY_PROTOCOLS,
        ),
        username_key=_str(
            auth.get("usernameKey"), "spec.kafka.authentication.usernameKey", default="username"
        ),
        password_key=_str(
            auth.get("passwordKey"), "spec.kafka.authentication.passwordKey", default="password"
        ),
    )


def _parse_security(kafka: Mapping[str, Any], client_config: Mapping[str, str]) -> dict[str, Any]:
    tls, sasl = parse_tls(kafka.get("tls")), parse_sasl(kafka.get("sasl"))
    if sasl is not None and kafka.get("authentication") is not None:
        raise SpecError("spec.kafka: give sasl (credentials as files) or authentication, not both")
    check_client_config(client_config, tls, sasl)
    return {"tls": tls, "sasl": sasl}


def _list_of_objects(value: Any, path: str) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise SpecError(f"{path} must be a list of objects")
    return tuple(dict(item) for item in value)


def _parse_pod(raw: Any) -> PodTemplate:
    pod = _obj(raw, "spec.pod")
    pull_secrets = []
    for i, item in enumerate(_list_of_objects(pod.get("imagePullSecrets"), "spec.pod.imagePullSecrets")):
        pull_secrets.append(_str(item.get("name"), f"spec.pod.imagePullSecrets[{i}].name"))
    spread = pod.get("topologySpreadConstraints")
    affinity = pod.get("affinity")
    priority = pod.get("priorityClassName")
    account = pod.get("serviceAccountName")
    return PodTemplate(
        labels=_str_map(pod.get("labels"), "spec.pod.labels"),
        annotations=_str_map(pod.get("annotations"), "spec.pod.annotations"),
        node_selector=_str_map(pod.get("nodeSelector"), "spec.pod.nodeSelector"),
        tolerations=_list_of_objects(pod.get("tolerations"), "spec.pod.tolerations"),
        affinity=dict(_obj(affinity, "spec.pod.affinity")) if affinity is not None else None,
        topology_spread_constraints=(
            _list_of_objects(spread, "spec.pod.topologySpreadConstraints") if spread is not None else None
        ),
        priority_class_name=_str(priority, "spec.pod.priorityClassName") if priority is not None else None,
        image_pull_secrets=tuple(pull_secrets),
        service_account_name=_str(account, "spec.pod.serviceAccountName") if account is not None else None,
    )


def parse_spec(
    raw_spec: Mapping[str, Any], namespace: str, name: str, defaults: OperatorDefaults | None = None
) -> StoreSpec:
    defaults = defaults or OperatorDefaults()
    spec = _obj(raw_spec, "spec")
    kafka = _obj(spec.get("kafka"), "spec.kafka")
    if not kafka:
        raise SpecError("spec.kafka is required (at least spec.kafka.bootstrapServers)")
    client_config = _str_map(kafka.get("clientConfig"), "spec.kafka.clientConfig")
    for key, value in client_config.items():
        if "," in key or "=" in key or "," in value:
            raise SpecError(
                f"spec.kafka.clientConfig {key!r}: keys must not contain ',' or '=', "
                "values must not contain ','"
            )
        if key in RESERVED_CLIENT_CONFIG or key.startswith(RESERVED_CLIENT_CONFIG_PREFIXES):
            raise SpecError(
                f"spec.kafka.clientConfig {key!r} is set by the operator and cannot be overridden "
                "(bootstrap servers, acks, idempotence and the partitioner keep the store's guarantees; "
                "credentials go in spec.kafka.authentication)"
            )
    storage = _obj(spec.get("storage"), "spec.storage")
    size = storage.get("size", DEFAULT_STORAGE_SIZE)
    if isinstance(size, bool) or not isinstance(size, int | str):
        raise SpecError(f"spec.storage.size must be a quantity such as '1Gi', got {size!r}")
    storage_class = storage.get("storageClassName")
    if storage_class is not None:
        storage_class = _str(storage_class, "spec.storage.storageClassName")
    pdb = _obj(spec.get("podDisruptionBudget"), "spec.podDisruptionBudget")
    max_unavailable = _int_or_percent(pdb.get("maxUnavailable"), "spec.podDisruptionBudget.maxUnavailable")
    min_available = _int_or_percent(pdb.get("minAvailable"), "spec.podDisruptionBudget.minAvailable")
    if max_unavailable is not None and min_available is not None:
        raise SpecError("spec.podDisruptionBudget: set maxUnavailable or minAvailable, not both")
    return StoreSpec(
        replicas=_int(spec.get("replicas"), "spec.replicas", default=1, minimum=0, maximum=1000),
        image=_image(spec.get("image"), defaults),
        image_pull_policy=_str(
            spec.get("imagePullPolicy"), "spec.imagePullPolicy", default="IfNotPresent", choices=PULL_POLICIES
        ),
        log_level=_str(spec.get("logLevel"), "spec.logLevel", default="INFO", choices=LOG_LEVELS),
        workers=_int(spec.get("workers"), "spec.workers", default=1, minimum=1, maximum=64),
        shutdown_grace_seconds=_int(
            spec.get("shutdownGraceSeconds"),
            "spec.shutdownGraceSeconds",
            default=DEFAULT_SHUTDOWN_GRACE,
            minimum=1,
            maximum=600,
        ),
        kafka=KafkaSpec(
            bootstrap_servers=_str(kafka.get("bootstrapServers"), "spec.kafka.bootstrapServers"),
            topic=parse_topic(_obj(kafka.get("topic"), "spec.kafka.topic"), namespace, name),
            client_config=client_config,
            authentication=_parse_auth(kafka.get("authentication")),
            **_parse_security(kafka, client_config),
        ),
        storage=StorageSpec(
            size=str(size),
            storage_class_name=storage_class,
            ephemeral=bool(storage.get("ephemeral", False)),
        ),
        resources=_resources(spec.get("resources")),
        pdb=PdbSpec(
            enabled=bool(pdb.get("enabled", True)),
            max_unavailable=max_unavailable,
            min_available=min_available,
        ),
        topic_deletion_policy=_str(
            spec.get("topicDeletionPolicy"),
            "spec.topicDeletionPolicy",
            default="Retain",
            choices=DELETION_POLICIES,
        ),
        redis=_parse_redis(spec.get("redis")),
        pod=_parse_pod(spec.get("pod")),
        fs_group=defaults.fs_group,
        pvc_retention_on_scale_down=_str(
            storage.get("retentionOnScaleDown"),
            "spec.storage.retentionOnScaleDown",
            default="Delete",
            choices=PVC_RETENTION_POLICIES,
        ),
        tls=parse_grpc_tls(spec.get("tls")),
        network_policy=parse_network_policy(spec.get("networkPolicy"), defaults.operator_namespace),
    )


def _resources(raw: Any) -> dict[str, Any]:
    resources = dict(_obj(raw, "spec.resources"))
    for section in ("requests", "limits"):
        for key, value in _obj(resources.get(section), f"spec.resources.{section}").items():
            text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
            if not isinstance(text, str) or not QUANTITY_RE.match(text) or text.startswith("-"):
                raise SpecError(
                    f"spec.resources.{section}.{key} must be a non-negative quantity such as '250m' or "
                    f"'1Gi', got {value!r}"
                )
    return resources


def _image(value: Any, defaults: OperatorDefaults) -> str:
    if value is None and defaults.image:
        return defaults.image
    if value is None:
        raise SpecError(
            "spec.image is required: this operator has no default data-plane image (--default-image)"
        )
    return _str(value, "spec.image")


def _parse_redis(raw: Any) -> RedisSpec:
    redis = _obj(raw, "spec.redis")
    enabled = redis.get("enabled", False)
    if not isinstance(enabled, bool):
        raise SpecError(f"spec.redis.enabled must be true or false, got {enabled!r}")
    port = _int(redis.get("port"), "spec.redis.port", default=DEFAULT_REDIS_PORT, minimum=1, maximum=65535)
    if port == GRPC_PORT:
        raise SpecError(f"spec.redis.port must differ from the gRPC port {GRPC_PORT}")
    users = redis.get("usersSecret")
    if users is not None and (not isinstance(users, str) or not users):
        raise SpecError(f"spec.redis.usersSecret must be a Secret name, got {users!r}")
    return RedisSpec(enabled=enabled, port=port, users_secret=users)


def parse_ref(body: Mapping[str, Any]) -> StoreRef:
    meta = _obj(body.get("metadata"), "metadata")
    return StoreRef(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 0)),
    )


def parse_store(body: Mapping[str, Any], defaults: OperatorDefaults | None = None) -> Store:
    """Identity first (see `parse_ref`), then the spec, which may raise SpecError."""
    ref = parse_ref(body)
    return Store(
        ref=ref,
        spec=parse_spec(_obj(body.get("spec"), "spec"), ref.namespace, ref.name, defaults),
        status=dict(_obj(body.get("status"), "status")),
    )
