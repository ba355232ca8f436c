"""Fakes of the operator's two borders (Kafka AdminClient, Kubernetes API) for unit tests.

They model only what the operator observes: topics with partitions, replicas and configs; objects by
(kind, namespace, name) with a status. Integration tests run the same code against the real thing.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from kvs2_operator.errors import KubernetesApiError
from kvs2_operator.kube import Ref


def _done(value: Any = None, error: BaseException | None = None) -> Future[Any]:
    future: Future[Any] = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return future


def kafka_error(code: int) -> KafkaException:
    return KafkaException(KafkaError(code))


_TOPIC_IDS = itertools.count(1)


@dataclass
class FakeTopic:
    partitions: int
    rf: int
    config: dict[str, str]
    #: Kafka gives every topic a new id, also one re-created under the same name.
    topic_id: str = field(default_factory=lambda: f"topic-id-{next(_TOPIC_IDS)}", compare=False)


@dataclass
class FakeAdmin:
    """Quacks like confluent_kafka's AdminClient for the calls the operator makes."""

    topics: dict[str, FakeTopic] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    down: bool = False
    cluster_id: str = "cluster-a"

    def describe_cluster(self, **_: Any) -> Future[Any]:
        self.calls.append("describe cluster")
        if (err := self._fail()) is not None:
            return _done(error=err)
        return _done(SimpleNamespace(cluster_id=self.cluster_id))

    def _fail(self) -> KafkaException | None:
        return kafka_error(KafkaError._TRANSPORT) if self.down else None

    def create_topics(self, new_topics: list[Any], **_: Any) -> dict[str, Future[Any]]:
        result = {}
        for topic in new_topics:
            self.calls.append(f"create {topic.topic}")
            if (err := self._fail()) is not None:
                result[topic.topic] = _done(error=err)
            elif topic.topic in self.topics:
                result[topic.topic] = _done(error=kafka_error(KafkaError.TOPIC_ALREADY_EXISTS))
            else:
                self.topics[topic.topic] = FakeTopic(
                    topic.num_partitions, topic.replication_factor, dict(topic.config)
                )
                result[topic.topic] = _done()
        return result

    def describe_topics(self, topics: Any, **_: Any) -> dict[str, Future[Any]]:
        result = {}
        for name in topics.topic_names:
            self.calls.append(f"describe {name}")
            if (err := self._fail()) is not None:
                result[name] = _done(error=err)
            elif name not in self.topics:
                result[name] = _done(error=kafka_error(KafkaError.UNKNOWN_TOPIC_OR_PART))
            else:
                t = self.topics[name]
                parts = [SimpleNamespace(replicas=list(range(t.rf))) for _ in range(t.partitions)]
                result[name] = _done(SimpleNamespace(partitions=parts, topic_id=t.topic_id))
        return result

    def describe_configs(self, resources: list[Any], **_: Any) -> dict[Any, Future[Any]]:
        result = {}
        for res in resources:
            if (err := self._fail()) is not None:
                result[res] = _done(error=err)
            elif res.name not in self.topics:
                result[res] = _done(error=kafka_error(KafkaError.UNKNOWN_TOPIC_OR_PART))
            else:
                entries = {k: SimpleNamespace(value=v) for k, v in self.topics[res.name].config.items()}
                result[res] = _done(entries)
        return result

    def incremental_alter_configs(self, resources: list[Any], **_: Any) -> dict[Any, Future[Any]]:
        result = {}
        for res in resources:
            self.calls.append(f"alter {res.name}")
            if (err := self._fail()) is not None:
                result[res] = _done(error=err)
                continue
            for entry in res.incremental_configs:
                self.topics[res.name].config[entry.name] = entry.value
            result[res] = _done()
        return result

    def delete_topics(self, topics: list[str], **_: Any) -> dict[str, Future[Any]]:
        result = {}
        for name in topics:
            self.calls.append(f"delete {name}")
            if (err := self._fail()) is not None:
                result[name] = _done(error=err)
            elif self.topics.pop(name, None) is None:
                result[name] = _done(error=kafka_error(KafkaError.UNKNOWN_TOPIC_OR_PART))
            else:
                result[name] = _done()
        return result

    def mutating_calls(self) -> list[str]:
        return [c for c in self.calls if not c.startswith("describe")]


class FakeKube:
    """Objects keyed by (kind, namespace, name); apply merges like a forced server-side apply would."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.status_writes = 0
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        #: Every API call as (verb, kind, name): what a pass costs the API server.
        self.calls: list[tuple[str, str, str]] = []
        self.down = False
        self._uid = itertools.count(1)

    def _check(self, verb: str = "", ref: Ref | None = None) -> None:
        if ref is not None:
            self.calls.append((verb, ref.kind, ref.name or ""))
        if self.down:
            raise KubernetesApiError("Kubernetes API unreachable (fake)")

    @staticmethod
    def _key(ref: Ref) -> tuple[str, str | None, str]:
        return (ref.kind, ref.namespace, ref.name or "")

    def put(self, obj: Mapping[str, Any]) -> None:
        self.objects[self._key(Ref.of(obj))] = copy.deepcopy(dict(obj))

    def gets(self, *kinds: str) -> list[tuple[str, str, str]]:
        """The GETs made so far (of these kinds only, if given)."""
        return [c for c in self.calls if c[0] == "get" and (not kinds or c[1] in kinds)]

    async def get(self, ref: Ref) -> dict[str, Any] | None:
        self._check("get", ref)
        obj = self.objects.get(self._key(ref))
        return copy.deepcopy(obj) if obj is not None else None

    async def list(
        self, ref: Ref, label_selector: str | None = None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        self._check("list", ref)
        return [
            copy.deepcopy(o)
            for (kind, ns, _), o in self.objects.items()
            if kind == ref.kind and (ref.namespace is None or ns == ref.namespace)
        ]

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self._check("apply", Ref.of(obj))
        key = self._key(Ref.of(obj))
        existing = self.objects.get(key)
        stored = copy.deepcopy(dict(obj))
        meta = stored["metadata"]
        if existing is None:
            meta["uid"] = f"child-{next(self._uid)}"
            meta["generation"] = 1
        else:
            meta["uid"] = existing["metadata"]["uid"]
            changed = existing.get("spec") != stored.get("spec")
            meta["generation"] = existing["metadata"]["generation"] + (1 if changed else 0)
            stored["status"] = existing.get("status", {})
        self.objects[key] = stored
        return copy.deepcopy(stored)

    async def delete(self, ref: Ref, propagation: str = "Background") -> bool:
        self._check("delete" if propagation == "Background" else f"delete ({propagation})", ref)
        return self.objects.pop(self._key(ref), None) is not None

    async def patch(self, ref: Ref, body: Mapping[str, Any]) -> dict[str, Any] | None:
        self._check("patch", ref)
        obj = self.objects.get(self._key(ref))
        if obj is None:
            return None
        self.patches.append((ref.kind, ref.name or "", copy.deepcopy(dict(body))))
        for key, value in body.items():
            if isinstance(value, Mapping):
                obj.setdefault(key, {}).update(copy.deepcopy(dict(value)))
            else:
                obj[key] = copy.deepcopy(value)
        return copy.deepcopy(obj)

    async def patch_status(self, ref: Ref, status_body: Mapping[str, Any]) -> dict[str, Any]:
        self._check("patch status", ref)
        obj = self.objects[self._key(ref)]
        obj["status"] = {**obj.get("status", {}), **copy.deepcopy(dict(status_body))}
        self.status_writes += 1
        return copy.deepcopy(obj)

    async def create(self, ref: Ref, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check("create", ref)
        return dict(body)

    async def post_event(self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str) -> None:
        self.events.append({"type": type_, "reason": reason, "message": message})
