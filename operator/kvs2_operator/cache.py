"""The stores' children as the operator's own watches last reported them: reads from memory, not GETs.

Why: a pass used to GET every child before applying it (to refuse a name another controller owns, to keep
the StatefulSet's claim template, to see whether a PodDisruptionBudget is still there). kopf already
watches the labelled children (handlers.py `child_changed`, a server-side label selector), so the same
events feed this cache and a steady-state pass reads its children from memory — what controller-runtime's
informer cache does for its controllers.

Why not `@kopf.index`: an index is handed to kopf's handlers as a keyword argument, but passes run in the
work queue's workers (workqueue.py), outside any handler; and a plain index keyed by name cannot tell the
two objects of a delete-and-recreate apart (below). The cache is a few lines fed by the handler that
already receives every event.

Correctness, in order of what could go wrong:
- A child not seen yet (the operator just started, the object was just created) is a miss: the caller
  GETs it (`Children.get`). Only watched kinds are ever answered from memory; Secrets, ConfigMaps,
  Certificates and NetworkPolicies are not watched (RBAC grants only `get` on them) and are always GETs.
- An object without the operator's label never reaches the watch: a miss, a GET, and the foreign-object
  check sees it as it is. A labelled object another controller owns is cached with its ownerReferences,
  and the same check refuses it.
- A deleted child disappears: kopf delivers the DELETED event.
- kopf processes each object's events in its own stream keyed by **uid**, so the DELETED of an old object
  and the ADDED of a new one with the same name may arrive in either order. The cache therefore keeps the
  objects of a name by uid and answers only when it knows exactly one; two (a recreate in flight) is a
  miss. Every uid's stream ends with its DELETED, so the ambiguity resolves itself.
- An object deleted while a watch was down (kopf re-lists without DELETED events) would stay known: a
  write's response (server-side apply, always fresh) and a fallback GET both tell which uid is alive now,
  and the others are dropped (`confirm`). A stale entry can only make the pass apply an object it owns
  anyway; it never hides a foreign one (a foreign object re-created under the name is a new uid).
- Writes are never put into the cache: the watch's events for them arrive in order, a write's response
  might arrive after a newer event and would regress it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvs2_operator.kube import KubeApi, Ref

#: The kinds kopf watches for the operator (handlers.CHILD_RESOURCES), the only ones answered from memory.
WATCHED_KINDS = frozenset({"StatefulSet", "Service", "PodDisruptionBudget"})

_Key = tuple[str, str, str]


def _key(kind: str, namespace: str | None, name: str | None) -> _Key:
    return (kind, namespace or "", name or "")


@dataclass
class Children:
    """Watched children by (kind, namespace, name), then by uid (see the module doc)."""

    objects: dict[_Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: Reads answered from memory / by a GET (what the unit tests count; a debugger's first question).
    hits: int = 0
    misses: int = 0

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """One watch event (kopf's `type`: None for the initial listing, ADDED, MODIFIED, DELETED)."""
        meta = body.get("metadata") or {}
        kind, uid = body.get("kind"), meta.get("uid")
        if kind not in WATCHED_KINDS or not uid:
            return
        key = _key(str(kind), meta.get("namespace"), meta.get("name"))
        if event_type == "DELETED":
            known = self.objects.get(key, {})
            known.pop(str(uid), None)
            if not known:
                self.objects.pop(key, None)
            return
        kept = copy.deepcopy(dict(body))
        # The largest part of a stored object, and nothing a pass reads: not kept for thousands of children.
        kept.get("metadata", {}).pop("managedFields", None)
        self.objects.setdefault(key, {})[str(uid)] = kept

    def cached(self, ref: Ref) -> dict[str, Any] | None:
        """The one object the watch reports under this name (a copy), else None (unknown or ambiguous)."""
        if ref.kind not in WATCHED_KINDS:
            return None
        known = self.objects.get(_key(ref.kind, ref.namespace, ref.name))
        if not known or len(known) != 1:
            return None
        return copy.deepcopy(next(iter(known.values())))

    def confirm(self, ref: Ref, alive: Mapping[str, Any] | None) -> None:
        """A fresh answer from the API server (a GET, a write's response): only `alive`'s uid can still
        exist under this name; forget the others. Nothing is added (the watch does that)."""
        key = _key(ref.kind, ref.namespace, ref.name)
        known = self.objects.get(key)
        if not known:
            return
        uid = str(((alive or {}).get("metadata") or {}).get("uid") or "")
        for other in [u for u in known if u != uid]:
            del known[other]
        if not known:
            del self.objects[key]

    async def get(self, kube: KubeApi, ref: Ref) -> dict[str, Any] | None:
        """The object from memory when the watch knows it, else a GET (None: it does not exist)."""
        hit = self.cached(ref)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        fresh = await kube.get(ref)
        self.confirm(ref, fresh)
        return fresh
