"""Topic ownership: what a store records, what it may delete, and who else may claim its topic."""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest
from kvs2_operator import deletion
from kvs2_operator.errors import KafkaUnavailableError, Reason
from kvs2_operator.kafka_admin import TopicAdmins
from kvs2_operator.kube import KubeApi
from kvs2_operator.ownership import (
    Claim,
    Ownership,
    Verdict,
    claim_from_status,
    deletion_verdict,
    holder_of,
)
from kvs2_operator.reconcile import Deps, Outcome, reconcile

from .fakes import FakeAdmin, FakeKube, FakeTopic

CLAIM = Claim("shop.orders", "cluster-a", "id-1", Ownership.CREATED)


def test_a_claim_round_trips_through_the_status() -> None:
    assert claim_from_status(CLAIM.status_fields()) == CLAIM
    assert claim_from_status(CLAIM.status_fields(), "shop.orders") == CLAIM
    assert claim_from_status(CLAIM.status_fields(), "other") is None


@pytest.mark.parametrize(
    "status",
    [{}, {"topic": "shop.orders"}, {**CLAIM.status_fields(), "topicOwnership": "Stolen"}],
)
def test_a_legacy_or_partial_status_is_no_claim(status: dict[str, Any]) -> None:
    assert claim_from_status(status) is None


def test_only_a_created_topic_with_the_recorded_cluster_and_id_is_deleted() -> None:
    assert deletion_verdict(CLAIM, "shop.orders", "cluster-a", "id-1").verdict == Verdict.DELETE
    adopted = Claim("shop.orders", "cluster-a", "id-1", Ownership.ADOPTED)
    cases = [
        (None, "cluster-a", "id-1", "never recorded"),
        (adopted, "cluster-a", "id-1", "adopted, not created"),
        (CLAIM, "cluster-b", "id-1", "reaches Kafka cluster cluster-b"),
        (CLAIM, "cluster-a", "id-2", "different topic (id id-2)"),
        (CLAIM, "cluster-a", None, "already gone"),
    ]
    for claim, cluster, topic_id, why in cases:
        verdict = deletion_verdict(claim, "shop.orders", cluster, topic_id)
        assert verdict.verdict == Verdict.RETAIN and why in verdict.why, (claim, verdict)


def test_the_holder_is_another_store_with_a_claim_on_the_same_cluster() -> None:
    def store(uid: str, status: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"namespace": "ns", "name": f"s-{uid}", "uid": uid}, "status": status}

    stores = [store("me", CLAIM.status_fields()), store("legacy", {"topic": "shop.orders"})]
    assert holder_of("shop.orders", "cluster-a", "me", stores) is None
    elsewhere = Claim("shop.orders", "cluster-b", "id-9", Ownership.CREATED)
    stores.append(store("other-cluster", elsewhere.status_fields()))
    assert holder_of("shop.orders", "cluster-a", "me", stores) is None
    stores.append(store("owner", CLAIM.status_fields()))
    holder = holder_of("shop.orders", "cluster-a", "me", stores)
    assert holder is not None and holder.name == "s-owner" and holder.ownership == "Created"


# --- reconcile with fakes ------------------------------------------------------------------------------


def _body(base: dict[str, Any], name: str, uid: str, topic: str | None = None) -> dict[str, Any]:
    body = copy.deepcopy(base)
    body["metadata"].update({"name": name, "uid": uid})
    if topic is not None:
        body["spec"]["kafka"]["topic"]["name"] = topic
    return body


@pytest.fixture
def admin() -> FakeAdmin:
    return FakeAdmin()


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def deps(kube: FakeKube, admin: FakeAdmin) -> Deps:
    return Deps(kube=cast(KubeApi, kube), topics=TopicAdmins(admin_factory=lambda _cfg: admin))


def _status(kube: FakeKube, name: str) -> dict[str, Any]:
    return dict(kube.objects[("KeyValueStore", "shop", name)].get("status") or {})


def _reason(kube: FakeKube, name: str, type_: str = "TopicReady") -> str:
    return str(next(c["reason"] for c in _status(kube, name)["conditions"] if c["type"] == type_))


async def _pass(deps: Deps, body: dict[str, Any]) -> Outcome:
    outcome = await reconcile(body, deps)
    assert outcome is not None
    return outcome


async def test_status_records_the_claim(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    kube.put(body)
    await _pass(deps, body)
    status = _status(kube, "orders")
    assert claim_from_status(status) == Claim(
        "shop.orders", "cluster-a", admin.topics["shop.orders"].topic_id, Ownership.CREATED
    )


async def test_a_second_store_on_the_same_topic_is_refused(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    first, second = _body(body, "first", "u1", "shared"), _body(body, "second", "u2", "shared")
    kube.put(first)
    kube.put(second)
    assert (await _pass(deps, first)).error is None
    outcome = await _pass(deps, second)
    assert outcome.error is not None and outcome.error.reason is Reason.TOPIC_IN_USE
    assert "shop/first" in outcome.error.message
    assert _reason(kube, "second") == "TopicInUse"
    assert "topicId" not in _status(kube, "second")
    assert ("StatefulSet", "shop", "second") not in kube.objects
    # Once the owner is gone, the topic is free to be adopted.
    del kube.objects[("KeyValueStore", "shop", "first")]
    assert (await _pass(deps, second)).error is None
    assert _status(kube, "second")["topicOwnership"] == "Adopted"


async def test_a_claim_reserved_but_not_yet_written_also_refuses_others(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    first, second = _body(body, "first", "u1", "shared"), _body(body, "second", "u2", "shared")
    kube.put(first)
    kube.put(second)
    kube.down = False
    await _pass(deps, first)
    # The owner's status write was lost (e.g. the API failed right after Kafka created the topic).
    kube.objects[("KeyValueStore", "shop", "first")].pop("status")
    outcome = await _pass(deps, second)
    assert outcome.error is not None and outcome.error.reason is Reason.TOPIC_IN_USE
    # ...and the owner, on its next pass, still knows it created the topic.
    await _pass(deps, first)
    assert _status(kube, "first")["topicOwnership"] == "Created"


async def test_a_vanished_topic_is_reported_and_not_recreated(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    kube.put(body)
    await _pass(deps, body)
    del admin.topics["shop.orders"]
    admin.calls.clear()
    outcome = await _pass(deps, body)
    assert outcome.error is not None and outcome.error.reason is Reason.TOPIC_LOST
    assert admin.mutating_calls() == [] and "shop.orders" not in admin.topics
    assert _reason(kube, "orders", "Ready") == "TopicLost"


async def test_reason_stays_topic_created_after_an_outage(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    kube.put(body)
    await _pass(deps, body)
    admin.down = True
    await _pass(deps, body)
    assert _reason(kube, "orders") == "KafkaUnavailable"
    admin.down = False
    await _pass(deps, body)
    assert _reason(kube, "orders") == "TopicCreated"


# --- deletion ------------------------------------------------------------------------------------------


async def _claimed_store(deps: Deps, kube: FakeKube, body: dict[str, Any]) -> dict[str, Any]:
    kube.put(body)
    await _pass(deps, body)
    return copy.deepcopy(kube.objects[("KeyValueStore", "shop", "orders")])


async def test_deletion_scales_to_zero_then_deletes_the_created_topic(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    stored = await _claimed_store(deps, kube, body)
    outcome = await deletion.finalize(stored, deps, give_up=False)
    assert outcome.reason is Reason.TOPIC_DELETED and not outcome.warning
    assert "shop.orders" not in admin.topics
    assert ("StatefulSet", "orders", {"spec": {"replicas": 0}}) in kube.patches


async def test_deletion_waits_for_the_pods(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = await _claimed_store(deps, kube, body)
    kube.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orders-0", "namespace": "shop"}})
    monkeypatch.setattr(deletion, "POD_WAIT_SECONDS", 0.0)
    with pytest.raises(deletion.WorkloadStillRunningError, match="orders-0"):
        await deletion.finalize(stored, deps, give_up=False)
    assert "shop.orders" in admin.topics
    # Past the deadline, running pods no longer hold the deletion back (they cannot re-create it).
    outcome = await deletion.finalize(stored, deps, give_up=True)
    assert outcome.reason is Reason.TOPIC_DELETED and "shop.orders" not in admin.topics


async def test_deletion_retains_an_adopted_topic(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    admin.topics["shop.orders"] = FakeTopic(6, 3, {"cleanup.policy": "compact"})
    stored = await _claimed_store(deps, kube, body)
    outcome = await deletion.finalize(stored, deps, give_up=False)
    assert outcome.reason is Reason.TOPIC_RETAINED and "adopted" in outcome.message
    assert "shop.orders" in admin.topics and "delete shop.orders" not in admin.calls


async def test_deletion_retains_a_re_created_topic(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    stored = await _claimed_store(deps, kube, body)
    admin.topics["shop.orders"] = FakeTopic(6, 3, {"cleanup.policy": "compact"})
    outcome = await deletion.finalize(stored, deps, give_up=False)
    assert outcome.reason is Reason.TOPIC_RETAINED and "different topic" in outcome.message
    assert "shop.orders" in admin.topics


async def test_deletion_uses_the_last_credentials_when_the_secret_is_gone(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    kube.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "shop"},
              "data": {"username": "dQ==", "password": "cA=="}})  # fmt: skip
    body["spec"]["kafka"]["authentication"] = {"secretName": "creds"}
    stored = await _claimed_store(deps, kube, body)
    del kube.objects[("Secret", "shop", "creds")]
    # A namespace being deleted: a pass may see the store's deletionTimestamp before the finalizer runs.
    kube.objects[("KeyValueStore", "shop", "orders")]["metadata"]["deletionTimestamp"] = (
        "2026-01-01T00:00:00Z"
    )
    assert await reconcile(body, deps) is None
    outcome = await deletion.finalize(stored, deps, give_up=False)
    assert outcome.reason is Reason.TOPIC_DELETED


async def test_deletion_with_kafka_down_raises_for_a_retry_then_the_caller_gives_up(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    stored = await _claimed_store(deps, kube, body)
    admin.down = True
    with pytest.raises(KafkaUnavailableError) as info:
        await deletion.finalize(stored, deps, give_up=True)
    outcome = deletion.left_behind(stored, info.value, 301)
    assert outcome.warning and outcome.reason is Reason.TOPIC_LEFT_BEHIND
    assert "shop.orders" in outcome.message and "left behind" in outcome.message
