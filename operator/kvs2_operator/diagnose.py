"""Why a store's replicas are not ready, in the words of the controllers that know.

`ReplicasNotReady` alone sends a person digging. When pods cannot be created (PodSecurity admission, a
ResourceQuota, a missing ServiceAccount) the StatefulSet controller says so only in `FailedCreate`
Events on the StatefulSet; when they cannot be scheduled or started, the pods' own conditions and
container states say so. This module quotes the first such reason in the Ready message.

Pure functions over the objects (unit-tested), plus one async gatherer; messages contain no counts or
timestamps that change from pass to pass, so an unchanged problem causes no status write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kvs2_operator import render
from kvs2_operator.kube import KubeApi, Ref

#: Container waiting reasons that mean "this will not get better by waiting a little".
STUCK_CONTAINER_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
MAX_QUOTE = 600


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 1] + "…"


def failed_create(events: Iterable[Mapping[str, Any]]) -> str | None:
    """The newest FailedCreate Event's message (the StatefulSet controller's reason), if any."""
    failures = [e for e in events if e.get("reason") == "FailedCreate"]
    if not failures:
        return None

    def when(event: Mapping[str, Any]) -> str:
        return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")

    newest = max(failures, key=when)
    return f"the StatefulSet controller cannot create pods: {_clip(str(newest.get('message', '')))}"


def pod_problem(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The first pod (by name) that cannot be scheduled or whose container is stuck, quoted."""
    for pod in sorted(pods, key=lambda p: str(p.get("metadata", {}).get("name", ""))):
        name = pod.get("metadata", {}).get("name")
        status = pod.get("status") or {}
        for cond in status.get("conditions") or ():
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                why = cond.get("message") or cond.get("reason") or "not scheduled"
                return f"pod {name} cannot be scheduled: {_clip(why)}"
        for container in status.get("containerStatuses") or ():
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_CONTAINER_REASONS:
                detail = f": {_clip(waiting['message'])}" if waiting.get("message") else ""
                return f"pod {name} container {container.get('name')}: {waiting['reason']}{detail}"
    return None


def explain(
    statefulset: Mapping[str, Any] | None,
    desired: int,
    pods: Iterable[Mapping[str, Any]],
    events: Iterable[Mapping[str, Any]],
) -> str | None:
    """Pods missing → the controller's FailedCreate reason; pods present → a pod's own problem."""
    existing = int(((statefulset or {}).get("status") or {}).get("replicas", 0) or 0)
    if existing < desired:
        quoted = failed_create(events)
        if quoted:
            return quoted
    return pod_problem(pods)


async def workload_problem(
    kube: KubeApi, namespace: str, store: str, statefulset: Mapping[str, Any] | None, desired: int
) -> str | None:
    """Gather pods and the StatefulSet's Events and explain; None when nothing specific is known."""
    pods = await kube.list(Ref("v1", "Pod", namespace), label_selector=render.selector_string(store))
    events: list[dict[str, Any]] = []
    uid = ((statefulset or {}).get("metadata") or {}).get("uid")
    if uid:
        events = await kube.list(
            Ref("v1", "Event", namespace),
            field_selector=f"involvedObject.kind=StatefulSet,involvedObject.uid={uid}",
        )
    return explain(statefulset, desired, pods, events)
