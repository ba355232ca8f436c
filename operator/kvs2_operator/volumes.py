"""Growing a store's volumes when `spec.storage.size` grows.

A StatefulSet's volumeClaimTemplates cannot change (the API server refuses the update), and Kubernetes
never resizes the claims it made from them. So the operator:

- applies the StatefulSet with its claim template at the size it has (`pin_template`: the rest of the
  StatefulSet is still applied),
- expands each existing claim of the store itself (`grow`) — if the claim's StorageClass sets
  `allowVolumeExpansion`, and then
- replaces the StatefulSet to give it the new claim template (`replace_statefulset`), the usual fix
  (as e.g. Strimzi and the Elastic operator do it): delete it with `propagationPolicy: Orphan` — its pods
  keep running, its claims stay — and create it again; the new StatefulSet adopts the pods (same
  selector; the pod template is unchanged, so no rollout), and a claim made later (scale-up) starts at the
  new size. Only after `grow` succeeded: a size that cannot be reached (class without expansion, shrink)
  leaves the template as it is.

What cannot be done is reported with a reason from the closed list instead of a refused update:
`VolumeExpansionNotSupported` (the class does not allow it, or a claim has no class) and
`VolumeShrinkRefused` (a size below the volumes' current one: Kubernetes cannot shrink a volume). A claim
not yet bound is grown once it is (the API server accepts a new size only on a bound claim).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from kvs2_operator import render
from kvs2_operator.crd import statefulset_name
from kvs2_operator.errors import (
    Reason,
    TransientError,
    VolumeExpansionNotSupportedError,
    VolumeShrinkRefusedError,
)
from kvs2_operator.kube import KubeApi, Ref
from kvs2_operator.model import Store

log = logging.getLogger(__name__)

#: Seconds a pass waits for a StatefulSet deleted with Orphan to be gone before the next pass takes over.
REPLACE_WAIT = 30.0


class StatefulSetReplacingError(TransientError):
    """The StatefulSet is being replaced (or deleted by someone): the next pass creates it again."""

    reason = Reason.WORKLOAD_PROGRESSING


def _size(text: str) -> Decimal:
    return Decimal(parse_quantity(text))  # type: ignore[no-untyped-call]


def _template(statefulset: Mapping[str, Any] | None) -> dict[str, Any] | None:
    for template in ((statefulset or {}).get("spec") or {}).get("volumeClaimTemplates") or ():
        if (template.get("metadata") or {}).get("name") == render.VOLUME_NAME:
            return dict(template)
    return None


def template_size(statefulset: Mapping[str, Any] | None) -> str | None:
    """The size the StatefulSet's data claim template asks for (None: no persistent volume)."""
    template = _template(statefulset)
    if template is None:
        return None
    return str(((template.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage"))


def pin_template(rendered: dict[str, Any], existing: Mapping[str, Any] | None) -> bool:
    """Give `rendered` (a StatefulSet about to be applied) the existing claim template's size, so the
    apply does not touch the immutable field. True if anything changed."""
    size = template_size(existing)
    template = _template(rendered)
    if size is None or template is None or template_size(rendered) == size:
        return False
    template["spec"]["resources"]["requests"]["storage"] = size
    rendered["spec"]["volumeClaimTemplates"] = [
        template if (t.get("metadata") or {}).get("name") == render.VOLUME_NAME else t
        for t in rendered["spec"]["volumeClaimTemplates"]
    ]
    return True


def outgrown(rendered: Mapping[str, Any], existing: Mapping[str, Any] | None) -> bool:
    """Whether `existing` (the StatefulSet as stored) has a claim template smaller than `rendered`'s."""
    old, new = template_size(existing), template_size(rendered)
    return old is not None and new is not None and _size(new) > _size(old)


async def replace_statefulset(kube: KubeApi, ref: Ref, wait: float = REPLACE_WAIT) -> None:
    """Delete the StatefulSet leaving its pods and claims (Orphan) and wait until it is gone; the caller
    then applies the new one. Raises StatefulSetReplacingError when the garbage collector has not
    finished within `wait` seconds (the next pass creates it once it is gone)."""
    await kube.delete(ref, propagation="Orphan")
    log.info("%s: deleted (pods and claims kept) to be created with the new claim template", ref.describe())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while await kube.get(ref) is not None:
        if loop.time() >= deadline:
            raise StatefulSetReplacingError(
                f"{ref.describe()} is being replaced to take the new volume claim template (its pods keep "
                "running); the next pass creates it again once it is gone"
            )
        await asyncio.sleep(0.5)


def _requested(claim: Mapping[str, Any]) -> str:
    return str(((claim.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", "0"))


async def claims(store: Store, kube: KubeApi) -> list[dict[str, Any]]:
    """The store's data claims (`data-<statefulset>-<ordinal>`, labelled by the claim template)."""
    pattern = re.compile(rf"^{re.escape(render.VOLUME_NAME)}-{re.escape(statefulset_name(store.name))}-\d+$")
    found = await kube.list(
        Ref("v1", "PersistentVolumeClaim", store.namespace), label_selector=render.selector_string(store.name)
    )
    return [c for c in found if pattern.match(str((c.get("metadata") or {}).get("name")))]


async def grow(store: Store, kube: KubeApi, template: str | None) -> None:
    """Expand every claim below `spec.storage.size`; raise what cannot be done (see the module doc)."""
    if store.spec.storage.ephemeral or template is None:
        return
    desired = store.spec.storage.size
    found = await claims(store, kube)
    largest = max([template, *(_requested(c) for c in found)], key=_size)
    if _size(desired) < _size(largest):
        raise VolumeShrinkRefusedError(
            f"spec.storage.size {desired} is smaller than the store's volumes ({largest}): Kubernetes "
            f"cannot shrink a volume. Set spec.storage.size back to {largest} or more"
        )
    small = [c for c in found if _size(_requested(c)) < _size(desired)]
    classes: dict[str, bool] = {}
    for claim in small:
        name = (claim.get("metadata") or {}).get("name")
        klass = (claim.get("spec") or {}).get("storageClassName")
        if not klass:
            raise VolumeExpansionNotSupportedError(
                f"spec.storage.size {desired}: claim {name} has no StorageClass, so it cannot be expanded "
                f"and stays at {_requested(claim)}"
            )
        if klass not in classes:
            body = await kube.get(Ref("storage.k8s.io/v1", "StorageClass", None, klass))
            classes[klass] = bool((body or {}).get("allowVolumeExpansion"))
        if not classes[klass]:
            names = ", ".join(sorted(str(c["metadata"]["name"]) for c in small))
            raise VolumeExpansionNotSupportedError(
                f"spec.storage.size {desired}: StorageClass {klass} does not set allowVolumeExpansion (or "
                f"does not exist), so claims {names} stay at {_requested(claim)}. Set it back, or use a "
                "class that allows expansion"
            )
    for claim in small:
        if (claim.get("status") or {}).get("phase") != "Bound":
            continue  # the API server resizes bound claims only; the next pass grows it
        ref = Ref("v1", "PersistentVolumeClaim", store.namespace, claim["metadata"]["name"])
        await kube.patch(ref, {"spec": {"resources": {"requests": {"storage": desired}}}})
        log.info("%s: expanded from %s to %s", ref.describe(), _requested(claim), desired)
