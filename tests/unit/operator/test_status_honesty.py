"""Status reasons that say who must act: a 422 on an immutable child field is the operator's problem,
not an invalid spec; a workload that cannot start says why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from kvs2_operator.errors import KubernetesInvalidError, Reason
from kvs2_operator.kafka_admin import TopicAdmins
from kvs2_operator.kube import KubeApi
from kvs2_operator.reconcile import Deps, reconcile

from .fakes import FakeAdmin, FakeKube


class ImmutableStatefulSet(FakeKube):
    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "StatefulSet":
            raise KubernetesInvalidError(
                'apply StatefulSet shop/orders: StatefulSet.apps "orders" is invalid: spec: Forbidden: '
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', "
                "'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are "
                "forbidden (HTTP 422)",
                422,
            )
        return await super().apply(obj)


def _conditions(kube: FakeKube) -> dict[str, dict[str, Any]]:
    status = kube.objects[("KeyValueStore", "shop", "orders")]["status"]
    return {c["type"]: c for c in status["conditions"]}


async def test_an_immutable_child_field_is_the_operators_to_fix(body: dict[str, Any]) -> None:
    kube = ImmutableStatefulSet()
    kube.put(body)
    deps = Deps(kube=cast(KubeApi, kube), topics=TopicAdmins(admin_factory=lambda _c: FakeAdmin()))
    outcome = await reconcile(body, deps)
    assert outcome is not None and outcome.error is not None
    assert outcome.error.reason is Reason.CHILD_UPDATE_REFUSED
    workload = _conditions(kube)["WorkloadReady"]
    assert workload["reason"] == "ChildUpdateRefused"
    assert "The spec is valid: the operator must replace this child" in workload["message"]


async def test_pods_that_cannot_be_created_are_explained(body: dict[str, Any]) -> None:
    kube = FakeKube()
    kube.put(body)
    deps = Deps(kube=cast(KubeApi, kube), topics=TopicAdmins(admin_factory=lambda _c: FakeAdmin()))
    await reconcile(body, deps)
    sts = kube.objects[("StatefulSet", "shop", "orders")]
    sts["status"] = {"observedGeneration": 1, "replicas": 0, "readyReplicas": 0}
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "e1", "namespace": "shop"},
            "reason": "FailedCreate",
            "message": 'pods "orders-0" is forbidden: exceeded quota: no-pods',
        }
    )
    await reconcile(body, deps)
    ready = _conditions(kube)["Ready"]
    assert ready["reason"] == "ReplicasNotReady"
    assert "cannot create pods" in ready["message"] and "exceeded quota: no-pods" in ready["message"]
