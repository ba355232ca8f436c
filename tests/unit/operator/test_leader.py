"""Lease-based leader election against a fake Lease store with the API server's optimistic concurrency."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from kvs2_operator.leader import LeaseElector


class FakeLeases:
    """GET/POST/PUT of one namespace's Leases; PUT fails with 409 on a stale resourceVersion."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0

    def request(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        name = path.rsplit("/", 1)[-1]
        if method == "GET":
            lease = self.leases.get(name)
            return (200, copy.deepcopy(lease)) if lease else (404, "not found")
        if method == "POST":
            name = body["metadata"]["name"]
            if name in self.leases:
                return 409, "exists"
            return 201, self._store(name, body)
        if method == "PUT":
            current = self.leases.get(name)
            if (
                current is None
                or current["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]
            ):
                return 409, "conflict"
            return 200, self._store(name, body)
        raise AssertionError(method)

    def _store(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[name] = stored
        return copy.deepcopy(stored)

    def holder(self) -> str:
        return str(self.leases["op"]["spec"]["holderIdentity"])


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _elector(leases: FakeLeases, identity: str, clock: Clock) -> LeaseElector:
    return LeaseElector(leases.request, "kvs2-system", "op", identity, lease_seconds=15, clock=clock)


def test_one_leader_the_other_stands_by_until_the_lease_expires() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = _elector(leases, "a", clock), _elector(leases, "b", clock)
    assert a.try_acquire_or_renew() and leases.holder() == "a"
    assert not b.try_acquire_or_renew()
    clock.now += timedelta(seconds=10)
    assert a.try_acquire_or_renew()  # renewed
    clock.now += timedelta(seconds=10)
    assert not b.try_acquire_or_renew()  # 10 s since the renewal: still a's
    clock.now += timedelta(seconds=6)
    assert b.try_acquire_or_renew() and leases.holder() == "b"
    assert leases.leases["op"]["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire_or_renew()  # a lost it and must stop


def test_a_released_lease_is_taken_over_at_once() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = _elector(leases, "a", clock), _elector(leases, "b", clock)
    assert a.try_acquire_or_renew()
    a.release()
    clock.now += timedelta(seconds=2)
    assert b.try_acquire_or_renew() and leases.holder() == "b"


def test_of_two_racing_candidates_only_one_wins() -> None:
    leases, clock = FakeLeases(), Clock()
    assert _elector(leases, "old", clock).try_acquire_or_renew()
    clock.now += timedelta(seconds=60)
    stale = leases.request("GET", "/x/op", None)[1]

    b = _elector(leases, "b", clock)
    assert b.try_acquire_or_renew()
    # c read the Lease before b's write: its PUT carries a stale resourceVersion and loses.
    status, _ = leases.request("PUT", "/x/op", {**stale, "spec": {**stale["spec"], "holderIdentity": "c"}})
    assert status == 409 and leases.holder() == "b"
