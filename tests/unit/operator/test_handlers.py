"""handlers.py: every entry point only queues the store (one keyed work queue); what is retried and how
fast; the delete handler keeps passes off the store; main.py parses the command line."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest
from kvs2_operator import deletion, handlers, uninstall
from kvs2_operator.errors import (
    KafkaRejectedError,
    KafkaUnavailableError,
    NotSupportedError,
    OperatorError,
    Reason,
    SpecError,
)
from kvs2_operator.kafka_admin import TopicAdmins
from kvs2_operator.kube import KubeApi, Ref
from kvs2_operator.main import run
from kvs2_operator.reconcile import Deps
from kvs2_operator.workqueue import WorkQueue

from .fakes import FakeAdmin, FakeKube


def test_no_error_is_not_retried() -> None:
    assert not handlers.backs_off(None)


@pytest.mark.parametrize("error", [SpecError("bad"), NotSupportedError("no")])
def test_permanent_errors_wait_for_the_spec_to_change(error: OperatorError) -> None:
    assert not handlers.backs_off(error)


def test_transient_errors_back_off() -> None:
    assert handlers.backs_off(KafkaUnavailableError("down"))


def test_the_delete_handler_backs_off_exponentially_with_a_cap() -> None:
    delays = [handlers.retry_delay(retry, KafkaUnavailableError("down")) for retry in range(12)]
    assert delays[:5] == [1, 2, 4, 8, 16]
    assert max(delays) == handlers.MAX_RETRY_DELAY
    assert delays == sorted(delays)


def test_a_kafka_refusal_is_retried_slowly() -> None:
    assert handlers.retry_delay(0, KafkaRejectedError("rf too big")) == handlers.REJECTED_RETRY_DELAY


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


def _recording_queue() -> tuple[WorkQueue, list[Hashable]]:
    passes: list[Hashable] = []

    async def process(key: Hashable) -> bool:
        passes.append(key)
        return True

    return WorkQueue(process, workers=2), passes


async def test_kopf_handlers_only_queue_the_store_and_one_pass_runs() -> None:
    """create/update/resume return at once; the queue's worker runs the pass — once for a burst."""
    queue, passes = _recording_queue()
    memo: Any = SimpleNamespace(resync=handlers.Resync(queue=queue))
    handler = cast(Callable[..., Any], handlers.reconcile_store)  # kopf's decorator retypes it
    for _ in range(3):  # e.g. resume, then an update, then another update, before any worker ran
        await handler(name="orders", namespace="shop", memo=memo, body={}, retry=0)
    assert passes == [] and len(queue) == 1
    queue.start()
    await _settle()
    await queue.stop()
    assert passes == [("shop", "orders")]


async def test_a_failed_pass_backs_off_in_the_queue_and_an_invalid_spec_does_not(
    body: dict[str, Any],
) -> None:
    kube, admin = FakeKube(), FakeAdmin(down=True)
    kube.put(body)
    deps = Deps(kube=cast(KubeApi, kube), topics=TopicAdmins(admin_factory=lambda _cfg: admin))
    queue = handlers.store_queue(deps)
    assert await queue.process(("shop", "orders")) is False  # Kafka down: retried after a back-off
    kube.objects[("KeyValueStore", "shop", "orders")]["spec"]["replicas"] = -1
    assert await queue.process(("shop", "orders")) is True  # the spec must change first
    status = kube.objects[("KeyValueStore", "shop", "orders")]["status"]
    assert status["conditions"][0]["reason"] == "InvalidSpec"  # reported either way
    assert await queue.process(("shop", "gone")) is True


async def test_deleting_a_store_holds_its_passes_back_until_done(
    body: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete handler scales down and deletes the topic with no pass of the store alongside: a pass
    asked for meanwhile (a child's change, the resync) runs after — and then finds the store deleting."""
    queue, passes = _recording_queue()
    queue.start()
    seen_during: list[int] = []

    async def finalize(raw: dict[str, Any], deps: Deps, *, give_up: bool) -> deletion.DeletionOutcome:
        queue.add(("shop", "orders"))  # a child's change while the workload is being stopped
        await _settle()
        seen_during.append(len(passes))
        return deletion.DeletionOutcome(Reason.TOPIC_DELETED, "topic shop.orders deleted")

    monkeypatch.setattr(deletion, "finalize", finalize)
    deps = Deps(kube=cast(KubeApi, FakeKube()))
    outcome = await handlers.finish_store(body, deps, give_up=False, waited=0.0, queue=queue)
    await _settle()
    await queue.stop()
    assert outcome.reason is Reason.TOPIC_DELETED
    assert seen_during == [0] and passes == [("shop", "orders")]


async def test_child_events_feed_the_cache_and_nudge_the_store() -> None:
    queue, passes = _recording_queue()
    deps = Deps(kube=cast(KubeApi, FakeKube()))
    memo: Any = SimpleNamespace(deps=deps, resync=handlers.Resync(queue=queue))
    service: Any = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "orders",
            "namespace": "shop",
            "uid": "svc-1",
            "ownerReferences": [
                {"apiVersion": "kvs2.io/v1alpha1", "kind": "KeyValueStore", "name": "orders"}
            ],
        },
    }
    handler = cast(Callable[..., Any], handlers.child_changed)
    ref = Ref("v1", "Service", "shop", "orders")
    await handler(body=kopf.Body(service), event={"type": None, "object": service}, memo=memo)
    assert deps.children.cached(ref) == service
    await handler(body=kopf.Body(service), event={"type": "DELETED", "object": service}, memo=memo)
    assert deps.children.cached(ref) is None
    queue.start()
    for _ in range(100):
        if passes:
            break
        await asyncio.sleep(0.05)
    await queue.stop()
    assert passes == [("shop", "orders")]  # two events within the coalescing pause: one pass


def test_the_finalizer_is_only_for_the_delete_policy() -> None:
    assert handlers._deletes_topic(spec=kopf.Spec({"spec": {"topicDeletionPolicy": "Delete"}}))  # type: ignore[arg-type]
    assert not handlers._deletes_topic(spec=kopf.Spec({"spec": {"topicDeletionPolicy": "Retain"}}))  # type: ignore[arg-type]
    assert not handlers._deletes_topic(spec=kopf.Spec({"spec": {}}))  # type: ignore[arg-type]


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--resync-interval", "0"]) == 2
    assert "--resync-interval must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        run(["--no-such-flag"])
    assert info.value.code == 2


def test_unreadable_kubeconfig_exits_2(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--", "--kubeconfig", "/nonexistent/kubeconfig"]) == 2
    assert "cannot load Kubernetes credentials" in capsys.readouterr().err


def test_every_handler_is_registered() -> None:
    """The kopf wiring itself: a refactor that drops a decorator must fail here, not in a cluster."""
    registry = kopf.get_default_registry()
    changing = {(h.id, h.reason, h.initial) for h in registry._changing.get_all_handlers()}
    assert ("reconcile_store", kopf.Reason.CREATE, None) in changing
    assert ("reconcile_store", kopf.Reason.UPDATE, None) in changing
    assert ("reconcile_store", None, True) in changing  # resume: every existing store at operator start
    deletes = [h for h in registry._changing.get_all_handlers() if h.reason == kopf.Reason.DELETE]
    assert [h.id for h in deletes] == ["delete_topic"] and deletes[0].requires_finalizer
    assert deletes[0].when is handlers._deletes_topic
    watching = [h.id for h in registry._watching.get_all_handlers()]
    assert watching == ["child_changed"] * 3  # StatefulSets, Services, PodDisruptionBudgets
    assert registry._spawning.get_all_handlers() == [], "a timer/daemon would put a finalizer on every store"


async def test_during_an_uninstall_the_delete_handler_leaves_the_store_to_the_drain(
    body: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain removes the last store's finalizer and at once the ServiceAccount's guard, while the
    CRD — and so the CRD-owned rights the operator needs for that last call — still exists. Had kopf's
    delete handler finished the store first, the CRD would go, its rights with it, and the guard would
    stay: the operator's namespace stuck Terminating (test_deploy.py did, in CI)."""
    finished: list[str] = []

    async def finalize(raw: dict[str, Any], deps: Deps, *, give_up: bool) -> deletion.DeletionOutcome:
        finished.append(raw["metadata"]["name"])
        return deletion.DeletionOutcome(Reason.TOPIC_DELETED, "deleted")

    monkeypatch.setattr(deletion, "finalize", finalize)
    guards = uninstall.Guards("kvs2-system", "kvs2-operator", "kvs2-operator")
    kube = FakeKube()
    kube.put({"apiVersion": "v1", "kind": "ServiceAccount",
              "metadata": {"name": "kvs2-operator", "namespace": "kvs2-system",
                           "finalizers": [uninstall.GUARD_FINALIZER],
                           "deletionTimestamp": "2026-01-01T00:00:00Z"}})  # fmt: skip
    memo: Any = SimpleNamespace(
        deps=Deps(kube=cast(KubeApi, kube)), uninstall=uninstall.Drain(guards=guards, armed=True)
    )
    delete_topic = cast(Any, handlers.delete_topic)  # kopf's decorator types it as a handler
    with pytest.raises(kopf.TemporaryError, match="uninstall"):
        await delete_topic(body=body, retry=0, memo=memo)
    assert finished == []
    # Not an uninstall (the account stays): the handler finishes the store itself.
    kube.objects[("ServiceAccount", "kvs2-system", "kvs2-operator")]["metadata"].pop("deletionTimestamp")
    await delete_topic(body=body, retry=0, memo=memo)
    assert finished == ["orders"]
