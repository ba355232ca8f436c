"""What a pass costs the API server: watched children are read from the watch-fed cache (cache.py), a GET
only on a miss; Secrets once per pass. And the cache never vouches for an object it cannot be sure of."""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest
from kvs2_operator.cache import Children
from kvs2_operator.crd import FIELD_MANAGER, LABEL_MANAGED_BY
from kvs2_operator.errors import Reason
from kvs2_operator.kafka_admin import TopicAdmins
from kvs2_operator.kube import KubeApi, Ref
from kvs2_operator.reconcile import Deps, Outcome, reconcile

from .fakes import FakeAdmin, FakeKube

CHILD_KINDS = ("StatefulSet", "Service", "PodDisruptionBudget")
STORE_GET = ("get", "KeyValueStore", "orders")


@pytest.fixture
def deps(kube: FakeKube) -> Deps:
    admin = FakeAdmin()
    return Deps(kube=cast(KubeApi, kube), topics=TopicAdmins(admin_factory=lambda _cfg: admin))


def _watch_sees(deps: Deps, kube: FakeKube) -> None:
    """What kopf's label-selected watches deliver to handlers.child_changed: every labelled child."""
    for obj in kube.objects.values():
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(LABEL_MANAGED_BY) == FIELD_MANAGER:
            deps.children.observe(None, obj)


def _ready(kube: FakeKube) -> None:
    """The StatefulSet controller's part: all replicas ready (so the pass has nothing to diagnose)."""
    sts = kube.objects[("StatefulSet", "shop", "orders")]
    sts["status"] = {"observedGeneration": 1, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3}


async def _pass(deps: Deps, body: dict[str, Any]) -> Outcome:
    outcome = await reconcile(body, deps)
    assert outcome is not None
    return outcome


async def test_a_steady_pass_reads_its_children_from_the_cache_not_the_api(
    deps: Deps, kube: FakeKube, body: dict[str, Any]
) -> None:
    await _pass(deps, body)  # creates the children: nothing cached yet, each is a GET (a miss)
    assert len(kube.gets(*CHILD_KINDS)) == 4
    _ready(kube)
    _watch_sees(deps, kube)
    await _pass(deps, body)  # Ready now: the status is written once
    kube.calls.clear()

    outcome = await _pass(deps, body)

    assert outcome.error is None
    assert kube.gets(*CHILD_KINDS) == []  # StatefulSet, two Services, PDB: all from memory
    # The whole bill of a steady pass, visible: one GET, of the store (its freshest status decides which
    # Events to post); four applies; two label-selected lists (claims to grow, pods to ask for their
    # phase). The Certificate and NetworkPolicy the spec does not ask for were found absent by the first
    # pass and only this operator creates them: not looked for again.
    assert kube.gets() == [STORE_GET]
    assert sorted(c for c in kube.calls if c[0] == "apply") == [
        ("apply", "PodDisruptionBudget", "orders"),
        ("apply", "Service", "orders"),
        ("apply", "Service", "orders-peers"),
        ("apply", "StatefulSet", "orders"),
    ]
    assert sorted(c[1] for c in kube.calls if c[0] == "list") == ["PersistentVolumeClaim", "Pod"]
    assert len(kube.calls) == 1 + 4 + 2  # no status write: nothing changed
    assert deps.children.hits == 8  # both passes since the watch reported the children


async def test_a_child_the_watch_reports_deleted_is_read_again_and_recreated(
    deps: Deps, kube: FakeKube, body: dict[str, Any]
) -> None:
    await _pass(deps, body)
    _watch_sees(deps, kube)
    gone = kube.objects.pop(("Service", "shop", "orders"))
    deps.children.observe("DELETED", gone)
    kube.calls.clear()

    await _pass(deps, body)

    assert kube.gets("Service") == [("get", "Service", "orders")]  # the miss: a GET, not memory
    assert ("Service", "shop", "orders") in kube.objects


async def test_a_labelled_child_another_controller_owns_is_refused_from_the_cache(
    deps: Deps, kube: FakeKube, body: dict[str, Any]
) -> None:
    await _pass(deps, body)
    service = kube.objects[("Service", "shop", "orders")]
    service["metadata"]["uid"] = "someone-elses"
    service["metadata"]["ownerReferences"] = [
        {"kind": "Deployment", "name": "web", "uid": "x", "controller": True}
    ]
    service["spec"] = {"ports": [{"port": 80}]}
    _watch_sees(deps, kube)
    kube.calls.clear()

    outcome = await _pass(deps, body)

    assert outcome.error is not None and outcome.error.reason is Reason.RESOURCE_CONFLICT
    assert kube.gets("Service") == []  # refused from memory: the watch reports its ownerReferences
    assert kube.objects[("Service", "shop", "orders")]["spec"] == {"ports": [{"port": 80}]}


async def test_the_credentials_secret_is_read_once_per_pass(
    deps: Deps, kube: FakeKube, body: dict[str, Any]
) -> None:
    kube.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "shop"},
              "data": {"username": "dQ==", "password": "cA=="}})  # fmt: skip
    kube.objects[("KeyValueStore", "shop", "orders")]["spec"]["kafka"]["authentication"] = {
        "secretName": "creds"
    }
    await _pass(deps, body)
    assert kube.gets("Secret") == [("get", "Secret", "creds")]  # admin config and pod-roll hash: one read
    await _pass(deps, body)
    assert len(kube.gets("Secret")) == 2  # …and read again by the next pass: a changed Secret is seen


# --- the cache on its own --------------------------------------------------------------------------------

SVC = Ref("v1", "Service", "shop", "orders")


def _service(uid: str, port: int = 80) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "orders", "namespace": "shop", "uid": uid},
        "spec": {"ports": [{"port": port}]},
    }


def test_a_recreate_seen_out_of_order_is_a_miss_until_it_settles() -> None:
    """kopf runs each uid's events in its own stream: the new object's ADDED may come before the old
    one's last MODIFIED and DELETED. While two objects are known under one name, neither is vouched for."""
    children = Children()
    children.observe(None, _service("old"))
    children.observe("ADDED", _service("new"))
    children.observe("MODIFIED", _service("old", port=81))  # late, from the old object's stream
    assert children.cached(SVC) is None
    children.observe("DELETED", _service("old"))
    cached = children.cached(SVC)
    assert cached is not None and cached["metadata"]["uid"] == "new"


def test_a_fresh_answer_drops_objects_the_watch_missed_the_deletion_of() -> None:
    children = Children()
    children.observe(None, _service("old"))
    children.confirm(SVC, _service("new"))  # e.g. an apply's response: "old" no longer exists
    assert children.cached(SVC) is None
    children.observe(None, _service("new"))
    children.confirm(SVC, None)  # a GET said 404
    assert children.cached(SVC) is None and children.objects == {}


def test_only_watched_kinds_are_answered_from_memory_and_copies_without_managed_fields() -> None:
    children = Children()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "shop", "uid": "1"},
    }
    children.observe(None, secret)
    assert children.cached(Ref("v1", "Secret", "shop", "s")) is None
    children.observe(
        None, {**_service("a"), "metadata": {**_service("a")["metadata"], "managedFields": [{}]}}
    )
    first = children.cached(SVC)
    assert first is not None
    first["spec"]["ports"] = []
    assert children.cached(SVC) == _service("a")
    assert copy.deepcopy(_service("a")) == children.cached(SVC)


async def test_an_optional_child_known_absent_is_not_looked_for_and_still_removed_when_dropped(
    deps: Deps, kube: FakeKube, body: dict[str, Any]
) -> None:
    store = ("KeyValueStore", "shop", "orders")
    kube.objects[store]["spec"]["podDisruptionBudget"] = {"enabled": False}
    await _pass(deps, body)
    _watch_sees(deps, kube)
    kube.calls.clear()
    await _pass(deps, body)
    assert kube.gets() == [STORE_GET]  # no PDB, Certificate or NetworkPolicy looked for again

    kube.objects[store]["spec"]["networkPolicy"] = {}
    kube.objects[store]["spec"]["podDisruptionBudget"] = {"enabled": True}
    await _pass(deps, body)
    assert ("NetworkPolicy", "shop", "orders") in kube.objects
    assert ("PodDisruptionBudget", "shop", "orders") in kube.objects

    del kube.objects[store]["spec"]["networkPolicy"]
    kube.objects[store]["spec"]["podDisruptionBudget"] = {"enabled": False}
    await _pass(deps, body)
    assert ("NetworkPolicy", "shop", "orders") not in kube.objects
    assert ("PodDisruptionBudget", "shop", "orders") not in kube.objects


async def test_a_restarted_operator_looks_for_optional_children_once(
    deps: Deps, kube: FakeKube, body: dict[str, Any]
) -> None:
    kube.objects[("KeyValueStore", "shop", "orders")]["spec"]["networkPolicy"] = {}
    await _pass(deps, body)
    del kube.objects[("KeyValueStore", "shop", "orders")]["spec"]["networkPolicy"]
    restarted = Deps(kube=deps.kube, topics=deps.topics)  # nothing remembered
    await _pass(restarted, body)
    assert ("NetworkPolicy", "shop", "orders") not in kube.objects
