"""kopf wiring only: which events queue a pass of `reconcile()`, what is retried, and the operator-wide
settings. No business logic lives here.

One entry point. Every reason to look at a store — kopf's create, update and resume handlers, a change
to one of its children, the periodic resync — only adds the store's key to one keyed work queue
(workqueue.py: dedupe, one pass per store at a time, per-store back-off, bounded workers), whose workers
call `reconcile()`. The kopf handlers return at once, as controller-runtime's event handlers only enqueue
a request: kopf's own per-handler retry would be a second back-off beside the queue's, and a pass
running inside kopf's handler would run beside a queued one. So errors are the queue's business: a
transient one (Kafka down, an API error) backs the store off 1, 2, 4 … 30 s and a success resets it; a
permanent one (an invalid spec) is not retried until the spec changes (kopf's update handler queues it
again) or the next resync. Both are in the store's status either way. kopf still records each change as
handled (its annotations), so an update is queued once.

Children (StatefulSet, Services, PDB) are watched through a server-side label selector. Their events do
two things: they keep the children cache (cache.py) current — a steady-state pass reads its children
from memory instead of GETting each — and they queue a coalesced pass for the store, so drift is
repaired and readiness reported within a second; the resync loop remains the safety net (missed
events, Kafka-side drift, an operator restart).

Why a resync loop instead of `@kopf.timer`: kopf puts a finalizer on every object a timer or daemon
serves (by design, nolar/kopf#1074 and #896), so a timer would block the deletion of every store
whenever the operator is down. The issue asks for a finalizer only when the deletion policy needs one,
so periodic drift repair is one operator-level loop (like controller-runtime's resync period) that
lists the stores and queues each for the same `reconcile()`. Its liveness is kopf's probe
(`resync_alive`). The delete handler stays a kopf handler: it is registered only for
`topicDeletionPolicy: Delete` (its `when=` filter), which is what makes kopf add — and remove, when the
policy changes — the finalizer, and kopf's retry is what keeps the finalizer until the topic is dealt
with. It holds the store's key on the queue while it works (`WorkQueue.exclusive`), so no pass
interleaves with it — the only per-store exclusion there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from kvs2_operator import deletion, uninstall
from kvs2_operator.crd import (
    ANNOTATION_PREFIX,
    FIELD_MANAGER,
    FINALIZER,
    GROUP,
    KIND,
    LABEL_MANAGED_BY,
    PLURAL,
    VERSION,
)
from kvs2_operator.errors import OperatorError, Reason
from kvs2_operator.kube import KubeApi, load_configuration
from kvs2_operator.model import parse_ref
from kvs2_operator.reconcile import Deps, list_stores, reconcile
from kvs2_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

#: Longest delay between retries of a failing pass (Kafka down, API errors).
MAX_RETRY_DELAY = 30.0
#: Delay between retries when Kafka answered "no" (e.g. not enough brokers): a person is needed, or time.
REJECTED_RETRY_DELAY = 60.0
#: Worker threads for blocking Kubernetes/Kafka calls.
IO_THREADS = 32
#: Stores reconciled at the same time by one resync sweep.
RESYNC_CONCURRENCY = 8
#: Longest the stores' passes wait for the uninstall guards at start-up (start_when_guarded).
UNINSTALL_GUARD_WAIT = 30.0
#: A burst of child events (a rollout, a GC sweep) within this window costs one pass, not one per event.
NUDGE_COALESCE_SECONDS = 0.5


@dataclass
class Options:
    """Operator-wide options, set by main.py (or defaults when run with `kopf run`)."""

    resync_interval: float = 30.0
    namespaces: list[str] = field(default_factory=list)
    kubeconfig: str | None = None
    #: Seconds after a store's deletionTimestamp before its topic is given up on (Kafka or Secret gone).
    deletion_timeout: float = 300.0


def _options(memo: Any) -> Options:
    options = getattr(memo, "options", None)
    if options is None:
        options = memo.options = Options()
    assert isinstance(options, Options)
    return options


def _drain(memo: Any) -> uninstall.Drain:
    """The uninstall state (main.py sets its guards from the command line; none under `kopf run`)."""
    state = getattr(memo, "uninstall", None)
    if state is None:
        state = memo.uninstall = uninstall.Drain()
    assert isinstance(state, uninstall.Drain)
    return state


def _deps(memo: Any) -> Deps:
    deps = getattr(memo, "deps", None)
    if deps is None:
        options = _options(memo)
        deps = memo.deps = Deps(
            kube=KubeApi(load_configuration(options.kubeconfig)), namespaces=options.namespaces or None
        )
    assert isinstance(deps, Deps)
    return deps


def retry_delay(retry: int, error: OperatorError) -> float:
    """Exponential backoff 1, 2, 4 … capped; slower when Kafka refused rather than failed to answer."""
    if error.reason == Reason.KAFKA_REJECTED:
        return REJECTED_RETRY_DELAY
    return float(min(MAX_RETRY_DELAY, 2 ** min(retry, 8)))


def backs_off(error: OperatorError | None) -> bool:
    """Whether the queue retries the store after its back-off: transient trouble only. A permanent error
    (an invalid spec, a refused topic) waits for the spec to change (kopf's update handler queues it)."""
    return error is not None and not error.permanent


# --- operator-wide activities ------------------------------------------------------------------------


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Our own names for kopf's bookkeeping, and no kopf state in .status (the schema declares ours only).
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Watches that hang silently are the classic kopf failure: make the server end them, and the client
    # give up if the server does not.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    # Children are watched through a server-side label selector: on a cluster with thousands of
    # StatefulSets and Services, only the operator's own ever reach it.
    child_selector = f"{LABEL_MANAGED_BY}={FIELD_MANAGER}"
    for group_version_plural in CHILD_RESOURCES:
        settings.watching.label_selectors[group_version_plural] = child_selector
    # Events come only from status.py, one per transition, with reasons from the closed list; kopf's
    # own Events (reason "Error", "Logging", ...) would repeat them in other words.
    settings.posting.enabled = False
    # One operator replica, no peering objects to install.
    settings.peering.standalone = True
    # Every Kubernetes and Kafka call runs in a worker thread (asyncio.to_thread). The default pool has
    # cpu+4 threads; a few stores on an unreachable Kafka would hold them for a request timeout each
    # and stall everyone's API calls. Blocked I/O threads are cheap: give them room.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="kvs2-io")
    )
    options = _options(memo)
    deps = _deps(memo)
    # Created here, in the operator-wide memo that kopf copies (shallowly) per object: one queue for all,
    # started before kopf's resume handlers queue the stores.
    memo.resync = Resync(queue=store_queue(deps))
    memo.queue_task = asyncio.create_task(
        start_when_guarded(memo.resync.queue, _drain(memo), UNINSTALL_GUARD_WAIT), name="kvs2-queue-start"
    )
    memo.resync_task = asyncio.create_task(supervise_resync(deps, options, memo.resync), name="kvs2-resync")
    # The uninstall guards (uninstall.py): armed now, drained when deploy/ is deleted.
    memo.uninstall_task = asyncio.create_task(
        uninstall.watch(
            deps.kube, _drain(memo), options.namespaces or None, _finish_on_uninstall(deps, memo)
        ),
        name="kvs2-uninstall",
    )


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    for name in ("queue_task", "resync_task", "uninstall_task"):
        task = getattr(memo, name, None)
        if isinstance(task, asyncio.Task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    resync = getattr(memo, "resync", None)
    if isinstance(resync, Resync) and resync.queue is not None:
        await resync.queue.stop()
    deps = getattr(memo, "deps", None)
    if isinstance(deps, Deps):
        await uninstall.disarm(deps.kube, _drain(memo))
        deps.topics.close()
        deps.kube.close()


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf's watches use exactly the credentials the operator's own API calls use."""
    cfg = _deps(memo).kube.configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme: str | None = parts[0] if len(parts) == 2 else None
    token: str | None = parts[-1] if parts else None
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


#: Seconds a crashed resync loop waits before it is restarted.
RESYNC_RESTART_DELAY = 5.0


@dataclass
class Resync:
    """The resync loop's vital signs, for the liveness probe."""

    last_sweep: float = field(default_factory=time.monotonic)
    crashes: int = 0
    last_error: str = ""
    #: The keyed work queue every pass goes through (workqueue.py); kopf's handlers, the sweep and child
    #: changes only add keys.
    queue: WorkQueue | None = None

    def stale_after(self, interval: float) -> float:
        """A sweep lists every store and reconciles them with bounded Kafka/API timeouts; one taking
        longer than this means the loop is stuck."""
        return max(3 * interval, interval + 300.0)


async def supervise_resync(deps: Deps, options: Options, resync: Resync) -> None:
    """Run the resync loop forever: a crash is logged, counted and the loop restarted."""
    while True:
        try:
            await resync_loop(deps, options, resync)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            resync.crashes += 1
            resync.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("the resync loop crashed (%d so far); restarting it", resync.crashes)
            await asyncio.sleep(RESYNC_RESTART_DELAY)


@kopf.on.probe(id="resync")
def resync_alive(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """kopf's /healthz: fails (HTTP 500, the pod is restarted) when the resync loop stopped sweeping."""
    resync = getattr(memo, "resync", None)
    if not isinstance(resync, Resync):
        return {"started": False}
    interval = _options(memo).resync_interval
    age = time.monotonic() - resync.last_sweep
    if age > resync.stale_after(interval):
        raise kopf.PermanentError(f"no resync sweep for {age:.0f}s (crashes: {resync.crashes})")
    return {"lastSweepSecondsAgo": round(age, 1), "crashes": resync.crashes, "lastError": resync.last_error}


async def start_when_guarded(queue: WorkQueue, state: uninstall.Drain, timeout: float) -> None:
    """Start the passes once the uninstall guards are armed (uninstall.py), at most `timeout` later.

    Why wait: a pass may create a topic its store deletes (`topicDeletionPolicy: Delete`). Were deploy/
    deleted before the guards are armed, the operator would stop at once and nothing would finish that
    store — `kubectl delete -f deploy/` would hang on the CRD. Stores queued meanwhile (kopf's resume
    handlers) wait in the queue. Arming takes a second or two; if it cannot be done (the flags name an
    account the operator cannot patch), the passes start anyway after `timeout`, and the log says the
    uninstall then needs a person."""
    try:
        await asyncio.wait_for(state.settled.wait(), timeout)
    except TimeoutError:
        log.warning(
            "uninstall guards not armed after %.0fs: reconciling stores without them (an uninstall of the "
            "operator before they are armed leaves stores with topicDeletionPolicy Delete to a person)",
            timeout,
        )
    queue.start()


def store_queue(deps: Deps) -> WorkQueue:
    """The queue of passes keyed by (namespace, name); a pass re-reads the store (reconcile())."""

    async def one(key: Any) -> bool:
        namespace, name = key
        outcome = await reconcile({"metadata": {"namespace": namespace, "name": name}}, deps)
        if outcome is None or outcome.error is None:
            return True
        log.info("pass %s/%s: %s", namespace, name, outcome.error)
        return not backs_off(outcome.error)

    return WorkQueue(one, workers=RESYNC_CONCURRENCY, max_delay=MAX_RETRY_DELAY)


async def resync_loop(deps: Deps, options: Options, resync: Resync | None = None) -> None:
    """Every `resync_interval` seconds, every store is queued for a pass: drift repair, status refresh.

    The sweep only lists and queues (workqueue.py): a store whose Kafka is down spends a request timeout
    in one of the queue's workers, and neither delays the sweep nor the passes of stores on healthy
    clusters.
    """
    queue = resync.queue if resync is not None else None
    own = queue is None
    if queue is None:
        queue = store_queue(deps)
        queue.start()  # a queue handed in is started by its owner (configure: once the guards are armed)
    try:
        while True:
            if resync is not None:
                resync.last_sweep = time.monotonic()
            await asyncio.sleep(options.resync_interval)
            try:
                bodies = await list_stores(deps, options.namespaces or None)
            except OperatorError as exc:
                log.warning("resync: cannot list KeyValueStores: %s", exc)
                continue
            for body in bodies:
                ref = parse_ref(body)
                queue.add((ref.namespace, ref.name))
            children = deps.children
            log.info(
                "resync: %d stores queued; children read from memory %d times, with a GET %d times "
                "(since start)",
                len(bodies),
                children.hits,
                children.misses,
            )
    finally:
        if own:
            await queue.stop()


# --- per-store handlers --------------------------------------------------------------------------------


def _queue(memo: Any) -> WorkQueue | None:
    resync = getattr(memo, "resync", None)
    return resync.queue if isinstance(resync, Resync) else None


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile_store(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Queue a pass now and return: the queue runs it, retries it and reports through status (module doc).

    Queued now even if the store is backing off: a changed spec may be the fix."""
    queue = _queue(memo)
    if queue is None:  # not configured (kopf's startup handler has not run): nothing can pass yet
        raise kopf.TemporaryError("the work queue is not running yet", delay=1.0)
    queue.add((str(namespace), str(name)))


# --- children: drift and readiness without waiting for the resync -------------------------------------

_CHILD_LABELS = {LABEL_MANAGED_BY: FIELD_MANAGER}
#: The children's resources, as kopf's settings name them.
CHILD_RESOURCES = (
    ("apps", "v1", "statefulsets"),
    ("v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
)


@kopf.on.event("apps", "v1", "statefulsets", labels=_CHILD_LABELS)
@kopf.on.event("v1", "services", labels=_CHILD_LABELS)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=_CHILD_LABELS)
async def child_changed(body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A child was listed, added, modified or deleted: the children cache learns it, and its store gets a
    pass now, not at the next resync.

    This is what makes a deleted Service come back within a second and what moves WorkloadReady as
    soon as the StatefulSet controller reports ready replicas. The pass re-reads the store; if it is
    gone or being deleted the pass does nothing, so garbage collection is never fought.
    """
    deps = getattr(memo, "deps", None)
    if isinstance(deps, Deps):
        deps.children.observe(event.get("type"), body)
    namespace = body.get("metadata", {}).get("namespace")
    owners = body.get("metadata", {}).get("ownerReferences") or ()
    store = next(
        (
            o.get("name")
            for o in owners
            if o.get("kind") == KIND and str(o.get("apiVersion", "")).startswith(GROUP)
        ),
        None,
    )
    if not namespace or not store:
        return
    queue = _queue(memo)
    if queue is not None:
        # A burst of child events (a rollout, a GC sweep) within the pause costs one pass.
        queue.add((str(namespace), str(store)), delay=NUDGE_COALESCE_SECONDS)


def _deletes_topic(spec: kopf.Spec, **_: Any) -> bool:
    return spec.get("topicDeletionPolicy") == "Delete"


def _seconds_since(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    try:
        since = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, (datetime.now(UTC) - since).total_seconds())


async def finish_store(
    raw: dict[str, Any], deps: Deps, *, give_up: bool, waited: float, queue: WorkQueue | None = None
) -> deletion.DeletionOutcome:
    """Stop the workload, delete the topic the store created (deletion.py), report it in an Event.

    Holds the store's key on `queue` meanwhile: no pass of the store runs alongside (one running now is
    waited for; passes skip a store with a deletionTimestamp afterwards).
    Raises OperatorError for a retry unless `give_up`: then trouble ends in a TopicLeftBehind outcome.
    """
    ref = parse_ref(raw)
    held = queue.exclusive((ref.namespace, ref.name)) if queue is not None else contextlib.nullcontext()
    try:
        async with held:
            outcome = await deletion.finalize(raw, deps, give_up=give_up)
    except OperatorError as exc:
        if not (give_up or exc.permanent):
            raise
        outcome = deletion.left_behind(raw, exc, waited)
    (log.warning if outcome.warning else log.info)("%s/%s: %s", ref.namespace, ref.name, outcome.message)
    with contextlib.suppress(OperatorError):  # a terminating namespace accepts no new Events
        await deps.kube.post_event(
            {**raw, "apiVersion": f"{GROUP}/{VERSION}", "kind": "KeyValueStore"},
            type_="Warning" if outcome.warning else "Normal",
            reason=str(outcome.reason),
            message=outcome.message,
        )
    deps.forget(ref)
    if queue is not None:
        queue.forget((ref.namespace, ref.name))
    return outcome


def _finish_on_uninstall(deps: Deps, memo: Any) -> uninstall.Finish:
    async def finish(raw: dict[str, Any]) -> deletion.DeletionOutcome:
        waited = _seconds_since((raw.get("metadata") or {}).get("deletionTimestamp"))
        return await finish_store(raw, deps, give_up=True, waited=waited, queue=_queue(memo))

    return finish


async def _uninstall_under_way(deps: Deps, state: uninstall.Drain) -> bool:
    """Whether the operator's own uninstall has begun (its guarded ServiceAccount is being deleted)."""
    if state.draining:
        return True
    if state.guards is None or not state.armed:
        return False
    try:
        return await uninstall.being_deleted(deps.kube, state.guards)
    except OperatorError:
        return False  # cannot tell: the handler does its job, as without guards


@kopf.on.delete(GROUP, VERSION, PLURAL, when=_deletes_topic)
async def delete_topic(body: kopf.Body, retry: int, memo: kopf.Memo, **_: Any) -> None:
    """topicDeletionPolicy Delete: stop the workload, then delete the topic the store created (deletion.py).

    Never traps the store: past `--deletion-timeout` seconds since its deletionTimestamp, trouble that
    would otherwise be retried (Kafka down, the credentials Secret gone) ends in a Warning Event saying
    the topic was left behind, and kopf removes the finalizer. While the operator itself is being
    uninstalled (uninstall.py) there is no time for retries: one attempt, then the same give-up.
    """
    deps = _deps(memo)
    options = _options(memo)
    raw = dict(body)
    if await _uninstall_under_way(deps, _drain(memo)):
        # The drain finishes this store, then releases the ServiceAccount's guard in the next call, while
        # the CRD — kept by this store's finalizer — and the CRD-owned rights that call needs still exist.
        # Finished here instead, the last store would let the CRD go first and take those rights along.
        raise kopf.TemporaryError(
            "the operator is being uninstalled: its drain finishes this store", delay=uninstall.POLL_SECONDS
        )
    waited = _seconds_since((raw.get("metadata") or {}).get("deletionTimestamp"))
    give_up = waited >= options.deletion_timeout or _drain(memo).draining
    try:
        await finish_store(raw, deps, give_up=give_up, waited=waited, queue=_queue(memo))
    except OperatorError as exc:
        delay = min(retry_delay(retry, exc), max(1.0, options.deletion_timeout - waited))
        raise kopf.TemporaryError(
            f"{exc.reason}: topic not deleted yet (giving up in "
            f"{options.deletion_timeout - waited:.0f}s): {exc.message}",
            delay=delay,
        ) from exc
