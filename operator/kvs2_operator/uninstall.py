"""Uninstalling the operator while stores still need it (`kubectl delete -f deploy/`).

`kubectl delete -f deploy/` deletes everything at once: the CRD (hence every store), the Namespace (hence
the operator's pod and ServiceAccount) and the ClusterRole and ClusterRoleBinding that give the operator
its rights. A store with `topicDeletionPolicy: Delete` carries a finalizer only the operator removes, so
without more the CRD waits forever for stores nobody can finish any more.

Two things let the operator finish them:

- **rights that outlive deploy/'s RBAC.** At startup the operator keeps a copy of its ClusterRole and a
  ClusterRoleBinding to it (`<cluster role>-uninstall`), both *owned by the CRD* (an ownerReference).
  Kubernetes removes a CRD only after its last object, and its garbage collector then removes what the CRD
  owns: these rights last exactly as long as a store can need the operator, and nobody has to clean up
  after them. (Guarding deploy/'s own ClusterRole and binding with finalizers cannot work: whichever of the
  two is released last has lost the rights needed to release it.)
- **an identity that outlives its Namespace.** The ServiceAccount carries the finalizer
  `kvs2.io/uninstall-drain`. The API server honours a token for one minute after its ServiceAccount's (or
  pod's) deletionTimestamp (the JWT leeway), so the drain below is bounded well within that minute.

When the ServiceAccount is being deleted the operator *drains*: every store being deleted gets one attempt
at its topic (handlers.py passes `give_up`), a store still not finished after `DRAIN_SECONDS` loses its
finalizer with a TopicLeftBehind Warning, and then the ServiceAccount's finalizer is removed. A SIGTERM
(the pod's namespace is going) waits for the drain, and losing the leader Lease does not stop it (main.py).

Nothing is armed until the operator has run once: deploy/ applied with an operator that never starts
leaves nothing behind that needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvs2_operator.crd import CRD_NAME, FINALIZER, GROUP, KIND, VERSION
from kvs2_operator.errors import KubernetesConflictError, OperatorError, Reason
from kvs2_operator.kube import KubeApi, Ref

log = logging.getLogger(__name__)

#: The finalizer on the operator's ServiceAccount, removed at the end of a drain.
GUARD_FINALIZER = f"{GROUP}/uninstall-drain"
#: Seconds between looks at the ServiceAccount (is an uninstall under way?).
POLL_SECONDS = 2.0
#: `kubectl delete -f deploy/` deletes the CRD a moment after the ServiceAccount: the stores it deletes
#: are waited for only after this pause, so none is missed.
SETTLE_SECONDS = 5.0
#: The longest a drain waits for stores to finish before removing their finalizers itself. With the poll
#: and the settle pause it stays well inside the token's one-minute leeway.
DRAIN_SECONDS = 35.0

#: One store's last attempt during a drain (handlers.finish_store): stop its pods, delete its topic if it
#: may, report how that went. The drain removes the finalizer afterwards.
Finish = Callable[[dict[str, Any]], Awaitable[Any]]

#: After a SIGTERM that does not look like an uninstall, one more look this many seconds later.
SIGTERM_SECOND_LOOK = 2.0

RBAC = "rbac.authorization.k8s.io/v1"
CRD_API = "apiextensions.k8s.io/v1"


@dataclass(frozen=True)
class Guards:
    """What an uninstall must not take away before the drain: the operator's ServiceAccount and rights."""

    service_account_namespace: str
    service_account: str
    cluster_role: str

    @property
    def uninstall_name(self) -> str:
        """The CRD-owned ClusterRole copy and ClusterRoleBinding."""
        return f"{self.cluster_role}-uninstall"

    @property
    def service_account_ref(self) -> Ref:
        return Ref("v1", "ServiceAccount", self.service_account_namespace, self.service_account)

    @staticmethod
    def parse(service_account: str, cluster_role: str) -> Guards:
        namespace, _, name = service_account.partition("/")
        if not namespace or not name or "/" in name or not cluster_role:
            raise ValueError(
                f"expected --guard-service-account NAMESPACE/NAME and --guard-cluster-role NAME, got "
                f"{service_account!r} and {cluster_role!r}"
            )
        return Guards(namespace, name, cluster_role)


@dataclass
class Drain:
    """The operator's uninstall state, shared by handlers.py (deletion gives up at once) and main.py."""

    guards: Guards | None = None
    armed: bool = False
    draining: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set once the guards are armed, or at once when there are none: the operator's passes wait for it
    #: (handlers.start_when_guarded), so no store gets a topic it may delete while an uninstall could
    #: still strand it.
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def mark_armed(self) -> None:
        self.armed = True
        self.settled.set()


def _owner(crd: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": CRD_API,
        "kind": "CustomResourceDefinition",
        "name": CRD_NAME,
        "uid": crd["metadata"]["uid"],
    }


async def _ensure(kube: KubeApi, ref: Ref, wanted: dict[str, Any], update: dict[str, Any]) -> None:
    """Create `wanted`, or patch `update` (what an upgrade may have changed) onto the existing object."""
    if await kube.get(ref) is None:
        await kube.create(Ref(ref.api_version, ref.kind, ref.namespace), wanted)
        log.info("created %s (owned by the CRD, for an uninstall)", ref.describe())
    else:
        await kube.patch(ref, update)


async def arm(kube: KubeApi, guards: Guards) -> None:
    """Create the CRD-owned rights and put the finalizer on the ServiceAccount (idempotent)."""
    crd = await kube.get(Ref(CRD_API, "CustomResourceDefinition", None, CRD_NAME))
    if crd is None or (crd.get("metadata") or {}).get("deletionTimestamp"):
        raise OperatorError(f"the CRD {CRD_NAME} is missing or being deleted")
    owner = _owner(crd)
    role = await kube.get(Ref(RBAC, "ClusterRole", None, guards.cluster_role))
    if role is None:
        raise OperatorError(f"ClusterRole {guards.cluster_role} (--guard-cluster-role) does not exist")
    rules = role.get("rules") or []
    name = guards.uninstall_name
    meta = {
        "name": name,
        "labels": dict((role.get("metadata") or {}).get("labels") or {}),
        "ownerReferences": [owner],
    }
    await _ensure(
        kube,
        Ref(RBAC, "ClusterRole", None, name),
        {"apiVersion": RBAC, "kind": "ClusterRole", "metadata": meta, "rules": rules},
        {"metadata": {"ownerReferences": [owner]}, "rules": rules},
    )
    subject = {
        "kind": "ServiceAccount",
        "name": guards.service_account,
        "namespace": guards.service_account_namespace,
    }
    await _ensure(
        kube,
        Ref(RBAC, "ClusterRoleBinding", None, name),
        {
            "apiVersion": RBAC,
            "kind": "ClusterRoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [subject],
        },
        {"metadata": {"ownerReferences": [owner]}, "subjects": [subject]},
    )
    account = await kube.get(guards.service_account_ref)
    if account is None:
        raise OperatorError(f"ServiceAccount {guards.service_account_ref.describe()} does not exist")
    meta_sa = account.get("metadata") or {}
    finalizers = list(meta_sa.get("finalizers") or [])
    if GUARD_FINALIZER not in finalizers and not meta_sa.get("deletionTimestamp"):
        await kube.patch(
            guards.service_account_ref,
            {
                "metadata": {
                    "finalizers": [*finalizers, GUARD_FINALIZER],
                    "resourceVersion": meta_sa.get("resourceVersion"),
                }
            },
        )
        log.info("finalizer %s on %s", GUARD_FINALIZER, guards.service_account_ref.describe())


async def _remove_finalizer(kube: KubeApi, ref: Ref, finalizer: str) -> None:
    """Remove one finalizer, keeping the others (optimistic concurrency: retried on a conflict)."""
    for _ in range(5):
        obj = await kube.get(ref)
        meta = (obj or {}).get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if obj is None or finalizer not in finalizers:
            return
        finalizers.remove(finalizer)
        try:
            await kube.patch(
                ref, {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
            )
            return
        except KubernetesConflictError:
            continue


def _store_ref(body: Mapping[str, Any]) -> Ref:
    meta = body.get("metadata") or {}
    return Ref(f"{GROUP}/{VERSION}", KIND, meta.get("namespace"), meta.get("name"))


async def finishing(kube: KubeApi, namespaces: list[str] | None) -> list[dict[str, Any]]:
    """Stores that still hold the operator's finalizer and are being deleted (or will be: the CRD is)."""
    crd = await kube.get(Ref(CRD_API, "CustomResourceDefinition", None, CRD_NAME))
    crd_going = crd is None or bool((crd.get("metadata") or {}).get("deletionTimestamp"))
    if crd is None:
        return []
    bodies: list[dict[str, Any]] = []
    scopes: list[str | None] = list(namespaces) if namespaces else [None]
    for namespace in scopes:
        bodies += await kube.list(Ref(f"{GROUP}/{VERSION}", KIND, namespace))
    return [
        body
        for body in bodies
        if FINALIZER in ((body.get("metadata") or {}).get("finalizers") or ())
        and (crd_going or (body.get("metadata") or {}).get("deletionTimestamp"))
    ]


async def _finish_one(kube: KubeApi, body: dict[str, Any], finish: Finish, timeout: float) -> None:
    """One store's last attempt (its pods stopped, its topic deleted, reported), then its finalizer goes."""
    ref = _store_ref(body)
    try:
        await asyncio.wait_for(finish(body), timeout=timeout)
    except Exception as exc:  # the fallback in drain() lets go of it with a Warning
        log.warning("drain: %s not finished: %s", ref.describe(), exc)
        return
    try:
        await _remove_finalizer(kube, ref, FINALIZER)
    except OperatorError as exc:
        log.error("drain: cannot remove the finalizer of %s: %s", ref.describe(), exc)


async def _let_go(kube: KubeApi, body: dict[str, Any]) -> None:
    """The fallback: no attempt finished in time; the finalizer goes anyway, with a Warning."""
    ref = _store_ref(body)
    topic = (body.get("status") or {}).get("topic") or "its topic"
    message = (
        f"the operator was uninstalled before {topic} could be deleted; the finalizer was removed and "
        "the topic left behind (delete it by hand if it is no longer wanted)"
    )
    log.warning("%s: %s", ref.describe(), message)
    with contextlib.suppress(OperatorError):
        await kube.post_event(
            {**body, "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND},
            type_="Warning",
            reason=str(Reason.TOPIC_LEFT_BEHIND),
            message=message,
        )
    try:
        await _remove_finalizer(kube, ref, FINALIZER)
    except OperatorError as exc:
        log.error("drain: cannot remove the finalizer of %s: %s", ref.describe(), exc)


async def drain(
    kube: KubeApi, guards: Guards, state: Drain, namespaces: list[str] | None, finish: Finish
) -> None:
    """Finish (or let go of) every store being deleted, then release the ServiceAccount.

    The drain does the stores' deletion itself rather than leaving it to kopf's delete handler: kopf stops
    serving a resource whose CRD is terminating (discovery no longer lists `patch` for it).
    """
    state.draining = True
    log.warning(
        "%s is being deleted: the operator is being uninstalled; finishing stores being deleted "
        "(each gets one attempt at its topic) before letting go",
        guards.service_account_ref.describe(),
    )
    loop = asyncio.get_running_loop()
    await asyncio.sleep(SETTLE_SECONDS)
    deadline = loop.time() + DRAIN_SECONDS
    attempted: set[str] = set()
    pending: list[dict[str, Any]] = []
    while loop.time() < deadline:
        try:
            pending = await finishing(kube, namespaces)
        except OperatorError as exc:
            log.warning("drain: cannot list the stores: %s", exc)
            await asyncio.sleep(1.0)
            continue
        fresh = [b for b in pending if _uid(b) not in attempted]
        if not fresh:
            break
        attempted.update(_uid(b) for b in fresh)
        left = max(1.0, deadline - loop.time())
        await asyncio.gather(*(_finish_one(kube, body, finish, left) for body in fresh))
        pending = []
    try:
        pending = await finishing(kube, namespaces)
    except OperatorError as exc:
        log.warning("drain: cannot list the stores: %s", exc)
    for body in pending:
        await _let_go(kube, body)
    try:
        await _remove_finalizer(kube, guards.service_account_ref, GUARD_FINALIZER)
        log.warning("drained; released %s", guards.service_account_ref.describe())
    finally:
        state.drained.set()


def _uid(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("uid"))


async def disarm(kube: KubeApi, state: Drain) -> None:
    """A clean stop that is not an uninstall (a rollout, the Deployment deleted, a lost Lease): the
    ServiceAccount's finalizer goes, so nothing waits for an operator that may never come back. The next
    operator to start arms it again; the CRD-owned rights stay until the CRD goes."""
    guards = state.guards
    if guards is None or not state.armed or state.draining:
        return
    try:
        await _remove_finalizer(kube, guards.service_account_ref, GUARD_FINALIZER)
        state.armed = False
        log.info("uninstall guard disarmed (%s)", guards.service_account_ref.describe())
    except OperatorError as exc:
        log.warning("cannot remove the finalizer of %s: %s", guards.service_account_ref.describe(), exc)


async def being_deleted(kube: KubeApi, guards: Guards) -> bool:
    account = await kube.get(guards.service_account_ref)
    return account is None or bool((account.get("metadata") or {}).get("deletionTimestamp"))


async def watch(kube: KubeApi, state: Drain, namespaces: list[str] | None, finish: Finish) -> None:
    """Arm the guards, then watch for an uninstall and drain once it starts (runs for the process's life)."""
    guards = state.guards
    if guards is None:
        state.settled.set()
        return
    # kopf installs its own SIGTERM handler just before its startup handlers run (which start this
    # task); replace it only once kopf's is surely in place.
    await asyncio.sleep(1.0)
    hold_sigterm(state, kube)
    while True:
        try:
            if not state.armed:
                await arm(kube, guards)
                state.mark_armed()
                log.info("uninstall guards armed (%s)", guards.uninstall_name)
            if state.armed and await being_deleted(kube, guards):
                await drain(kube, guards, state, namespaces, finish)
                return
        except OperatorError as exc:
            log.warning("uninstall guard: %s", exc)
        await asyncio.sleep(POLL_SECONDS)


def hold_sigterm(state: Drain, kube: KubeApi) -> None:
    """Replace kopf's SIGTERM handler: stop at once, unless an uninstall is under way (then drain first).

    kopf stops on SIGINT as well; that is how the operator is stopped once the drain allows it.
    """
    loop = asyncio.get_running_loop()

    async def stop() -> None:
        guards = state.guards
        if guards is not None and state.armed and not state.drained.is_set():
            uninstalling = state.draining
            # The pod's namespace may be deleted a moment before the ServiceAccount (kubectl deletes
            # deploy/'s objects one after the other): look twice.
            for pause in (0.0, SIGTERM_SECOND_LOOK):
                if uninstalling:
                    break
                await asyncio.sleep(pause)
                with contextlib.suppress(OperatorError):
                    uninstalling = await being_deleted(kube, guards)
            if uninstalling:
                log.warning("SIGTERM during an uninstall: stopping once the drain is done")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        state.drained.wait(), timeout=POLL_SECONDS + SETTLE_SECONDS + DRAIN_SECONDS + 10
                    )
        os.kill(os.getpid(), signal.SIGINT)

    tasks: set[asyncio.Task[None]] = set()

    def on_sigterm() -> None:
        task = loop.create_task(stop(), name="kvs2-sigterm")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
