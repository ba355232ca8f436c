"""The reconcile pass against fake borders: the decisions, the order, and what gets written."""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest
from kvs2_operator.errors import Reason
from kvs2_operator.kafka_admin import TopicAdmins
from kvs2_operator.kube import KubeApi, Ref
from kvs2_operator.reconcile import Deps, Outcome, reconcile

from .fakes import FakeAdmin, FakeKube, FakeTopic


@pytest.fixture
def admin() -> FakeAdmin:
    return FakeAdmin()


@pytest.fixture
def deps(kube: FakeKube, admin: FakeAdmin) -> Deps:
    return Deps(kube=cast(KubeApi, kube), topics=TopicAdmins(admin_factory=lambda _cfg: admin))


STORE = Ref("kvs2.io/v1alpha1", "KeyValueStore", "shop", "orders")
STS = Ref("apps/v1", "StatefulSet", "shop", "orders")


def _conditions(kube: FakeKube) -> dict[str, dict[str, Any]]:
    status = kube.objects[("KeyValueStore", "shop", "orders")]["status"]
    return {c["type"]: c for c in status["conditions"]}


def _edit_spec(kube: FakeKube, **changes: Any) -> None:
    obj = kube.objects[("KeyValueStore", "shop", "orders")]
    obj["metadata"]["generation"] += 1
    for dotted, value in changes.items():
        node = obj["spec"]
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value


async def _pass(deps: Deps, body: dict[str, Any]) -> Outcome:
    outcome = await reconcile(body, deps)
    assert outcome is not None
    return outcome


async def test_first_pass_creates_topic_children_and_an_honest_status(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    outcome = await _pass(deps, body)
    assert outcome.error is None
    assert admin.topics["shop.orders"] == FakeTopic(
        6, 3, {"cleanup.policy": "compact", "min.insync.replicas": "2", "min.compaction.lag.ms": "60000"}
    )
    kinds = sorted(k for (k, ns, _n) in kube.objects if ns == "shop")
    assert kinds == ["KeyValueStore", "PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    for (kind, _, _), obj in kube.objects.items():
        if kind != "KeyValueStore":
            assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    conditions = _conditions(kube)
    assert conditions["TopicReady"]["status"] == "True"
    assert conditions["TopicReady"]["reason"] == "TopicCreated"
    # No StatefulSet controller ran in this test: the workload is honestly not ready.
    assert conditions["WorkloadReady"]["status"] == "False"
    assert conditions["Ready"]["status"] == "False"
    status = kube.objects[("KeyValueStore", "shop", "orders")]["status"]
    assert status["topic"] == "shop.orders"
    assert status["endpoint"] == "orders.shop.svc:50051"
    assert status["selector"] == "app.kubernetes.io/name=kvs2,app.kubernetes.io/instance=orders"
    assert status["observedGeneration"] == 1
    assert status["replicas"] == 0 and status["readyReplicas"] == 0
    assert [e["reason"] for e in kube.events] == ["TopicCreated", "WorkloadProgressing"]


async def test_steady_state_writes_nothing(deps: Deps, kube: FakeKube, body: dict[str, Any]) -> None:
    await _pass(deps, body)
    writes, events = kube.status_writes, len(kube.events)
    await _pass(deps, body)
    await _pass(deps, body)
    assert kube.status_writes == writes
    assert len(kube.events) == events
    assert _conditions(kube)["TopicReady"]["reason"] == "TopicCreated"  # remembered, not re-guessed


async def test_workload_becomes_ready_when_the_statefulset_says_so(
    deps: Deps, kube: FakeKube, body: dict[str, Any]
) -> None:
    await _pass(deps, body)
    sts = kube.objects[("StatefulSet", "shop", "orders")]
    sts["status"] = {"observedGeneration": 1, "replicas": 3, "readyReplicas": 1, "updatedReplicas": 3}
    await _pass(deps, body)
    assert _conditions(kube)["WorkloadReady"]["reason"] == "ReplicasNotReady"
    sts["status"]["readyReplicas"] = 3
    await _pass(deps, body)
    conditions = _conditions(kube)
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Ready"]["reason"] == "Ready"
    assert kube.objects[("KeyValueStore", "shop", "orders")]["status"]["readyReplicas"] == 3
    assert {e["reason"] for e in kube.events[-2:]} == {"Ready", "ReplicasReady"}


async def test_kafka_down_is_reported_then_heals(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    admin.down = True
    outcome = await _pass(deps, body)
    assert outcome.error is not None and not outcome.error.permanent
    assert outcome.error.reason is Reason.KAFKA_UNAVAILABLE
    conditions = _conditions(kube)
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "KafkaUnavailable")
    assert conditions["WorkloadReady"]["reason"] == "WaitingForTopic"
    assert ("StatefulSet", "shop", "orders") not in kube.objects
    assert kube.events[0]["type"] == "Warning"
    admin.down = False
    outcome = await _pass(deps, body)
    assert outcome.error is None
    assert _conditions(kube)["TopicReady"]["status"] == "True"
    assert ("StatefulSet", "shop", "orders") in kube.objects


async def test_kafka_down_after_creation_keeps_the_workload_reconciled(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    await _pass(deps, body)
    admin.down = True
    _edit_spec(kube, replicas=5)
    outcome = await _pass(deps, body)
    assert outcome.error is not None and outcome.error.reason is Reason.KAFKA_UNAVAILABLE
    assert kube.objects[("StatefulSet", "shop", "orders")]["spec"]["replicas"] == 5


async def test_partition_change_is_refused_and_kafka_untouched(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    await _pass(deps, body)
    admin.calls.clear()
    _edit_spec(kube, kafka__topic__partitions=12, replicas=4)
    outcome = await _pass(deps, body)
    assert outcome.error is not None and outcome.error.permanent
    assert outcome.error.reason is Reason.NOT_SUPPORTED
    assert admin.mutating_calls() == []
    assert admin.topics["shop.orders"].partitions == 6
    conditions = _conditions(kube)
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "NotSupported")
    assert "6 partitions" in conditions["TopicReady"]["message"]
    assert conditions["TopicReady"]["observedGeneration"] == 2
    # The store keeps running on its unchanged topic; other spec changes still apply.
    assert kube.objects[("StatefulSet", "shop", "orders")]["spec"]["replicas"] == 4
    assert kube.events[-1] == {
        "type": "Warning",
        "reason": "NotSupported",
        "message": "TopicReady: " + conditions["TopicReady"]["message"],
    }


async def test_foreign_incompatible_topic_blocks_the_workload(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    admin.topics["shop.orders"] = FakeTopic(6, 3, {"cleanup.policy": "delete"})
    outcome = await _pass(deps, body)
    assert outcome.error is not None and outcome.error.reason is Reason.TOPIC_INCOMPATIBLE
    assert admin.mutating_calls() == []
    assert ("StatefulSet", "shop", "orders") not in kube.objects
    assert "topic" not in kube.objects[("KeyValueStore", "shop", "orders")]["status"]


async def test_compatible_existing_topic_is_adopted(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    admin.topics["shop.orders"] = FakeTopic(6, 3, {"cleanup.policy": "compact", "min.insync.replicas": "2"})
    outcome = await _pass(deps, body)
    assert outcome.error is None
    assert _conditions(kube)["TopicReady"]["reason"] == "TopicAdopted"


async def test_invalid_spec_is_permanent_and_touches_nothing(
    deps: Deps, kube: FakeKube, admin: FakeAdmin, body: dict[str, Any]
) -> None:
    kube.objects[("KeyValueStore", "shop", "orders")]["spec"]["kafka"]["topic"]["config"] = {
        "cleanup.policy": "delete"
    }
    outcome = await _pass(deps, body)
    assert outcome.error is not None and outcome.error.permanent
    assert outcome.error.reason is Reason.INVALID_SPEC
    assert admin.calls == []
    conditions = _conditions(kube)
    assert conditions["Ready"]["reason"] == "InvalidSpec"
    assert conditions["WorkloadReady"]["status"] == "Unknown"


async def test_drift_is_repaired(deps: Deps, kube: FakeKube, body: dict[str, Any]) -> None:
    await _pass(deps, body)
    del kube.objects[("Service", "shop", "orders")]
    kube.objects[("StatefulSet", "shop", "orders")]["spec"]["replicas"] = 1
    await _pass(deps, body)
    assert ("Service", "shop", "orders") in kube.objects
    assert kube.objects[("StatefulSet", "shop", "orders")]["spec"]["replicas"] == 3


async def test_a_child_name_owned_by_someone_else_is_not_taken(
    deps: Deps, kube: FakeKube, body: dict[str, Any]
) -> None:
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "orders",
                "namespace": "shop",
                "uid": "other",
                "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "x", "controller": True}],
            },
            "spec": {"ports": [{"port": 80}]},
        }
    )
    outcome = await _pass(deps, body)
    assert outcome.error is not None and outcome.error.reason is Reason.RESOURCE_CONFLICT
    assert kube.objects[("Service", "shop", "orders")]["spec"] == {"ports": [{"port": 80}]}
    assert "Deployment web" in _conditions(kube)["WorkloadReady"]["message"]


async def test_disabling_the_pdb_deletes_it(deps: Deps, kube: FakeKube, body: dict[str, Any]) -> None:
    await _pass(deps, body)
    assert ("PodDisruptionBudget", "shop", "orders") in kube.objects
    _edit_spec(kube, podDisruptionBudget={"enabled": False})
    await _pass(deps, body)
    assert ("PodDisruptionBudget", "shop", "orders") not in kube.objects


async def test_missing_credentials_secret(deps: Deps, kube: FakeKube, body: dict[str, Any]) -> None:
    _edit_spec(kube, kafka__authentication={"secretName": "creds"})
    outcome = await _pass(deps, body)
    assert outcome.error is not None and outcome.error.reason is Reason.CREDENTIALS_UNAVAILABLE
    assert "creds" in _conditions(kube)["TopicReady"]["message"]


async def test_gone_or_deleting_store_is_skipped(deps: Deps, kube: FakeKube, body: dict[str, Any]) -> None:
    deleting = copy.deepcopy(body)
    kube.objects[("KeyValueStore", "shop", "orders")]["metadata"]["deletionTimestamp"] = (
        "2030-01-01T00:00:00Z"
    )
    assert await reconcile(deleting, deps) is None
    del kube.objects[("KeyValueStore", "shop", "orders")]
    assert await reconcile(body, deps) is None


async def test_api_unreachable_is_transient(deps: Deps, kube: FakeKube, body: dict[str, Any]) -> None:
    kube.down = True
    outcome = await _pass(deps, body)
    assert outcome.error is not None and not outcome.error.permanent
    assert outcome.error.reason is Reason.KUBERNETES_API_ERROR


def _template_request(kube: FakeKube) -> str:
    (template,) = kube.objects[("StatefulSet", "shop", "orders")]["spec"]["volumeClaimTemplates"]
    return str(template["spec"]["resources"]["requests"]["storage"])


async def test_a_grown_size_replaces_the_statefulset_keeping_its_pods(
    deps: Deps, kube: FakeKube, body: dict[str, Any]
) -> None:
    _edit_spec(kube, storage={"size": "1Gi"})
    await _pass(deps, body)
    first_uid = kube.objects[("StatefulSet", "shop", "orders")]["metadata"]["uid"]
    kube.calls.clear()
    _edit_spec(kube, storage={"size": "2Gi"})

    outcome = await _pass(deps, body)

    assert outcome.error is None
    # Deleted leaving pods and claims (Orphan), then created again with the new claim template.
    assert [c for c in kube.calls if c[1] == "StatefulSet" and c[0] != "get"] == [
        ("apply", "StatefulSet", "orders"),
        ("delete (Orphan)", "StatefulSet", "orders"),
        ("apply", "StatefulSet", "orders"),
    ]
    assert _template_request(kube) == "2Gi"
    assert kube.objects[("StatefulSet", "shop", "orders")]["metadata"]["uid"] != first_uid
    kube.calls.clear()
    await _pass(deps, body)
    assert not [c for c in kube.calls if c[0].startswith("delete")]  # once: the template fits now


async def test_a_shrink_leaves_the_statefulset_alone(
    deps: Deps, kube: FakeKube, body: dict[str, Any]
) -> None:
    _edit_spec(kube, storage={"size": "2Gi"})
    await _pass(deps, body)
    _edit_spec(kube, storage={"size": "1Gi"})
    outcome = await _pass(deps, body)
    assert outcome.error is not None and outcome.error.reason is Reason.VOLUME_SHRINK_REFUSED
    assert _template_request(kube) == "2Gi"
    assert not [c for c in kube.calls if c[0].startswith("delete")]
