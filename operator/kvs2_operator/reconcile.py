"""The one level-based reconciliation pass: validate → ensure topic → apply children → observe → status.

Create, resume, spec update, a child's change and the periodic resync all queue the store on one keyed
work queue (handlers.py, workqueue.py), whose workers call `reconcile()` — never two passes of one store at
once. The pass derives everything from the object as it is now, so running it twice is harmless and
running it after any failure heals what can be healed. The pass never raises for expected trouble: it
returns an `Outcome` with the status it wrote and the first error, and the queue decides (a transient
error backs the store off; a permanent one waits for the spec to change).

What a pass reads (`Reads`): the store itself with one GET (the freshest status is what decides which
Events to post); its watched children (StatefulSet, Services, PodDisruptionBudget) from the watch-fed
cache (cache.py), a GET only on a miss; Secrets and ConfigMaps (never watched: RBAC grants only `get`)
with one GET each per pass, however many steps need them; optional children the spec does not ask for
(Certificate, NetworkPolicy, a disabled PDB) once per process, then remembered as absent (`Deps.absent`).
Writes are server-side apply; their responses are fresh and are what the pass goes on with.

Order matters in one place: the status is written at the end of EVERY pass, including failing ones,
so `Ready=False, reason=KafkaUnavailable` is visible while kopf retries.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvs2_operator import diagnose, metrics, protection, render, replicas, volumes
from kvs2_operator.cache import WATCHED_KINDS, Children
from kvs2_operator.crd import GROUP, KIND, VERSION, pdb_name, statefulset_name
from kvs2_operator.errors import (
    ChildUpdateRefusedError,
    CredentialsUnavailableError,
    KafkaClusterChangedError,
    KubernetesInvalidError,
    OperatorError,
    Reason,
    ResourceConflictError,
    SpecError,
    TopicInUseError,
    TopicLostError,
)
from kvs2_operator.kafka_admin import TopicAdmins
from kvs2_operator.kafka_security import admin_settings
from kvs2_operator.kube import KubeApi, Ref
from kvs2_operator.model import OperatorDefaults, Store, StoreRef, parse_ref, parse_store
from kvs2_operator.ownership import Claim, Ownership, claim_from_status, holder_of
from kvs2_operator.status import (
    WORKLOAD_READY,
    Condition,
    build_status,
    publish,
    topic_condition,
    workload_condition,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reservation:
    """A claim being made (between "nobody holds this topic" and the status write that records it)."""

    namespace: str
    name: str
    uid: str
    claim: Claim | None = None


@dataclass
class Claims:
    """Serialises the "does another store hold this topic?" decision across stores of this process.

    The decision reads the other stores' statuses; a claim made by a pass whose status write has not
    landed yet is invisible there, so it is reserved here first (keyed by cluster id and topic name).
    """

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reserved: dict[tuple[str, str], Reservation] = field(default_factory=dict)


@dataclass
class Deps:
    """What a pass needs from the outside world, created once per operator process."""

    kube: KubeApi
    topics: TopicAdmins = field(default_factory=TopicAdmins)
    #: The namespaces the operator serves (None: all) — where other stores may hold a topic.
    namespaces: list[str] | None = None
    defaults: OperatorDefaults = field(default_factory=OperatorDefaults)
    claims: Claims = field(default_factory=Claims)
    #: The last admin config that worked for each store (uid): deletion may outlive the Secret.
    admin_configs: dict[str, dict[str, str]] = field(default_factory=dict)
    #: How each replica's metrics port is read (kvs2_operator.replicas), and how long a pod may take.
    scrape: replicas.Fetch = replicas.http_fetch
    scrape_timeout: float = replicas.SCRAPE_TIMEOUT
    #: The stores' children as the watches report them (cache.py; fed by handlers.child_changed).
    children: Children = field(default_factory=Children)
    #: Per store (uid): optional children the spec does not ask for that a pass of this process found
    #: absent or removed (`_remove_unwanted`). Only the operator creates them, so they are not looked for
    #: again until the spec asks for them (and then drops them) again. Empty after a restart: one look.
    absent: dict[str, frozenset[str]] = field(default_factory=dict)

    def forget(self, ref: StoreRef) -> None:
        self.admin_configs.pop(ref.uid, None)
        self.absent.pop(ref.uid, None)
        self.topics.release(ref.uid)  # its admin client is closed unless another store uses it
        for key, reservation in list(self.claims.reserved.items()):
            if reservation.uid == ref.uid:
                del self.claims.reserved[key]


@dataclass(frozen=True)
class Outcome:
    status: Mapping[str, Any]
    error: OperatorError | None


def store_ref(namespace: str | None, name: str | None = None) -> Ref:
    return Ref(f"{GROUP}/{VERSION}", KIND, namespace, name)


class Getter(Protocol):
    """Reads one object (None: it does not exist): `KubeApi` itself, or a pass's `Reads`."""

    async def get(self, ref: Ref) -> dict[str, Any] | None: ...


@dataclass
class Reads:
    """Everything one pass reads besides the store (see the module doc): watched children from the cache,
    anything else GET once and remembered until the pass ends (a Secret both the admin config and the
    credentials hash need is read once)."""

    kube: KubeApi
    children: Children
    _seen: dict[Ref, dict[str, Any] | None] = field(default_factory=dict)

    async def get(self, ref: Ref) -> dict[str, Any] | None:
        if ref.kind in WATCHED_KINDS:
            return await self.children.get(self.kube, ref)
        if ref not in self._seen:
            self._seen[ref] = await self.kube.get(ref)
        found = self._seen[ref]
        return copy.deepcopy(found) if found is not None else None


async def kafka_admin_config(store: Store, kube: Getter) -> dict[str, str]:
    """The operator's own AdminClient settings: bootstrap servers plus SASL credentials from the Secret.

    spec.kafka.clientConfig is NOT used here: it is for the data plane and may name files (CA bundles)
    that exist only inside its pods.
    """
    kafka = store.spec.kafka
    config = {"bootstrap.servers": kafka.bootstrap_servers}

    async def get(kind: str, name: str) -> Mapping[str, Any] | None:
        return await kube.get(Ref("v1", kind, store.namespace, name))

    config.update(await admin_settings(kafka.tls, kafka.sasl, store.namespace, get))
    auth = kafka.authentication
    if auth is None:
        return config
    secret = await kube.get(Ref("v1", "Secret", store.namespace, auth.secret_name))
    if secret is None:
        raise CredentialsUnavailableError(
            f"Secret {store.namespace}/{auth.secret_name} (spec.kafka.authentication.secretName) not found"
        )
    data = secret.get("data") or {}
    values: dict[str, str] = {}
    for key in (auth.username_key, auth.password_key):
        if key not in data:
            raise CredentialsUnavailableError(
                f"Secret {store.namespace}/{auth.secret_name} has no key {key!r}"
            )
        values[key] = base64.b64decode(data[key]).decode()
    config.update(
        {
            "security.protocol": auth.security_protocol,
            "sasl.mechanism": auth.mechanism,
            "sasl.username": values[auth.username_key],
            "sasl.password": values[auth.password_key],
        }
    )
    return config


async def _ensure_topic(
    store: Store, deps: Deps, reads: Reads, previous: Mapping[str, Any]
) -> tuple[Condition, Claim]:
    topic = store.spec.kafka.topic
    config = await kafka_admin_config(store, reads)
    admin = deps.topics.for_config(config, user=store.ref.uid)
    claim = claim_from_status(previous, topic.name)
    if claim is not None:
        result = await admin.ensure(topic, claim=claim)
    else:
        cluster = await admin.cluster_id()
        key = (cluster, topic.name)
        async with deps.claims.lock:
            await _refuse_if_held(store, cluster, deps)
            mine = deps.claims.reserved.get(key)
            deps.claims.reserved[key] = Reservation(
                store.namespace, store.name, store.ref.uid, mine.claim if mine is not None else None
            )
        try:
            result = await admin.ensure(topic, claim=None, cluster_id=cluster)
        except OperatorError:
            if deps.claims.reserved.get(key, Reservation("", "", "")).claim is None:
                deps.claims.reserved.pop(key, None)
            raise
        claim = result.claim
        # This process created it in an earlier pass whose status write was lost: still Created.
        if (
            mine is not None
            and mine.uid == store.ref.uid
            and mine.claim
            and mine.claim.topic_id == claim.topic_id
        ):
            claim = mine.claim
        deps.claims.reserved[key] = Reservation(store.namespace, store.name, store.ref.uid, claim)
    deps.admin_configs[store.ref.uid] = config
    reason = Reason.TOPIC_CREATED if claim.ownership == Ownership.CREATED else Reason.TOPIC_ADOPTED
    state = result.state
    return (
        topic_condition(
            True,
            reason,
            f"topic {state.name}: {state.partitions} partitions, replication factor "
            f"{state.replication_factor}, cleanup.policy={state.config.get('cleanup.policy', 'compact')}, "
            f"min.insync.replicas={state.config.get('min.insync.replicas', '?')}",
        ),
        claim,
    )


async def _refuse_if_held(store: Store, cluster: str, deps: Deps) -> None:
    """TopicInUse when another store recorded (or this process reserved for it) the same topic."""
    topic = store.spec.kafka.topic.name
    others = await list_stores(deps, deps.namespaces)
    holder = holder_of(topic, cluster, store.ref.uid, others)
    if holder is not None:
        raise TopicInUseError(
            f"topic {topic} on Kafka cluster {cluster} belongs to KeyValueStore {holder.namespace}/"
            f"{holder.name} (it {holder.ownership.lower()} it); two stores must not own one topic. Nothing "
            "was changed: give this store another spec.kafka.topic.name, or delete one of the two"
        )
    reservation = deps.claims.reserved.get((cluster, topic))
    alive = {str((b.get("metadata") or {}).get("uid")) for b in others}
    if reservation is not None and reservation.uid != store.ref.uid:
        if reservation.uid in alive:
            raise TopicInUseError(
                f"topic {topic} on Kafka cluster {cluster} is being claimed by KeyValueStore "
                f"{reservation.namespace}/{reservation.name}; two stores must not own one topic"
            )
        del deps.claims.reserved[(cluster, topic)]


async def _check_not_foreign(reads: Getter, obj: Mapping[str, Any], store: Store) -> dict[str, Any] | None:
    """Refuse to take over an object with the child's name that another controller owns; the existing
    object otherwise (None if there is none). Read from the watch cache: an object without the operator's
    label is never in it, so it is read with a GET and refused here just the same."""
    existing = await reads.get(Ref.of(obj))
    if existing is None:
        return None
    for owner in existing.get("metadata", {}).get("ownerReferences") or ():
        if owner.get("controller") and owner.get("uid") != store.ref.uid:
            raise ResourceConflictError(
                f"{obj['kind']} {store.namespace}/{obj['metadata']['name']} exists and is controlled by "
                f"{owner.get('kind')} {owner.get('name')}; delete or rename it, or rename this store"
            )
    return existing


#: Phrases of the API server's 422 for a field that cannot change on an existing object.
_IMMUTABLE_MARKERS = ("field is immutable", "updates to statefulset spec for fields other than")


async def credentials_hash(store: Store, kube: Getter) -> str | None:
    """A digest of the credentials Secret's keys the pods use: put on the pod template, so that a changed
    Secret rolls the pods (env from secretKeyRef is read only when a container starts). None without
    authentication; the StatefulSet's current value while the Secret is unreadable (no roll for that)."""
    auth = store.spec.kafka.authentication
    if auth is None:
        return None
    secret = await kube.get(Ref("v1", "Secret", store.namespace, auth.secret_name))
    data = (secret or {}).get("data") or {}
    if secret is None or auth.username_key not in data or auth.password_key not in data:
        sts = await kube.get(Ref("apps/v1", "StatefulSet", store.namespace, statefulset_name(store.name)))
        template = ((sts or {}).get("spec") or {}).get("template") or {}
        current = (template.get("metadata") or {}).get("annotations") or {}
        value = current.get(render.CREDENTIALS_HASH_ANNOTATION)
        return str(value) if value else None
    digest = hashlib.sha256()
    for key in (auth.username_key, auth.password_key):
        digest.update(f"{key}\0{data[key]}\0".encode())
    return digest.hexdigest()[:16]


async def _apply_children(store: Store, deps: Deps, reads: Reads) -> dict[str, Any]:
    """Server-side apply of every child; returns the StatefulSet as the API server stored it."""
    statefulset: dict[str, Any] = {}
    wanted_statefulset: dict[str, Any] | None = None
    for obj in render.render_children(store, await credentials_hash(store, reads)):
        existing = await _check_not_foreign(reads, obj, store)
        if obj["kind"] == "StatefulSet":
            if ((existing or {}).get("metadata") or {}).get("deletionTimestamp"):
                raise volumes.StatefulSetReplacingError(
                    f"StatefulSet {store.namespace}/{obj['metadata']['name']} is being deleted; the next "
                    "pass creates it again once it is gone"
                )
            # spec.storage.size changed: applied with the claim template as it is, the claims grow, then
            # the StatefulSet is replaced to take the new template (volumes.py).
            wanted_statefulset = copy.deepcopy(obj)
            volumes.pin_template(obj, existing)
        try:
            if obj["kind"] == "Certificate":  # a clear CertManagerMissing when the kind is not served
                applied = await protection.apply_certificate(deps.kube, obj)
            else:
                applied = await deps.kube.apply(obj)
        except KubernetesInvalidError as exc:
            if any(marker in exc.message for marker in _IMMUTABLE_MARKERS):
                raise ChildUpdateRefusedError(
                    f"{obj['kind']} {store.namespace}/{obj['metadata']['name']} cannot be changed in place "
                    f"({exc.message}). The spec is valid: the operator must replace this child, which it "
                    "does not do by itself yet — delete the child (kubectl delete --cascade=orphan for a "
                    "StatefulSet keeps its pods) and the next pass re-creates it",
                    exc.status,
                ) from exc
            raise
        deps.children.confirm(Ref.of(obj), applied)  # the response is fresh: its uid is the one alive
        if obj["kind"] == "StatefulSet":
            statefulset = applied
    await _remove_unwanted(store, deps, reads)
    # Every pass (one label-selected list): claims grown earlier stay above the template's size, so a
    # size set back to the template's is still a shrink, and a scale-up's new claims need growing too.
    await volumes.grow(store, deps.kube, volumes.template_size(statefulset))
    if wanted_statefulset is not None and volumes.outgrown(wanted_statefulset, statefulset):
        sts_ref = Ref.of(wanted_statefulset)
        await volumes.replace_statefulset(deps.kube, sts_ref)
        deps.children.confirm(sts_ref, None)
        statefulset = await deps.kube.apply(wanted_statefulset)
        deps.children.confirm(sts_ref, statefulset)
        log.info("%s/%s: StatefulSet created again with the new claim template", store.namespace, store.name)
    return statefulset


#: The children a spec may stop asking for: removed by the pass then (protection.prune handles the first two).
_OPTIONAL_KINDS = frozenset({"Certificate", "NetworkPolicy", "PodDisruptionBudget"})


async def _remove_unwanted(store: Store, deps: Deps, reads: Reads) -> None:
    """Delete the optional children this store owns that its spec no longer asks for — looking only for
    those not already known absent (`Deps.absent`): a steady pass makes no GET for them."""
    wanted = {obj["kind"] for obj in render.render_protection(store)}
    if render.render_pdb(store) is not None:
        wanted.add("PodDisruptionBudget")
    known_absent = deps.absent.get(store.ref.uid, frozenset()) - wanted
    await protection.prune(deps.kube, store.namespace, store.name, store.ref.uid, wanted | known_absent)
    if "PodDisruptionBudget" not in wanted | known_absent:
        pdb_ref = Ref("policy/v1", "PodDisruptionBudget", store.namespace, pdb_name(store.name))
        existing = await reads.get(pdb_ref)
        owners = (existing or {}).get("metadata", {}).get("ownerReferences") or ()
        if any(o.get("uid") == store.ref.uid for o in owners):
            await deps.kube.delete(pdb_ref)
            deps.children.confirm(pdb_ref, None)
    deps.absent[store.ref.uid] = _OPTIONAL_KINDS - wanted


async def _observe_statefulset(store_ns: str, store_name: str, reads: Getter) -> dict[str, Any] | None:
    return await reads.get(Ref("apps/v1", "StatefulSet", store_ns, statefulset_name(store_name)))


def _replica_counts(statefulset: Mapping[str, Any] | None) -> dict[str, int]:
    status = (statefulset or {}).get("status") or {}
    return {
        "replicas": int(status.get("replicas", 0) or 0),
        "readyReplicas": int(status.get("readyReplicas", 0) or 0),
    }


@metrics.reconcile_pass
async def reconcile(body: Mapping[str, Any], deps: Deps) -> Outcome | None:
    """One pass over the store `body` names. Returns None when the store is gone or being deleted.

    The caller (the work queue) runs one pass of a store at a time; the delete handler holds the store's
    key while it deletes (handlers.finish_store). The object is re-read with a GET: a queued key, kopf's
    body and a resync listing may all be a few events old, and a pass that starts from a stale status
    would re-post Events it already posted.
    """
    ref = parse_ref(body)
    try:
        fresh = await deps.kube.get(store_ref(ref.namespace, ref.name))
    except OperatorError as exc:
        return Outcome(status=body.get("status") or {}, error=exc)
    if fresh is None:
        deps.forget(ref)
        return None
    if fresh.get("metadata", {}).get("deletionTimestamp"):
        return None  # the finalizer's work (deletion.py) may still need what Deps remembers
    fresh = dict(_with_identity(fresh))
    return await _reconcile(fresh, parse_ref(fresh), deps)


async def _reconcile(body: Mapping[str, Any], ref: StoreRef, deps: Deps) -> Outcome:
    previous: Mapping[str, Any] = body.get("status") or {}
    extra: dict[str, Any] = {"selector": render.selector_string(ref.name)}
    errors: list[OperatorError] = []
    reads = Reads(deps.kube, deps.children)

    try:
        store = parse_store(body, deps.defaults)
    except SpecError as exc:
        errors.append(exc)
        topic_cond = topic_condition(False, exc.reason, exc.message)
        workload_cond = Condition(
            WORKLOAD_READY, None, exc.reason, "not reconciled while the spec is invalid"
        )
        observed = await _safe_observe(ref, reads, errors)
        extra.update(_replica_counts(observed))
        workload_cond = await _with_replica_phases(workload_cond, ref, observed, deps, extra)
        return await _finish(body, ref, deps, previous, topic_cond, workload_cond, extra, errors)

    extra["endpoint"] = render.endpoint(store)
    extra["image"] = store.spec.image
    topic_name = store.spec.kafka.topic.name
    owned = claim_from_status(previous, topic_name) is not None

    # 1. The topic.
    try:
        topic_cond, claim = await _ensure_topic(store, deps, reads, previous)
        topic_usable = True
        extra.update(claim.status_fields())
    except OperatorError as exc:
        errors.append(exc)
        topic_cond = topic_condition(False, exc.reason, exc.message)
        # A topic the store owns is still there, unchanged (Kafka is down, a spec change was refused):
        # keep its workload reconciled. Not when the topic is lost or on another cluster: the pods would
        # be pointed at a topic that is not the store's.
        topic_usable = owned and not isinstance(
            exc, TopicLostError | KafkaClusterChangedError | TopicInUseError
        )

    # 2. The children, and what the StatefulSet controller reports about them.
    statefulset: dict[str, Any] | None = None
    if topic_usable:
        try:
            statefulset = await _apply_children(store, deps, reads)
            workload_cond = workload_condition(statefulset, store.spec.replicas)
            if workload_cond.status is False:
                workload_cond = await _explained(workload_cond, store, statefulset, deps)
        except OperatorError as exc:
            errors.append(exc)
            workload_cond = Condition(WORKLOAD_READY, False, exc.reason, exc.message)
            statefulset = await _safe_observe(ref, reads, errors)
    else:
        statefulset = await _safe_observe(ref, reads, errors)
        workload_cond = Condition(
            WORKLOAD_READY,
            False,
            Reason.WAITING_FOR_TOPIC,
            f"the workload is created once topic {topic_name} is ready"
            if statefulset is None
            else f"the workload is left as it is until topic {topic_name} is usable",
        )
    extra.update(_replica_counts(statefulset))
    workload_cond = await _with_replica_phases(workload_cond, ref, statefulset, deps, extra)

    return await _finish(body, ref, deps, previous, topic_cond, workload_cond, extra, errors)


async def _explained(
    cond: Condition, store: Store, statefulset: Mapping[str, Any] | None, deps: Deps
) -> Condition:
    """The condition with the controllers' own reason quoted, when they gave one (diagnose.py)."""
    try:
        problem = await diagnose.workload_problem(
            deps.kube, store.namespace, store.name, statefulset, store.spec.replicas
        )
    except OperatorError as exc:  # explaining is a courtesy: never fail the pass for it
        log.info("%s/%s: cannot look into the workload: %s", store.namespace, store.name, exc)
        return cond
    if not problem:
        return cond
    return Condition(cond.type, cond.status, cond.reason, f"{cond.message}; {problem}")


async def _with_replica_phases(
    cond: Condition,
    ref: StoreRef,
    statefulset: Mapping[str, Any] | None,
    deps: Deps,
    extra: dict[str, Any],
) -> Condition:
    """Each pod's phase and lag into `extra` (pods, phases, maxLag), and the pods that do not serve named
    in the condition's message (which Ready repeats). Without a StatefulSet there are no pods to ask."""
    reports: list[replicas.ReplicaReport] | None = []
    if statefulset is not None:
        try:
            reports = await replicas.observe(
                deps.kube, ref.namespace, ref.name, fetch=deps.scrape, timeout=deps.scrape_timeout
            )
        except OperatorError as exc:  # a courtesy, like _explained: never fail the pass for it
            log.info("%s/%s: cannot list the pods to ask their phase: %s", ref.namespace, ref.name, exc)
            reports = None
    extra.update(replicas.status_fields(reports))
    phrase = replicas.not_serving(reports or ())
    if phrase is None:
        return cond
    return Condition(cond.type, cond.status, cond.reason, f"{cond.message}; {phrase}")


async def _safe_observe(ref: StoreRef, reads: Getter, errors: list[OperatorError]) -> dict[str, Any] | None:
    try:
        return await _observe_statefulset(ref.namespace, ref.name, reads)
    except OperatorError as exc:
        errors.append(exc)
        return None


async def _finish(
    body: Mapping[str, Any],
    ref: StoreRef,
    deps: Deps,
    previous: Mapping[str, Any],
    topic_cond: Condition,
    workload_cond: Condition,
    extra: Mapping[str, Any],
    errors: list[OperatorError],
) -> Outcome:
    new_status = build_status(
        previous, generation=ref.generation, topic=topic_cond, workload=workload_cond, extra=extra
    )
    try:
        written = await publish(deps.kube, _with_identity(body), previous, new_status)
        if written:
            log.info(
                "%s/%s: status written (Ready=%s %s)",
                ref.namespace,
                ref.name,
                new_status["conditions"][0]["status"],
                new_status["conditions"][0]["reason"],
            )
    except OperatorError as exc:
        errors.append(exc)
    # Permanent errors first: they tell the caller not to retry blindly.
    errors.sort(key=lambda e: not e.permanent)
    return Outcome(status=new_status, error=errors[0] if errors else None)


def _with_identity(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """List items may lack apiVersion/kind; Refs and Events need them."""
    return {**body, "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND}


async def list_stores(deps: Deps, namespaces: list[str] | None) -> list[dict[str, Any]]:
    """Every KeyValueStore the operator serves (all namespaces, or the given ones)."""
    stores: list[dict[str, Any]] = []
    targets: list[str | None] = list(namespaces) if namespaces else [None]
    for namespace in targets:
        for item in await deps.kube.list(store_ref(namespace)):
            stores.append(dict(_with_identity(item)))
    return stores
