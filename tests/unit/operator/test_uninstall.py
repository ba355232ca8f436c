"""The drain when the operator itself is uninstalled: every store being deleted gets its one attempt and
loses the finalizer, one that cannot finish is let go with a TopicLeftBehind Warning, and the
ServiceAccount's guard goes last."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from kvs2_operator import handlers, uninstall
from kvs2_operator.crd import CRD_NAME, FINALIZER
from kvs2_operator.errors import KafkaUnavailableError
from kvs2_operator.kube import KubeApi
from kvs2_operator.workqueue import WorkQueue

from .fakes import FakeKube

GUARDS = uninstall.Guards("kvs2-system", "kvs2-operator", "kvs2-operator")


def _store(name: str, *, deleting: bool, finalizer: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "uid": f"uid-{name}"}
    if finalizer:
        meta["finalizers"] = [FINALIZER]
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"apiVersion": "kvs2.io/v1alpha1", "kind": "KeyValueStore", "metadata": meta,
            "status": {"topic": f"shop.{name}"}}  # fmt: skip


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    monkeypatch.setattr(uninstall, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(uninstall, "DRAIN_SECONDS", 2.0)
    fake = FakeKube()
    fake.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
              "metadata": {"name": CRD_NAME, "uid": "crd"}})  # fmt: skip
    fake.put({"apiVersion": "v1", "kind": "ServiceAccount",
              "metadata": {"name": "kvs2-operator", "namespace": "kvs2-system",
                           "finalizers": [uninstall.GUARD_FINALIZER],
                           "deletionTimestamp": "2026-01-01T00:00:00Z"}})  # fmt: skip
    for store in (
        _store("gone", deleting=True),
        _store("stuck", deleting=True),
        _store("kept", deleting=False),
    ):
        fake.put(store)
    return fake


def _finalizers(kube: FakeKube, kind: str, namespace: str, name: str) -> list[str]:
    return list(kube.objects[(kind, namespace, name)]["metadata"].get("finalizers") or [])


async def test_drain_finishes_or_lets_go_of_every_deleting_store_then_releases_the_account(
    kube: FakeKube,
) -> None:
    finished: list[str] = []

    async def finish(body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        finished.append(name)
        if name == "stuck":
            raise KafkaUnavailableError("no broker answered")

    state = uninstall.Drain(guards=GUARDS, armed=True)
    assert await uninstall.being_deleted(cast(KubeApi, kube), GUARDS)
    await uninstall.drain(cast(KubeApi, kube), GUARDS, state, None, finish)

    assert sorted(finished) == ["gone", "stuck"]  # one attempt each; the store not being deleted is left
    assert _finalizers(kube, "KeyValueStore", "shop", "gone") == []
    assert _finalizers(kube, "KeyValueStore", "shop", "stuck") == []
    assert _finalizers(kube, "KeyValueStore", "shop", "kept") == [FINALIZER]
    assert [e["reason"] for e in kube.events] == ["TopicLeftBehind"]
    assert "shop.stuck" in kube.events[0]["message"]
    assert _finalizers(kube, "ServiceAccount", "kvs2-system", "kvs2-operator") == []
    assert state.draining and state.drained.is_set()


async def test_a_terminating_crd_drains_every_store_with_the_finalizer(kube: FakeKube) -> None:
    kube.objects[("CustomResourceDefinition", None, CRD_NAME)]["metadata"]["deletionTimestamp"] = "now"
    pending = await uninstall.finishing(cast(KubeApi, kube), None)
    assert sorted(b["metadata"]["name"] for b in pending) == ["gone", "kept", "stuck"]


async def test_a_clean_stop_that_is_no_uninstall_removes_the_guard(kube: FakeKube) -> None:
    state = uninstall.Drain(guards=GUARDS, armed=True)
    await uninstall.disarm(cast(KubeApi, kube), state)
    assert _finalizers(kube, "ServiceAccount", "kvs2-system", "kvs2-operator") == []
    assert not state.armed


def test_guards_parse_and_refuse_half_given_flags() -> None:
    assert uninstall.Guards.parse("ns/sa", "role") == uninstall.Guards("ns", "sa", "role")
    for account, role in (("sa", "role"), ("ns/sa", ""), ("ns/sa/x", "role")):
        with pytest.raises(ValueError, match="--guard-service-account"):
            uninstall.Guards.parse(account, role)


async def test_stores_are_passed_only_once_the_uninstall_guards_are_armed() -> None:
    """A pass may create a topic the store will delete; were the operator uninstalled before its guards
    are armed, nothing would finish that store (kubectl delete -f deploy/ hangs on the CRD). So the
    operator's work queue starts once the guards are armed — found by tests/e2e/test_uninstall.py,
    which deleted deploy/ a second after the operator started."""
    passed: list[object] = []

    async def process(key: object) -> bool:
        passed.append(key)
        return True

    queue = WorkQueue(process, workers=1)
    state = uninstall.Drain(guards=GUARDS)
    starting = asyncio.create_task(handlers.start_when_guarded(queue, state, timeout=30))
    queue.add(("shop", "cart"))
    await asyncio.sleep(0.05)
    assert passed == []  # not armed yet: the store waits
    state.mark_armed()
    await starting
    await asyncio.sleep(0.05)
    assert passed == [("shop", "cart")]
    await queue.stop()


async def test_without_guards_or_past_the_bound_the_queue_starts_anyway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for state, timeout in ((uninstall.Drain(), 30.0), (uninstall.Drain(guards=GUARDS), 0.01)):
        passed: list[object] = []

        async def process(key: object, passed: list[object] = passed) -> bool:
            passed.append(key)
            return True

        queue = WorkQueue(process, workers=1)
        if state.guards is None:
            await uninstall.watch(cast(KubeApi, FakeKube()), state, None, _never)  # no guards: settled
        queue.add(("shop", "cart"))
        await handlers.start_when_guarded(queue, state, timeout=timeout)
        await asyncio.sleep(0.05)
        assert passed == [("shop", "cart")]
        await queue.stop()
    assert "not armed" in caplog.text


async def _never(body: dict[str, Any]) -> None:
    raise AssertionError("no drain expected")
