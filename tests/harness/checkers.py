"""Checkers: each judges a recorded `History` (tests/harness/history.py) against one promise of kvs2 and
returns a `Verdict` with what it checked and every violation it found, precisely enough to reproduce.

- `final_state`: after quiescence every replica (a fresh one rebuilt from the log included) holds exactly
  what the acknowledged writes say; an ambiguous write may be present or absent, nothing else may.
- `linearizable`: Set / CAS / Delete / linearizable Get through any replica, checked by porcupine.
- `watch`: from a Range's `applied`, every write is delivered exactly once, in order per key, across
  cuts and resumes on other replicas; nothing that was not written is delivered.
- `bounded_reads`: max_staleness_ms / max_lag_records reads never older than their bound, and eventual
  reads on one replica never go back in time.
- `deadlines`: no call outlives its deadline by more than a small margin.
- `single-record`: no write is in the log twice: a Set's value (unique per history) is seen — acknowledged,
  read or delivered by a Watch — at one revision of its key only.

Judging is kept apart from recording (Jepsen's split) so checkers are unit-tested on hand-made histories
that contain each violation (tests/unit/test_checkers.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tests.harness import lincheck
from tests.harness.history import CLIENT_DEADLINE, DELETES, SETS, History, Op

MS = 1_000_000  # nanoseconds
# How long the replica's view of Kafka's end offsets may be old for max_lag reads (README: "refreshed every
# <= 0.5 s"), and the slack allowed for the time between Kafka taking a write and the client hearing of it.
LAG_REFRESH_MS = 500
BOUND_SLACK_MS = 250
DEADLINE_MARGIN_S = 1.0


@dataclass
class Verdict:
    name: str
    checked: int = 0
    violations: list[str] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)
    unknown: bool = False  # the checker could not decide (porcupine timed out)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.unknown

    def line(self) -> str:
        status = "ok" if self.ok else ("UNKNOWN" if not self.violations else "VIOLATION")
        extra = "".join(f", {k}={v}" for k, v in sorted(self.notes.items()))
        return f"{self.name:14} {status:9} checked={self.checked} violations={len(self.violations)}{extra}"


def _show(op: Op) -> str:
    what = op.value if op.kind in SETS else ""
    cond = f" if={op.expected}" if op.kind.startswith("cas") else ""
    result = (
        f"applied={op.applied} rev={op.revision} at {op.partition}:{op.offset}"
        if op.is_write
        else (f"found {op.out_value!r} rev={op.revision}" if op.found else "not found")
    )
    read = f" [{op.read}{':' + str(op.bound) if op.bound else ''}]" if not op.is_write else ""
    err = f" error={op.error!r}" if op.error else ""
    return (
        f"#{op.id} p{op.process} {op.kind}({op.key} {what!r}{cond}){read} on {op.target} "
        f"[{op.call // MS}..{op.ret // MS} ms] {op.outcome}: {result}{err}"
    )


# ----- (a) final state --------------------------------------------------------------------------------
def final_state(history: History) -> Verdict:
    verdict = Verdict("final-state")
    ops = history.epochs()[-1]
    expected = {key: _expected_final(ops, key) for key in {o.key for o in ops if o.is_write}}
    for replica, state in sorted(history.final.items()):
        for key in sorted(set(expected) | set(state)):
            verdict.checked += 1
            got = state.get(key)
            if key not in expected:
                verdict.violations.append(f"{replica}: {key}={got} was never written in this epoch")
                continue
            allowed, floor, explain = expected[key]
            if not _final_ok(got, allowed, floor):
                ambiguous = [o.value or o.kind for o in ops if o.key == key and o.ambiguous]
                verdict.violations.append(
                    f"{replica}: {key} is {'absent' if got is None else got}; {explain}; "
                    f"ambiguous writes: {ambiguous}"
                )
    verdict.notes["replicas"] = len(history.final)
    return verdict


def _expected_final(ops: list[Op], key: str) -> tuple[list[tuple[str, int] | None], int, str]:
    """The states `key` may end in (None: absent; revision -1: any above the floor), the floor (the last
    acknowledged write's revision), and the reason in words."""
    writes = [o for o in ops if o.is_write and o.key == key]
    effective = sorted((o for o in writes if o.effective), key=lambda o: o.revision)
    last = effective[-1] if effective else None
    states: list[tuple[str, int] | None] = [
        (last.value, last.revision) if last is not None and last.kind in SETS else None
    ]
    for o in writes:
        if o.ambiguous:
            states.append(None if o.kind in DELETES else (o.value, -1))
    explain = f"last acknowledged: {_show(last)}" if last else "no acknowledged write"
    return states, last.revision if last else 0, explain


def _final_ok(got: tuple[str, int] | None, states: list[tuple[str, int] | None], floor: int) -> bool:
    for state in states:
        if state is None or got is None:
            if state is None and got is None:
                return True
        elif state == got or (state[1] == -1 and got[0] == state[0] and got[1] > floor):
            return True
    return False


# ----- (b) linearizability ----------------------------------------------------------------------------
_LIN_OP = {"set": "put", "delete": "del", "cas_set": "cas", "cas_delete": "cas_del", "get": "get"}


def to_lincheck(ops: Iterable[Op]) -> list[lincheck.Op]:
    """Writes (definite and ambiguous) and successful linearizable Gets; failed calls had no effect."""
    result = []
    for o in ops:
        if o.is_write and o.outcome == "fail":
            continue
        if not o.is_write and (o.read != "linearizable" or o.outcome != "ok"):
            continue
        result.append(
            lincheck.Op(
                client=o.id,  # porcupine needs no per-client order; ids keep ambiguous calls apart
                op=_LIN_OP[o.kind],
                key=f"{o.epoch}/{o.key}",
                call=o.call,
                ret=o.ret,
                value=o.value,
                expected=o.expected,
                applied=o.applied,
                found=o.found,
                out_value=o.out_value,
                revision=o.revision,
                ambiguous=o.ambiguous,
            )
        )
    return result


def linearizable(history: History, check: Callable[[list[lincheck.Op]], str] = lincheck.check) -> Verdict:
    verdict = Verdict("linearizable")
    ops = [o for epoch in history.epochs() for o in epoch]
    lin = to_lincheck(ops)
    verdict.checked = len(lin)
    verdict.notes["linearizable_gets"] = sum(1 for o in lin if o.op == "get")
    verdict.notes["ambiguous_writes"] = sum(1 for o in lin if o.ambiguous)
    if not lin:
        return verdict
    result = check(lin)
    if result == "unknown":
        verdict.unknown = True
    elif result == "violation":
        for key in sorted({o.key for o in lin}):  # name the keys whose histories are not linearizable
            part = [o for o in lin if o.key == key]
            if check(part) == "violation":
                mine = sorted((o for o in ops if f"{o.epoch}/{o.key}" == key), key=lambda o: o.call)
                excerpt = "\n    ".join(_show(o) for o in mine[-40:])
                verdict.violations.append(f"key {key} is not linearizable; its last calls:\n    {excerpt}")
        if not verdict.violations:
            verdict.violations.append("porcupine found the whole history not linearizable")
    return verdict


# ----- (c) watch -----------------------------------------------------------------------------------------
def watch(history: History) -> Verdict:
    verdict = Verdict("watch")
    epochs = history.epochs()
    by_session: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, d in enumerate(history.deliveries):
        by_session[(d.watcher, d.session)].append(i)
    skipped = 0
    for s in history.sessions:
        if history.in_recreation(s.start, s.stop) or history.epoch_of(s.start) != history.epoch_of(s.stop):
            skipped += 1
            continue
        ops = epochs[history.epoch_of(s.start)]
        name = f"watcher {s.watcher} session {s.session} (Range on {s.target}, applied={s.applied})"
        if s.stalled:
            verdict.violations.append(f"{name}: did not reach the final positions {s.end_positions}")
        by_position = {(o.partition, o.offset): o for o in ops if o.effective}
        refused = {(o.key, o.value) for o in ops if o.is_write and o.outcome == "ok" and not o.applied}
        ambiguous = {(o.key, o.kind in DELETES, o.value) for o in ops if o.ambiguous}
        seen: set[tuple[int, int]] = set()
        last_offset: dict[str, int] = {}
        for i in by_session[(s.watcher, s.session)]:
            d = history.deliveries[i]
            verdict.checked += 1
            pos = (d.partition, d.offset)
            where = f"{name}: {d.kind} {d.key}={d.value!r} at {d.partition}:{d.offset} from {d.target}"
            if pos in seen:
                verdict.violations.append(f"{where} delivered twice")
            seen.add(pos)
            if d.offset < s.applied.get(d.partition, 0):
                verdict.violations.append(f"{where} is before the Range's applied (already in the snapshot)")
            if d.offset <= last_offset.get(d.key, -1):
                verdict.violations.append(f"{where} out of order (after offset {last_offset[d.key]})")
            last_offset[d.key] = max(d.offset, last_offset.get(d.key, -1))
            w = by_position.get(pos)
            is_delete = d.kind == "delete"
            if w is not None:
                if (
                    w.key != d.key
                    or (w.kind in DELETES) != is_delete
                    or (not is_delete and w.value != d.value)
                ):
                    verdict.violations.append(f"{where} but that position holds {_show(w)}")
            elif (d.key, is_delete, "" if is_delete else d.value) not in ambiguous:
                why = "a refused compare-and-set" if (d.key, d.value) in refused else "no write"
                verdict.violations.append(f"{where} matches {why}")
        for (p, o), w in sorted(by_position.items()):
            if s.applied.get(p, 0) <= o < s.end_positions.get(p, 0) and (p, o) not in seen:
                verdict.violations.append(f"{name}: never delivered {_show(w)}")
    verdict.notes["sessions"] = len(history.sessions) - skipped
    verdict.notes["skipped_sessions"] = skipped
    verdict.notes["resumes"] = sum(s.resumes for s in history.sessions)
    return verdict


# ----- (d) bounded reads -------------------------------------------------------------------------------
def bounded_reads(history: History, slack_ms: int = BOUND_SLACK_MS) -> Verdict:
    """A bounded read must reflect every write acknowledged before (its call - bound - slack); for
    max_lag, the replica must also be at most `bound` records behind the partition's end as it stood
    LAG_REFRESH_MS before the call. Eventual reads on one replica must never go back in time."""
    verdict = Verdict("bounded-reads")
    for ops in history.epochs():
        writes = sorted((o for o in ops if o.effective), key=lambda o: o.ret)
        for r in ops:
            if r.is_write or r.outcome != "ok":
                continue
            if r.read == "staleness":
                cutoff = r.call - (r.bound + slack_ms) * MS
            elif r.read == "lag":
                cutoff = r.call - (LAG_REFRESH_MS + slack_ms) * MS
            else:
                continue
            verdict.checked += 1
            before = [w for w in writes if w.ret < cutoff]
            mine = [w for w in before if w.key == r.key]
            if not mine:
                continue
            latest = max(mine, key=lambda w: w.revision)
            if not _older(r, latest, ops):
                continue
            if r.read == "lag":
                end = 1 + max(w.offset for w in before if w.partition == latest.partition)
                behind = end - latest.offset  # the replica has not applied `latest`: at most at its offset
                if behind <= r.bound:
                    continue
                verdict.violations.append(
                    f"{_show(r)}: at least {behind} records behind (bound {r.bound}); "
                    f"misses {_show(latest)} acknowledged {(r.call - latest.ret) // MS} ms before the read"
                )
            else:
                verdict.violations.append(
                    f"{_show(r)}: misses {_show(latest)}, acknowledged {(r.call - latest.ret) // MS} ms "
                    f"before the read (bound {r.bound} ms)"
                )
        _monotonic_reads(ops, verdict)
    return verdict


def _older(read: Op, write: Op, ops: list[Op]) -> bool:
    """Does `read` show a state from before `write`? A not-found read is newer only if some delete of the
    key (acknowledged after `write`, or of unknown outcome, or still running) could explain it."""
    if read.found:
        return read.revision < write.revision
    if write.kind in DELETES:
        return False
    return not _delete_explains(read, write.revision, ops)


def _delete_explains(read: Op, revision: int, ops: list[Op]) -> bool:
    """Some delete of the key that began before `read` ended may have come after `revision`."""
    return any(
        o.key == read.key
        and o.kind in DELETES
        and o.call < read.ret
        and (o.ambiguous or (o.effective and o.revision > revision))
        for o in ops
    )


def _went_back(read: Op, prev: Op, ops: list[Op]) -> bool:
    if read.found:
        return read.revision < prev.revision
    return not _delete_explains(read, prev.revision, ops)


def _monotonic_reads(ops: list[Op], verdict: Verdict) -> None:
    """Eventual reads on one replica: a later read never shows an older revision of a key, nor the key
    missing after it was seen, unless a delete could explain it."""
    last: dict[tuple[str, str], Op] = {}
    for r in sorted((o for o in ops if not o.is_write and o.outcome == "ok"), key=lambda o: o.call):
        verdict.notes["monotonic_reads"] = verdict.notes.get("monotonic_reads", 0) + 1
        prev = last.get((r.target, r.key))
        if prev is not None and prev.ret < r.call and prev.found and _went_back(r, prev, ops):
            verdict.violations.append(f"{_show(r)}: older than the earlier read on {r.target} {_show(prev)}")
        if prev is None or r.call > prev.ret:
            last[(r.target, r.key)] = r


# ----- (e) deadlines -------------------------------------------------------------------------------------
def deadlines(history: History, margin_s: float = DEADLINE_MARGIN_S) -> Verdict:
    verdict = Verdict("deadlines")
    late_server = 0
    for o in history.ops:
        if o.deadline <= 0:
            continue
        verdict.checked += 1
        took = (o.ret - o.call) / 1e9
        if took > o.deadline + margin_s:
            verdict.violations.append(f"{_show(o)}: took {took:.2f}s, deadline {o.deadline:.2f}s")
        if o.error == f"DEADLINE_EXCEEDED: {CLIENT_DEADLINE}":
            late_server += 1  # gRPC's own timer fired: the server had not answered (paused, cut, overloaded)
    verdict.notes["client_side_deadline"] = late_server
    return verdict


# ----- (f) one write, one record ---------------------------------------------------------------------------
def single_record(history: History) -> Verdict:
    """Every write is in the log at most once: each Set's value is seen at one revision of its key.

    Why its own checker: a write re-sent by the producer after newer writes (seed 23: librdkafka's epoch
    bump re-sending batches the broker already had) gives one write two revisions. Porcupine may or may
    not notice (only if a read sees the old value again); the final state may hide it (a later write);
    this names it directly. Values must be unique per (epoch, key): a value written twice is not judged.
    Revisions restart with a recreated topic, so everything is grouped by epoch."""
    verdict = Verdict("single-record")
    writers: dict[tuple[int, str, str], int] = defaultdict(int)
    seen: dict[tuple[int, str, str], dict[int, str]] = defaultdict(dict)
    for epoch, ops in enumerate(history.epochs()):
        for o in ops:
            if o.kind in SETS and o.outcome != "fail":
                writers[(epoch, o.key, o.value)] += 1
                if o.outcome == "ok" and o.applied and o.revision > 0:
                    seen[(epoch, o.key, o.value)].setdefault(o.revision, _show(o))
            elif not o.is_write and o.outcome == "ok" and o.found and o.revision > 0:
                seen[(epoch, o.key, o.out_value)].setdefault(o.revision, _show(o))
    for d in history.deliveries:
        epoch = history.epoch_of(d.at)
        if d.kind == "put" and epoch >= 0:
            seen[(epoch, d.key, d.value)].setdefault(
                d.revision,
                f"watch w{d.watcher}/s{d.session} on {d.target}: put {d.key}={d.value!r} "
                f"rev={d.revision} at {d.partition}:{d.offset}",
            )
    for (epoch, key, value), revisions in sorted(seen.items()):
        if writers.get((epoch, key, value), 0) != 1:
            continue  # written more than once (or not by this history): several revisions are fine
        verdict.checked += 1
        if len(revisions) > 1:
            shown = "; ".join(f"rev {r}: {what}" for r, what in sorted(revisions.items()))
            verdict.violations.append(
                f"{key}={value!r} (epoch {epoch}) written once is in the log at {len(revisions)} "
                f"revisions: {shown}"
            )
    return verdict


ALL: dict[str, Callable[[History], Verdict]] = {
    "final-state": final_state,
    "linearizable": linearizable,
    "watch": watch,
    "bounded-reads": bounded_reads,
    "deadlines": deadlines,
    "single-record": single_record,
}


def judge(history: History, names: Iterable[str] = ALL) -> list[Verdict]:
    return [ALL[name](history) for name in names]
