"""A KeyValueStore's status: conditions by Kubernetes API conventions, computed purely, written once.

- Three conditions: `TopicReady`, `WorkloadReady`, and `Ready`, their summary (True only when both are
  True; otherwise it carries the reason and message of the first one that is not).
- Each condition has type/status/reason/message/lastTransitionTime/observedGeneration.
  `lastTransitionTime` changes only when `status` changes — not when the message or reason does — so it
  answers "since when is this store not ready?".
- Reasons come only from `errors.Reason`.
- `publish()` writes the status subresource only if something changed (one write per pass at most)
  and posts one Event per condition whose (status, reason) changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kvs2_operator.errors import Reason
from kvs2_operator.kube import KubeApi, Ref

log = logging.getLogger(__name__)

READY = "Ready"
TOPIC_READY = "TopicReady"
WORKLOAD_READY = "WorkloadReady"
CONDITION_TYPES = (READY, TOPIC_READY, WORKLOAD_READY)

#: Reasons that deserve a Warning Event rather than a Normal one.
WARNING_REASONS = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.NOT_SUPPORTED,
        Reason.TOPIC_INCOMPATIBLE,
        Reason.RESOURCE_CONFLICT,
        Reason.KAFKA_UNAVAILABLE,
        Reason.KAFKA_REJECTED,
        Reason.CREDENTIALS_UNAVAILABLE,
        Reason.KUBERNETES_API_ERROR,
    }
)


#: Status fields that a pass may find unknown and must then remove (not keep from an older pass).
CLEARABLE = ("maxLag",)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None = Unknown
    reason: Reason
    message: str

    @property
    def status_word(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def topic_condition(ok: bool, reason: Reason, message: str) -> Condition:
    return Condition(TOPIC_READY, ok, reason, message)


def workload_condition(statefulset: Mapping[str, Any] | None, desired: int) -> Condition:
    """WorkloadReady from what the StatefulSet controller reports — never from what we asked for."""
    if statefulset is None:
        return Condition(
            WORKLOAD_READY, False, Reason.WORKLOAD_PROGRESSING, "the StatefulSet does not exist yet"
        )
    meta = statefulset.get("metadata", {})
    status = statefulset.get("status", {}) or {}
    generation = int(meta.get("generation", 0))
    observed = int(status.get("observedGeneration", 0))
    if observed < generation:
        return Condition(
            WORKLOAD_READY,
            False,
            Reason.WORKLOAD_PROGRESSING,
            f"the StatefulSet controller has not yet observed generation {generation} (at {observed})",
        )
    ready = int(status.get("readyReplicas", 0) or 0)
    updated = int(status.get("updatedReplicas", 0) or 0)
    if desired == 0:
        return Condition(WORKLOAD_READY, True, Reason.SCALED_TO_ZERO, "spec.replicas is 0: no replica runs")
    if ready < desired:
        return Condition(
            WORKLOAD_READY,
            False,
            Reason.REPLICAS_NOT_READY,
            f"{ready}/{desired} replicas ready (a replica is ready once it has caught up with the topic)",
        )
    if updated < desired:
        return Condition(
            WORKLOAD_READY, False, Reason.WORKLOAD_PROGRESSING, f"rolling update: {updated}/{desired} updated"
        )
    return Condition(WORKLOAD_READY, True, Reason.REPLICAS_READY, f"{ready}/{desired} replicas ready")


def ready_condition(topic: Condition, workload: Condition) -> Condition:
    """The summary. Scaled to zero is not Ready: a store without replicas serves nothing."""
    for part in (topic, workload):
        if part.status is not True:
            return Condition(READY, part.status, part.reason, part.message)
    if workload.reason == Reason.SCALED_TO_ZERO:
        return Condition(READY, False, Reason.SCALED_TO_ZERO, workload.message)
    return Condition(READY, True, Reason.READY, f"topic ready; {workload.message}")


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    conditions: Iterable[Condition],
    *,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Condition dicts in a stable order, keeping lastTransitionTime where the status did not change."""
    before = {str(c.get("type")): c for c in previous or ()}
    merged: list[dict[str, Any]] = []
    for cond in conditions:
        old = before.get(cond.type)
        if old is not None and old.get("status") == cond.status_word and old.get("lastTransitionTime"):
            since = str(old["lastTransitionTime"])
        else:
            since = now
        merged.append(
            {
                "type": cond.type,
                "status": cond.status_word,
                "reason": str(cond.reason),
                "message": cond.message,
                "lastTransitionTime": since,
                "observedGeneration": generation,
            }
        )
    return merged


def transitions(
    previous: Sequence[Mapping[str, Any]] | None, current: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The conditions whose (status, reason) differ from before: each deserves an Event."""
    before = {str(c.get("type")): c for c in previous or ()}
    changed = []
    for cond in current:
        old = before.get(str(cond["type"]))
        if old is None or old.get("status") != cond["status"] or old.get("reason") != cond["reason"]:
            changed.append(cond)
    return changed


def build_status(
    previous: Mapping[str, Any],
    *,
    generation: int,
    topic: Condition,
    workload: Condition,
    extra: Mapping[str, Any],
    now: str | None = None,
) -> dict[str, Any]:
    """The complete new status. `extra`: replicas, readyReplicas, selector, topic, endpoint, and each
    pod's phase and lag (`pods`, `phases`, `maxLag`: kvs2_operator.replicas)."""
    conditions = merge_conditions(
        previous.get("conditions"),
        [ready_condition(topic, workload), topic, workload],
        generation=generation,
        now=now or now_rfc3339(),
    )
    status: dict[str, Any] = {"observedGeneration": generation, "conditions": conditions}
    status.update({k: v for k, v in extra.items() if v is not None})
    # The status is a merge patch: a field that is no longer known is written as null to remove it, or
    # the old value would stay and look current.
    status.update({k: None for k in CLEARABLE if extra.get(k) is None and previous.get(k) is not None})
    return status


def status_changed(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(previous.get(key) != value for key, value in new.items())


async def publish(
    kube: KubeApi, body: Mapping[str, Any], previous: Mapping[str, Any], new: Mapping[str, Any]
) -> bool:
    """Write `new` if it differs from `previous`, then post an Event per transition. True if written."""
    if not status_changed(previous, new):
        return False
    await kube.patch_status(Ref.of(body), new)
    for cond in transitions(previous.get("conditions"), new["conditions"]):
        if cond["type"] == READY and cond["status"] != "True":
            continue  # the failing sub-condition's own Event already tells the story
        reason = Reason(cond["reason"])
        kind = "Warning" if reason in WARNING_REASONS else "Normal"
        try:
            await kube.post_event(
                body, type_=kind, reason=str(reason), message=f"{cond['type']}: {cond['message']}"
            )
        except Exception as exc:  # an Event is a courtesy; failing to post one must not fail the pass
            log.warning("could not post an Event for %s: %s", cond["type"], exc)
    return True
