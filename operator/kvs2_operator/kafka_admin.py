"""The operator's Kafka border: describe, create, adopt, keep the config of, and delete a store's topic.

Two layers, for testability:
- pure decisions (`check_compatible`, `config_changes`) that say whether an existing topic may serve
  a spec, and what config must change — unit-tested without Kafka;
- `TopicAdmin`, which runs confluent_kafka's blocking AdminClient calls in a worker thread
  (`asyncio.to_thread`) and maps `KafkaException` to this package's errors — here and nowhere else.

Partition count and replication factor are never changed by the operator. A different partition
count would move keys between partitions and break per-key order (revisions, compare-and-set); a
replication-factor change is a partition reassignment, a job for Kafka's own tools.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported, not in __all__
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

# One record of librdkafka's latest TLS/SASL failure for both the data plane and the operator (the same
# distribution ships both packages).
from kvs2.kafka_security import ConnectionProblems

from kvs2_operator import metrics
from kvs2_operator.errors import (
    KafkaClusterChangedError,
    KafkaRejectedError,
    KafkaUnavailableError,
    NotSupportedError,
    TopicIncompatibleError,
    TopicLostError,
)
from kvs2_operator.model import TopicSpec
from kvs2_operator.ownership import Claim, Ownership

log = logging.getLogger(__name__)

#: Seconds one admin request may take before the broker counts as unavailable.
REQUEST_TIMEOUT = 10.0
#: How long to wait for a topic we just created to show up in the metadata.
VISIBILITY_POLLS = 25
VISIBILITY_POLL_SECONDS = 0.2

_UNAVAILABLE_CODES = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._WAIT_COORD,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_CONTROLLER,
    }
)


# TLS/SASL failures of a connection: named in the messages of the timeouts they cause.
_CONNECTION_SECURITY = frozenset(
    {KafkaError._SSL, KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
)


@dataclass(frozen=True)
class TopicState:
    """What Kafka says about a topic."""

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)
    #: Kafka's topic id (base64, as Kafka's tools print it): a re-created topic of the same name has another.
    topic_id: str = ""


@dataclass(frozen=True)
class EnsureResult:
    created: bool
    state: TopicState
    changed_config: Mapping[str, str]
    #: What the store owns now (recorded in its status).
    claim: Claim


# Set on a topic the operator creates (the spec's config wins), never forced onto one it adopts:
# `min.compaction.lag.ms` keeps Kafka's cleaner off the newest minute of records, so a replica's Watch
# tells another producer's transaction marker from a compaction gap (kvs2.ingest) instead of cutting
# the change history (OUT_OF_RANGE) at every marker. `kvs2 serve --create-topic` sets the same.
CREATION_DEFAULTS = {"min.compaction.lag.ms": "60000"}


class AdminLike(Protocol):
    """The part of confluent_kafka's AdminClient the operator uses (a fake implements it in tests)."""

    def create_topics(self, new_topics: list[Any], **kwargs: Any) -> dict[str, Future[Any]]: ...
    def describe_topics(self, topics: Any, **kwargs: Any) -> dict[str, Future[Any]]: ...
    def describe_configs(self, resources: list[Any], **kwargs: Any) -> dict[Any, Future[Any]]: ...
    def describe_cluster(self, **kwargs: Any) -> Future[Any]: ...
    def incremental_alter_configs(self, resources: list[Any], **kwargs: Any) -> dict[Any, Future[Any]]: ...
    def delete_topics(self, topics: list[str], **kwargs: Any) -> dict[str, Future[Any]]: ...


# --- pure decisions -------------------------------------------------------------------------------------


def check_compatible(desired: TopicSpec, actual: TopicState, *, owned: bool) -> None:
    """Raise if `actual` cannot serve `desired`.

    `owned`: the store already created or adopted this topic (status.topic names it). Then a mismatch
    means the *spec* changed → NotSupported. Otherwise the topic belongs to someone else and does not
    fit → TopicIncompatible. Either way Kafka is left untouched.
    """
    problems: list[str] = []
    if actual.partitions != desired.partitions:
        problems.append(
            f"it has {actual.partitions} partitions and spec.kafka.topic.partitions is {desired.partitions}; "
            "changing the partition count would move keys between partitions and break per-key order"
        )
    if actual.replication_factor != desired.replication_factor:
        problems.append(
            f"its replication factor is {actual.replication_factor} and spec.kafka.topic.replicationFactor "
            f"is {desired.replication_factor}; the operator does not reassign replicas (use Kafka's "
            "partition reassignment, then set the spec to match)"
        )
    if owned and problems:
        raise NotSupportedError(
            f"topic {desired.name}: {'; '.join(problems)}. Kafka was left unchanged; set the spec back to "
            "match the topic, or create a new store"
        )
    policy = actual.config.get("cleanup.policy", "")
    if not owned and policy != "compact":
        problems.append(
            f"its cleanup.policy is {policy or 'unknown'!r}, a store needs 'compact' (deletion-based "
            "retention would drop keys)"
        )
    if problems:
        raise TopicIncompatibleError(
            f"topic {desired.name} already exists and cannot be adopted: {'; '.join(problems)}. "
            "Kafka was left unchanged"
        )


def config_changes(desired: TopicSpec, actual: TopicState) -> dict[str, str]:
    """The topic configs whose value differs from what the store wants (only keys the store manages)."""
    return {k: v for k, v in desired.desired_config().items() if actual.config.get(k) != v}


# --- the border -----------------------------------------------------------------------------------------


def _map_error(exc: BaseException, action: str) -> Exception:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err: KafkaError = exc.args[0]
        text = f"{action}: {err.str()} ({err.name()})"
        if err.code() in _UNAVAILABLE_CODES or err.retriable():
            return KafkaUnavailableError(f"Kafka unavailable — {text}")
        return KafkaRejectedError(f"Kafka refused — {text}")
    if isinstance(exc, TimeoutError):
        return KafkaUnavailableError(f"Kafka unavailable — {action}: no answer in {REQUEST_TIMEOUT:.0f}s")
    return KafkaRejectedError(f"{action}: {exc}")


def _error_code(exc: BaseException) -> Any:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].code()
    return None


def default_admin_factory(config: Mapping[str, str]) -> AdminLike:
    settings: dict[str, Any] = {
        "socket.connection.setup.timeout.ms": 5000,
        "reconnect.backoff.max.ms": 2000,
        "log.connection.close": False,
        # Only critical librdkafka logs on stderr: a down broker would otherwise log a refused
        # connection every second. Failures still surface, mapped, in the status message and our log.
        "log_level": 2,
        **config,
    }
    try:
        admin: AdminLike = AdminClient(settings)
    except KafkaException as exc:
        raise _map_error(exc, "configuring the Kafka admin client") from exc
    return admin


class TopicAdmin:
    """Topic operations for one Kafka cluster (one AdminClient, reused across passes)."""

    def __init__(
        self,
        config: Mapping[str, str],
        *,
        admin_factory: Callable[[Mapping[str, str]], AdminLike] = default_admin_factory,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._config = dict(config)
        self._factory = admin_factory
        self._admin: AdminLike | None = None
        self.timeout = timeout
        self._problems = ConnectionProblems()

    def _client(self) -> AdminLike:
        if self._admin is None:
            settings: dict[str, Any] = {**self._config, "error_cb": self._note_error}
            self._admin = self._factory(settings)
        return self._admin

    def close(self) -> None:
        """Let the client go. confluent-kafka's AdminClient has no close(): librdkafka's handle (its
        connections and threads) is destroyed when the last reference goes; a call still in flight in a
        worker thread holds its own and finishes first. A client that does have close() gets it called."""
        admin, self._admin = self._admin, None
        closer = getattr(admin, "close", None)
        if callable(closer):
            closer()

    def _note_error(self, err: KafkaError) -> None:
        if err.code() in _CONNECTION_SECURITY:
            self._problems.note(err.str())

    def _wait(self, future: Future[Any]) -> Any:
        # The request carries its own timeout; the extra margin only guards against a lost callback.
        try:
            return future.result(timeout=self.timeout + 5)
        except KafkaException as exc:
            poll = getattr(self._admin, "poll", None)
            if poll is not None:
                poll(0)  # serve the error callbacks queued while the request waited
            hint = self._problems.hint()
            if not hint or not exc.args or not isinstance(exc.args[0], KafkaError):
                raise
            err: KafkaError = exc.args[0]
            raise KafkaException(KafkaError(err.code(), err.str() + hint, retriable=err.retriable())) from exc

    # Each *_sync runs in a worker thread.

    def _describe_sync(self, name: str) -> TopicState | None:
        admin = self._client()
        try:
            description = self._wait(
                admin.describe_topics(TopicCollection([name]), request_timeout=self.timeout)[name]
            )
        except Exception as exc:
            if _error_code(exc) in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                return None
            raise _map_error(exc, f"describing topic {name}") from exc
        partitions = list(description.partitions)
        resource = ConfigResource(ResourceType.TOPIC, name)
        try:
            entries = self._wait(admin.describe_configs([resource], request_timeout=self.timeout)[resource])
        except Exception as exc:
            if _error_code(exc) in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                return None  # deleted between the two calls
            raise _map_error(exc, f"reading the config of topic {name}") from exc
        return TopicState(
            name=name,
            partitions=len(partitions),
            replication_factor=max((len(p.replicas) for p in partitions), default=0),
            config={key: entry.value for key, entry in entries.items() if entry.value is not None},
            topic_id=str(getattr(description, "topic_id", "") or ""),
        )

    def _cluster_id_sync(self) -> str:
        try:
            result = self._wait(self._client().describe_cluster(request_timeout=self.timeout))
        except Exception as exc:
            raise _map_error(exc, "describing the Kafka cluster") from exc
        cluster_id = str(getattr(result, "cluster_id", "") or "")
        if not cluster_id:
            raise KafkaRejectedError(
                "Kafka did not report a cluster id (DescribeCluster); the broker is too old"
            )
        return cluster_id

    def _create_sync(self, spec: TopicSpec) -> bool:
        topic = NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            config={**CREATION_DEFAULTS, **spec.desired_config()},
        )
        try:
            self._wait(self._client().create_topics([topic], request_timeout=self.timeout)[spec.name])
        except Exception as exc:
            if _error_code(exc) == KafkaError.TOPIC_ALREADY_EXISTS:
                return False  # someone (or an earlier, timed-out attempt of ours) was faster
            raise _map_error(exc, f"creating topic {spec.name}") from exc
        return True

    def _alter_sync(self, name: str, changes: Mapping[str, str]) -> None:
        entries = [
            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
            for key, value in sorted(changes.items())
        ]
        resource = ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries)
        try:
            self._wait(
                self._client().incremental_alter_configs([resource], request_timeout=self.timeout)[resource]
            )
        except Exception as exc:
            raise _map_error(exc, f"updating the config of topic {name}") from exc

    def _delete_sync(self, name: str) -> bool:
        try:
            self._wait(self._client().delete_topics([name], request_timeout=self.timeout)[name])
        except Exception as exc:
            if _error_code(exc) in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                return False
            raise _map_error(exc, f"deleting topic {name}") from exc
        return True

    # The async API.

    @metrics.kafka_call("describe")
    async def describe(self, name: str) -> TopicState | None:
        return await asyncio.to_thread(self._describe_sync, name)

    @metrics.kafka_call("delete")
    async def delete(self, name: str) -> bool:
        return await asyncio.to_thread(self._delete_sync, name)

    @metrics.kafka_call("cluster_id")
    async def cluster_id(self) -> str:
        """The id of the Kafka cluster these bootstrap servers reach (it survives broker restarts)."""
        return await asyncio.to_thread(self._cluster_id_sync)

    @metrics.kafka_call("ensure")
    async def ensure(
        self, spec: TopicSpec, *, claim: Claim | None = None, cluster_id: str | None = None
    ) -> EnsureResult:
        """Keep the claimed topic in line, or (no claim yet) create the topic or adopt a compatible one.

        With a claim, nothing on Kafka is created or changed unless the topic is provably the claimed one
        (same cluster id, same topic id): a topic that vanished or was replaced is `TopicLost`, another
        cluster is `KafkaClusterChanged`. Neither is "repaired" — that would hand the store an empty
        topic, or force compaction onto someone else's.
        """
        cluster = cluster_id if cluster_id is not None else await self.cluster_id()
        if claim is not None:
            return await self._ensure_claimed(spec, claim, cluster)
        state = await self.describe(spec.name)
        created = False
        if state is None:
            created = await asyncio.to_thread(self._create_sync, spec)
            # A new topic reaches the metadata of the broker we ask a moment after CreateTopics returns.
            for _ in range(VISIBILITY_POLLS):
                state = await self.describe(spec.name)
                if state is not None:
                    break
                await asyncio.sleep(VISIBILITY_POLL_SECONDS)
            if state is None:
                raise KafkaUnavailableError(
                    f"topic {spec.name} was created but is not visible in the metadata after "
                    f"{VISIBILITY_POLLS * VISIBILITY_POLL_SECONDS:.0f}s"
                )
            if created:
                log.info(
                    "created topic %s (%d partitions, rf %d, id %s)",
                    spec.name,
                    spec.partitions,
                    spec.replication_factor,
                    state.topic_id,
                )
        check_compatible(spec, state, owned=created)
        state, changes = await self._align_config(spec, state)
        ownership = Ownership.CREATED if created else Ownership.ADOPTED
        new_claim = Claim(spec.name, cluster, state.topic_id, ownership)
        return EnsureResult(created=created, state=state, changed_config=changes, claim=new_claim)

    async def _ensure_claimed(self, spec: TopicSpec, claim: Claim, cluster: str) -> EnsureResult:
        if cluster != claim.cluster_id:
            raise KafkaClusterChangedError(
                f"spec.kafka.bootstrapServers now reaches Kafka cluster {cluster}, but {claim.describe()}. "
                "Nothing was created or changed on either cluster: set bootstrapServers back, or create a "
                "new store for the other cluster"
            )
        state = await self.describe(spec.name)
        if state is None:
            raise TopicLostError(
                f"{claim.describe()} no longer exists. The operator does not re-create it empty (the "
                "store's data was in it); to start over with an empty topic, delete and re-create the store"
            )
        if state.topic_id != claim.topic_id:
            raise TopicLostError(
                f"{claim.describe()} is gone: topic {spec.name} there now is a different topic (id "
                f"{state.topic_id}), created by someone else; it is left untouched. To use it, delete and "
                "re-create the store (it is then adopted if compatible)"
            )
        check_compatible(spec, state, owned=True)
        state, changes = await self._align_config(spec, state)
        return EnsureResult(created=False, state=state, changed_config=changes, claim=claim)

    async def _align_config(self, spec: TopicSpec, state: TopicState) -> tuple[TopicState, dict[str, str]]:
        changes = config_changes(spec, state)
        if changes:
            await asyncio.to_thread(self._alter_sync, spec.name, changes)
            log.info("topic %s: config set %s", spec.name, changes)
            state = TopicState(
                state.name,
                state.partitions,
                state.replication_factor,
                {**state.config, **changes},
                state.topic_id,
            )
        return state, changes


class TopicAdmins:
    """One `TopicAdmin` per distinct client config (cluster + credentials), reused across passes.

    Each store (its uid) uses one config at a time; an admin client no store uses any more — the store
    was deleted, or its bootstrap servers or credentials changed — is closed at once, and `close()`
    closes every one at shutdown. A client serves the stores of one Kafka cluster, not one store each.
    """

    def __init__(
        self, admin_factory: Callable[[Mapping[str, str]], AdminLike] = default_admin_factory
    ) -> None:
        self._factory = admin_factory
        self._admins: dict[frozenset[tuple[str, str]], TopicAdmin] = {}
        self._users: dict[str, frozenset[tuple[str, str]]] = {}

    def for_config(self, config: Mapping[str, str], user: str | None = None) -> TopicAdmin:
        """The admin for `config`; `user` (a store's uid) is counted as using it until it uses another
        config or is `release`d. An admin without users is still reused until the next eviction."""
        key = frozenset(config.items())
        admin = self._admins.get(key)
        if admin is None:
            if len(self._admins) >= 64:  # bootstrap servers or credentials churn: do not grow forever
                self._evict(lambda _: True)
            admin = self._admins[key] = TopicAdmin(config, admin_factory=self._factory)
        if user is not None:
            previous = self._users.get(user)
            self._users[user] = key
            if previous is not None and previous != key:
                self._evict_unused(previous)
        return admin

    def release(self, user: str) -> None:
        """The store `user` is gone: close its admin client unless another store uses it."""
        key = self._users.pop(user, None)
        if key is not None:
            self._evict_unused(key)

    def close(self) -> None:
        """Close every admin client (operator shutdown)."""
        self._users.clear()
        self._evict(lambda _: True)

    def _evict_unused(self, key: frozenset[tuple[str, str]]) -> None:
        if key not in self._users.values():
            self._evict(lambda candidate: candidate == key)

    def _evict(self, which: Callable[[frozenset[tuple[str, str]]], bool]) -> None:
        for key in [k for k in self._admins if which(k)]:
            self._admins.pop(key).close()
        self._users = {user: key for user, key in self._users.items() if key in self._admins}

    def __len__(self) -> int:
        return len(self._admins)
