"""The recorded history of a fault-injection run: every call with its timing and outcome, every fault,
every Watch delivery. Recording is one job; judging it is `checkers.py`'s, so a history can be saved
(`History.save`), loaded and judged again, and checkers can be unit-tested on hand-made histories.

Outcomes follow Jepsen: `ok` (the call answered), `fail` (it certainly had no effect) and `info` (unknown:
a write that timed out or met UNAVAILABLE may still be applied). Times are `time.monotonic_ns()`.

Topic recreation splits a history into *epochs*: the data of the old topic is gone, offsets and
revisions start again. The boundary is the *creation* of the new topic (while the topic is merely absent,
replicas must keep serving their data or refuse, never show it wiped). A call that overlaps a creation
window belongs to no epoch of its own; a write among them is ambiguous in the next epoch (it may have
landed in either topic), a read among them is not judged.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import grpc
from kvs2.config import ServeSettings
from kvs2.kafka_io import MESSAGE_TIMEOUT_MARGIN

Outcome = Literal["ok", "fail", "info"]

WRITES = frozenset({"set", "delete", "cas_set", "cas_delete"})
SETS = frozenset({"set", "cas_set"})
DELETES = frozenset({"delete", "cas_delete"})
# Status codes after which a write certainly did not happen (the request was refused before producing).
DEFINITE_WRITE_FAILURES = frozenset({"INVALID_ARGUMENT", "PERMISSION_DENIED"})
# What grpc itself says when the client's deadline fires before the server answered.
CLIENT_DEADLINE = "Deadline Exceeded"
# How long after its call a write answered "may still be applied later" can still reach the log: the
# replica's librdkafka keeps retrying it until message.timeout.ms = the default write timeout + a margin
# (kvs2.config, kvs2.kafka_io), plus slack for the call's own start. Across a topic recreation such a
# record may land in the *new* topic (torture seed 33).
PRODUCER_GIVES_UP_S = ServeSettings.default_write_timeout + MESSAGE_TIMEOUT_MARGIN + 5.0
# Error details after which a write certainly had no effect: the call never left the client (gRPC found no
# connection), or the replica refused it before producing anything (kvs2.core: check_serving, and a
# Delete that could not catch up with its partition first).
NOT_SENT = (
    "failed to connect to all addresses",
    "this replica is catching up with Kafka and not serving",
    "this replica is not serving reads",
    "the Delete was not sent",
)


@dataclass
class Op:
    """One call. `kind`: set, delete, cas_set, cas_delete (writes) or get (reads)."""

    id: int
    process: int
    kind: str
    key: str
    target: str
    call: int
    ret: int = 0
    deadline: float = 0.0  # seconds the client allowed
    outcome: Outcome = "info"
    value: str = ""
    expected: int = 0  # if_revision of a conditional write
    read: str = "eventual"  # eventual | linearizable | staleness | lag
    bound: int = 0  # max_staleness_ms or max_lag_records
    applied: bool = False  # a write that took effect (plain writes: acknowledged)
    found: bool = False
    out_value: str = ""
    revision: int = 0
    partition: int = -1
    offset: int = -1
    error: str = ""  # "CODE: details" of a failed call
    epoch: int = 0  # set by History.epochs()

    @property
    def is_write(self) -> bool:
        return self.kind in WRITES

    @property
    def effective(self) -> bool:
        """An acknowledged write that changed the key (a refused compare-and-set did not)."""
        return self.is_write and self.outcome == "ok" and self.applied

    @property
    def ambiguous(self) -> bool:
        return self.is_write and self.outcome == "info"


@dataclass
class Fault:
    kind: str
    target: str
    start: int
    end: int = 0  # healed at; 0 while still active
    detail: str = ""


@dataclass
class Delivery:
    """One Watch event: a PUT or DELETE of `key` at (partition, offset), seen by `watcher`'s `session`."""

    watcher: int
    session: int
    target: str
    kind: str  # put | delete
    key: str
    value: str
    revision: int
    partition: int
    offset: int
    at: int


@dataclass
class WatchSession:
    """A Range snapshot followed by Watch streams (possibly resumed on other replicas) from its `applied`.

    `end` is the cursor when the session stopped; `complete` says the watcher reached the final positions
    after quiescence (a session that did not is judged only up to `end`; `stalled` means it should have)."""

    watcher: int
    session: int
    target: str
    start: int
    applied: dict[int, int]
    end_positions: dict[int, int] = field(default_factory=dict)
    stop: int = 0
    resumes: int = 0
    stalled: bool = False
    note: str = ""


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    sessions: list[WatchSession] = field(default_factory=list)
    # (creation started, creation done) of each recreated topic, in order
    recreations: list[tuple[int, int]] = field(default_factory=list)
    # replica -> key -> (value, revision) read after quiescence
    final: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _next: int = 0

    # ----- recording ----------------------------------------------------------------------------
    def begin(self, process: int, kind: str, key: str, target: str, deadline: float, **fields: Any) -> Op:
        with self._lock:
            self._next += 1
            op = Op(self._next, process, kind, key, target, time.monotonic_ns(), deadline=deadline, **fields)
        return op

    def finish(self, op: Op, outcome: Outcome, **fields: Any) -> Op:
        done = replace(op, ret=time.monotonic_ns(), outcome=outcome, **fields)
        with self._lock:
            self.ops.append(done)
        return done

    def failed(self, op: Op, exc: grpc.RpcError) -> Op:
        """Classify a gRPC error: reads fail, writes are ambiguous unless refused before producing."""
        code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
        details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
        return self.finish(op, _failure(op, code, details), error=f"{code}: {details}")

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def add_delivery(self, delivery: Delivery) -> None:
        with self._lock:
            self.deliveries.append(delivery)

    # ----- epochs -------------------------------------------------------------------------------
    def epoch_of(self, t: int) -> int:
        """The epoch a point in time is in, or -1 inside a recreation window."""
        epoch = 0
        for start, end in self.recreations:
            if t < start:
                return epoch
            if t <= end:
                return -1
            epoch += 1
        return epoch

    def epochs(self) -> list[list[Op]]:
        """Ops per epoch. Writes overlapping a recreation become ambiguous in the epoch after it (their
        record may be in either topic); reads overlapping one are dropped (nothing to judge them by)."""
        result: list[list[Op]] = [[] for _ in range(len(self.recreations) + 1)]
        for op in self.ops:
            first, last = self.epoch_of(op.call), self.epoch_of(op.ret)
            if first == last and first >= 0:
                result[first].append(replace(op, epoch=first))
                continue
            if op.is_write and op.outcome != "fail":
                after = last if last >= 0 else self._epoch_after(op.ret)
                result[after].append(replace(op, epoch=after, outcome="info"))
        for op in self.ops:
            if not op.ambiguous:
                continue
            # Still in the producer's hands when a later topic was created: it may have landed there.
            home = max(self.epoch_of(op.ret), self._epoch_after(op.ret))
            for epoch in range(home + 1, len(self.recreations) + 1):
                if self.recreations[epoch - 1][0] <= op.call + int(PRODUCER_GIVES_UP_S * 1e9):
                    result[epoch].append(replace(op, epoch=epoch))
        return result

    def _epoch_after(self, t: int) -> int:
        return sum(1 for start, _ in self.recreations if start <= t)

    def in_recreation(self, start: int, end: int) -> bool:
        return any(not (end < s or start > e) for s, e in self.recreations)

    # ----- persistence --------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        data = {
            "ops": [asdict(o) for o in self.ops],
            "faults": [asdict(f) for f in self.faults],
            "deliveries": [asdict(d) for d in self.deliveries],
            "sessions": [asdict(s) for s in self.sessions],
            "recreations": self.recreations,
            "final": {r: {k: list(v) for k, v in kv.items()} for r, kv in self.final.items()},
        }
        path.write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path) -> History:
        data = json.loads(path.read_text())

        def session(s: dict[str, Any]) -> WatchSession:
            s["applied"] = {int(p): o for p, o in s["applied"].items()}
            s["end_positions"] = {int(p): o for p, o in s["end_positions"].items()}
            return WatchSession(**s)

        return cls(
            ops=[_reclassified(Op(**o)) for o in data["ops"]],
            faults=[Fault(**f) for f in data["faults"]],
            deliveries=[Delivery(**d) for d in data["deliveries"]],
            sessions=[session(s) for s in data["sessions"]],
            recreations=[(int(a), int(b)) for a, b in data["recreations"]],
            final={r: {k: (v[0], int(v[1])) for k, v in kv.items()} for r, kv in data["final"].items()},
        )

    def counts(self) -> dict[str, int]:
        return {
            "operations": len(self.ops),
            "ok": sum(1 for o in self.ops if o.outcome == "ok"),
            "fail": sum(1 for o in self.ops if o.outcome == "fail"),
            "info": sum(1 for o in self.ops if o.outcome == "info"),
            "faults": len(self.faults),
            "watch_deliveries": len(self.deliveries),
            "watch_sessions": len(self.sessions),
        }


def _failure(op: Op, code: str, details: str) -> Outcome:
    not_sent = code == "UNAVAILABLE" and details.startswith(NOT_SENT)
    if op.is_write and code not in DEFINITE_WRITE_FAILURES and not not_sent:
        return "info"
    return "fail"


def _reclassified(op: Op) -> Op:
    """A saved history judged again with today's rule for failed calls."""
    if op.outcome == "ok" or not op.error:
        return op
    code, _, details = op.error.partition(": ")
    return replace(op, outcome=_failure(op, code, details))


def writes_of(ops: list[Op], key: str) -> Iterator[Op]:
    return (o for o in ops if o.is_write and o.key == key)
