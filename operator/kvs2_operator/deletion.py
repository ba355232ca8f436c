"""What happens when a store with `topicDeletionPolicy: Delete` is deleted (its finalizer's work).

Order, holding the store's key on the work queue (so no reconcile pass interleaves; passes also skip a
store that has a deletionTimestamp, so none can re-create the topic afterwards):

1. scale the StatefulSet to 0 and wait until its pods are gone — no replica may write while (or after)
   the topic is deleted (the data plane also never auto-creates topics);
2. delete the topic only if the store *created* it, on the cluster and with the topic id recorded in
   its status (`ownership.deletion_verdict`); an adopted, shared, lost or foreign topic stays.

It always finishes: the caller (handlers.py) gives up after `--deletion-timeout` seconds counted from
the store's deletionTimestamp (so an operator restart does not reset it) when Kafka or the credentials
stay unavailable, and reports the topic as left behind with a Warning Event. The credentials of the last
successful pass are remembered, so deleting a namespace (which deletes the Secret too) still works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvs2_operator import render
from kvs2_operator.crd import statefulset_name
from kvs2_operator.errors import CredentialsUnavailableError, OperatorError, Reason, SpecError, TransientError
from kvs2_operator.kube import Ref
from kvs2_operator.model import StoreRef, parse_ref, parse_store
from kvs2_operator.ownership import Ownership, Verdict, claim_from_status, deletion_verdict
from kvs2_operator.reconcile import Deps, kafka_admin_config

log = logging.getLogger(__name__)

#: How long one finalizer call waits for the pods to go before handing back to kopf for a retry.
POD_WAIT_SECONDS = 10.0
POD_POLL_SECONDS = 0.5


class WorkloadStillRunningError(TransientError):
    """Pods of the store still exist; the topic is deleted only once they are gone."""

    reason = Reason.WORKLOAD_PROGRESSING


@dataclass(frozen=True)
class DeletionOutcome:
    reason: Reason
    message: str

    @property
    def warning(self) -> bool:
        return self.reason == Reason.TOPIC_LEFT_BEHIND


async def stop_workload(ref: StoreRef, deps: Deps, *, wait: float | None = None) -> None:
    """Scale the StatefulSet to 0 and wait (bounded) until no pod of the store exists."""
    sts = Ref("apps/v1", "StatefulSet", ref.namespace, statefulset_name(ref.name))
    existing = await deps.kube.get(sts)
    if existing is not None and (existing.get("spec") or {}).get("replicas") != 0:
        await deps.kube.patch(sts, {"spec": {"replicas": 0}})
        log.info("%s/%s: StatefulSet scaled to 0 before deleting the topic", ref.namespace, ref.name)
    pods_ref = Ref("v1", "Pod", ref.namespace)
    selector = render.selector_string(ref.name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (POD_WAIT_SECONDS if wait is None else wait)
    while True:
        pods = await deps.kube.list(pods_ref, label_selector=selector)
        if not pods:
            return
        if loop.time() >= deadline:
            names = ", ".join(sorted(str(p.get("metadata", {}).get("name")) for p in pods))
            raise WorkloadStillRunningError(
                f"waiting for the store's pods to stop before deleting the topic: {names}"
            )
        await asyncio.sleep(POD_POLL_SECONDS)


async def _admin_config(body: Mapping[str, Any], deps: Deps) -> dict[str, str]:
    """This store's admin config; the last one that worked if the spec or the Secret cannot give one now."""
    uid = parse_ref(body).uid
    try:
        return await kafka_admin_config(parse_store(body, deps.defaults), deps.kube)
    except (SpecError, CredentialsUnavailableError) as exc:
        remembered = deps.admin_configs.get(uid)
        if remembered is None:
            raise CredentialsUnavailableError(
                f"cannot reach Kafka to delete the topic: {exc.message}"
            ) from exc
        log.info("%s: using the Kafka credentials of the last pass (%s)", parse_ref(body).name, exc.message)
        return remembered


async def delete_owned_topic(body: Mapping[str, Any], deps: Deps) -> DeletionOutcome:
    """Step 2: delete the topic if (and only if) the store created it and it is provably still that one."""
    status = body.get("status") or {}
    claim = claim_from_status(status)
    topic = status.get("topic")
    if claim is None or claim.ownership != Ownership.CREATED:
        verdict = deletion_verdict(claim, str(topic) if topic else None, None, None)
        return DeletionOutcome(Reason.TOPIC_RETAINED, verdict.why)
    admin = deps.topics.for_config(await _admin_config(body, deps), user=parse_ref(body).uid)
    cluster = await admin.cluster_id()
    state = await admin.describe(claim.topic) if cluster == claim.cluster_id else None
    verdict = deletion_verdict(claim, claim.topic, cluster, state.topic_id if state is not None else None)
    if verdict.verdict == Verdict.DELETE:
        deleted = await admin.delete(claim.topic)
        if deleted:
            return DeletionOutcome(Reason.TOPIC_DELETED, f"topic {claim.topic} (id {claim.topic_id}) deleted")
        return DeletionOutcome(Reason.TOPIC_DELETED, f"topic {claim.topic} was already gone")
    if state is None and cluster == claim.cluster_id:
        return DeletionOutcome(Reason.TOPIC_DELETED, verdict.why)
    return DeletionOutcome(Reason.TOPIC_RETAINED, verdict.why)


async def finalize(body: Mapping[str, Any], deps: Deps, *, give_up: bool) -> DeletionOutcome:
    """Steps 1 and 2; the caller holds the store's key on the work queue (handlers.finish_store), so no
    pass runs meanwhile. Raises OperatorError for the caller to retry or give up on.

    `give_up`: the deadline passed — pods still running no longer hold the topic deletion back.
    """
    ref = parse_ref(body)
    try:
        await stop_workload(ref, deps)
    except OperatorError as exc:
        if not give_up:
            raise
        log.warning("%s/%s: deleting the topic although %s", ref.namespace, ref.name, exc.message)
    return await delete_owned_topic(body, deps)


def left_behind(body: Mapping[str, Any], error: OperatorError, waited: float) -> DeletionOutcome:
    topic = (body.get("status") or {}).get("topic") or "the topic"
    return DeletionOutcome(
        Reason.TOPIC_LEFT_BEHIND,
        f"gave up deleting {topic} after {waited:.0f}s and removed the finalizer; the topic was left behind "
        f"and must be deleted by hand if it is no longer wanted. Last error ({error.reason}): "
        f"{error.message}",
    )
