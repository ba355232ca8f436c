"""Cached Kafka admin clients are closed when no store uses them any more, and all of them at shutdown."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from kvs2_operator.kafka_admin import TopicAdmins
from kvs2_operator.kube import KubeApi
from kvs2_operator.model import parse_ref
from kvs2_operator.reconcile import Deps, reconcile

from .fakes import FakeAdmin, FakeKube


@dataclass
class ClosableAdmin(FakeAdmin):
    """A FakeAdmin that records close() (confluent-kafka's has none; TopicAdmin calls one if present)."""

    closed: bool = False


@dataclass
class Factory:
    made: dict[str, list[ClosableAdmin]] = field(default_factory=dict)

    def __call__(self, config: Any) -> ClosableAdmin:
        admin = ClosableAdmin()
        admin.close = lambda: setattr(admin, "closed", True)  # type: ignore[attr-defined]
        self.made.setdefault(str(config["bootstrap.servers"]), []).append(admin)
        return admin

    def open(self) -> dict[str, int]:
        return {k: sum(not a.closed for a in v) for k, v in self.made.items() if any(not a.closed for a in v)}


def _store(body: dict[str, Any], name: str, bootstrap: str) -> dict[str, Any]:
    store = {**body, "metadata": {**body["metadata"], "name": name, "uid": f"uid-{name}"}}
    store["spec"] = {**body["spec"], "kafka": {**body["spec"]["kafka"], "bootstrapServers": bootstrap}}
    return store


async def test_admin_clients_close_when_unused_and_at_shutdown(body: dict[str, Any]) -> None:
    kube = FakeKube()
    factory = Factory()
    deps = Deps(kube=cast(KubeApi, kube), topics=TopicAdmins(admin_factory=factory))
    one, two = _store(body, "one", "a:19092"), _store(body, "two", "a:19092")
    for store in (one, two):
        kube.put(store)
        await reconcile(store, deps)
    assert factory.open() == {"a:19092": 1}, "two stores on one cluster share one client"

    # `one` moves to another cluster: `two` still uses the first client, which stays open.
    moved = _store(body, "one", "b:19092")
    kube.put(moved)
    await reconcile(moved, deps)
    assert factory.open() == {"a:19092": 1, "b:19092": 1}

    # `two` is deleted: nobody uses a:19092 any more.
    deps.forget(parse_ref(two))
    assert factory.open() == {"b:19092": 1}

    # `one` moves again: b:19092's client had only it.
    again = _store(body, "one", "c:19092")
    kube.put(again)
    await reconcile(again, deps)
    assert factory.open() == {"c:19092": 1}

    deps.topics.close()
    assert factory.open() == {}
    assert len(deps.topics) == 0
