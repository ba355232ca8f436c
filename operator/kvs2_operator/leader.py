"""Leader election on a coordination.k8s.io/v1 Lease, so the operator can run with more than one replica.

Why not kopf's peering: it needs kopf's own CRDs (KopfPeering) installed cluster-wide and only pauses
the other operators, it does not elect. A Lease is what Kubernetes' own controllers use, needs one
namespaced RBAC rule, and `kubectl get lease` shows who leads.

The protocol is client-go's: the holder renews `renewTime` every `renew_every` seconds; a candidate takes
the Lease over once `renewTime + leaseDurationSeconds` has passed without a renewal, and every write is
a PUT with the read `resourceVersion` (optimistic concurrency: of two candidates only one wins). A leader
that cannot renew for a whole lease duration stops itself (`on_lost`) before a standby may take over, so
two operators never reconcile at once; a leader that exits cleanly releases the Lease for an instant
hand-over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

#: (method, path, body) -> (HTTP status, decoded JSON or an error message); KubeApi.request_sync.
Request = Callable[[str, str, Any], tuple[int, Any]]


def _now() -> datetime:
    return datetime.now(UTC)


def _micro(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class LeaseElector:
    def __init__(
        self,
        request: Request,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        renew_every: float = 5.0,
        retry_every: float = 2.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._request = request
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_every = renew_every
        self.retry_every = retry_every
        self._clock = clock
        self._stop = threading.Event()

    def _spec(self, lease: dict[str, Any] | None, *, acquiring: bool) -> dict[str, Any]:
        now = _micro(self._clock())
        old = (lease or {}).get("spec") or {}
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": now if acquiring else old.get("acquireTime", now),
            "renewTime": now,
            "leaseTransitions": int(old.get("leaseTransitions", 0) or 0) + (1 if acquiring and lease else 0),
        }
        return spec

    def try_acquire_or_renew(self) -> bool:
        """One round: True if this process holds the Lease afterwards."""
        status, lease = self._request("GET", f"{self.path}/{self.name}", None)
        if status == 404:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(None, acquiring=True),
            }
            status, _ = self._request("POST", self.path, body)
            return status < 300
        if status >= 300 or not isinstance(lease, dict):
            log.warning("leader election: cannot read Lease %s/%s: %s", self.namespace, self.name, lease)
            return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
            duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
            if renewed is not None and (self._clock() - renewed).total_seconds() < duration:
                return False  # someone else leads and is alive
        acquiring = holder != self.identity
        body = {**lease, "spec": self._spec(lease, acquiring=acquiring)}
        status, _ = self._request("PUT", f"{self.path}/{self.name}", body)
        if status < 300 and acquiring:
            log.info("leader election: %s now holds Lease %s/%s", self.identity, self.namespace, self.name)
        return status < 300

    def wait_until_leader(self) -> bool:
        """Block until this process leads (True) or `stop()` was called (False)."""
        announced = False
        while not self._stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    return True
            except Exception as exc:  # the API may be briefly unreachable; keep trying
                log.warning("leader election: %s", exc)
            if not announced:
                log.info("leader election: standing by, another operator holds Lease %s", self.name)
                announced = True
            self._stop.wait(self.retry_every)
        return False

    def keep_leading(self, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew in a thread; call `on_lost` once renewals failed for a whole lease duration."""

        def run() -> None:
            last_ok = time.monotonic()
            while not self._stop.wait(self.renew_every):
                try:
                    ok = self.try_acquire_or_renew()
                except Exception as exc:
                    log.warning("leader election: renewing failed: %s", exc)
                    ok = False
                if ok:
                    last_ok = time.monotonic()
                elif time.monotonic() - last_ok >= self.lease_seconds - self.renew_every:
                    log.error("leader election: lost Lease %s; stopping", self.name)
                    on_lost()
                    return

        thread = threading.Thread(target=run, name="kvs2-lease", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def release(self) -> None:
        """Give the Lease up at a clean exit, so a standby takes over at once."""
        try:
            status, lease = self._request("GET", f"{self.path}/{self.name}", None)
            if status >= 300 or not isinstance(lease, dict):
                return
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
            self._request("PUT", f"{self.path}/{self.name}", {**lease, "spec": spec})
        except Exception as exc:
            log.warning("leader election: releasing the Lease failed: %s", exc)
