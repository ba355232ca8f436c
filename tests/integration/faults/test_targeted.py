"""Targeted fault scenarios, each recorded as a history and judged by one checker (tests/harness/checkers.py).

The random mix (test_torture.py) may or may not stumble on a given defect in a short run; these scenarios
set up exactly the situation a promise is about, so the checker must find a broken promise every time.
"""

from __future__ import annotations

import time

import pytest
from kvs2.client import Client, Written

from tests.harness import checkers
from tests.harness.history import Delivery, History, WatchSession
from tests.harness.nemesis import FaultStack
from tests.harness.recorder import Recorder
from tests.harness.torture import PREFIX, final_read, let_compaction_run

pytestmark = pytest.mark.integration


def test_bounded_reads_on_a_replica_cut_off_from_kafka_stay_within_their_bound(stack: FaultStack) -> None:
    """r0 loses Kafka (its proxy is cut) while r1 keeps writing: r0 may refuse bounded reads, never
    answer them with data older than the bound."""
    history = History()
    writer, reader = Recorder(history, 1), Recorder(history, 2)
    key = f"{PREFIX}-cut-{time.monotonic_ns()}"
    with (
        Client(stack.replicas["r1"].target, timeout=5.0, retries=0) as w,
        Client(stack.replicas["r0"].target, timeout=3.0, retries=0) as r,
    ):
        first = writer.set(w, "r1", key, "before-cut")
        assert first.outcome == "ok", first.error
        r.get(key.encode(), after=[Written(first.partition, first.offset)])  # r0 has it
        stack.cut("r0")
        try:
            until = time.monotonic() + 3.0
            n = 0
            while time.monotonic() < until:
                n += 1
                assert writer.set(w, "r1", key, f"during-cut-{n}").outcome == "ok"
                time.sleep(0.1)
            for _ in range(5):
                reader.get(r, "r0", key, "staleness", 1000)
                reader.get(r, "r0", key, "lag", 5)
                writer.set(w, "r1", key, f"during-cut-{n}-more")
        finally:
            stack.heal("r0")
        during_cut = len(history.ops)
        # Healed, r0 catches up and answers bounded reads again. They are judged too, so the checker
        # always has answered reads to look at: a refusal during the cut is fine and not judged.
        last = writer.set(w, "r1", key, "after-heal")
        assert last.outcome == "ok", last.error
        with Client(stack.replicas["r0"].target, timeout=60.0) as patient:
            patient.get(key.encode(), after=[Written(last.partition, last.offset)])
        for _ in range(5):
            reader.get(r, "r0", key, "staleness", 1000)
            reader.get(r, "r0", key, "lag", 5)
    answered_after_heal = [o for o in history.ops[during_cut:] if o.kind == "get" and o.outcome == "ok"]
    assert answered_after_heal, "no bounded read answered once r0 was healed"
    verdict = checkers.bounded_reads(history)
    assert verdict.checked >= len(answered_after_heal)
    assert verdict.ok, "\n".join(verdict.violations)


def test_watch_from_a_range_snapshot_delivers_every_later_write_once(stack: FaultStack) -> None:
    """Range on r0, writes through r1, then Watch from the Range's `applied`, resumed on r1 halfway:
    every write after the snapshot arrives exactly once, in order. Keys under a prefix of their own, so
    the partitions they hash to may be empty when the Range is taken."""
    history = History()
    prefix = f"w{time.monotonic_ns()}-"
    writer = Recorder(history, 1)
    with Client(stack.replicas["r0"].target, timeout=5.0, retries=0) as r0:
        page = r0.range(prefix=prefix.encode(), consistency="linearizable")  # r0 is caught up
    session = WatchSession(1, 1, "r0", time.monotonic_ns(), dict(page.applied))
    history.sessions.append(session)
    with Client(stack.replicas["r1"].target, timeout=5.0, retries=0) as w:
        for i in range(12):
            assert writer.set(w, "r1", f"{prefix}{i}", f"v{i}").outcome == "ok"
    end: dict[int, int] = {}
    for o in history.ops:
        end[o.partition] = max(end.get(o.partition, 0), o.offset + 1)
    cursor = dict(page.applied)
    for target in ("r0", "r1"):
        with Client(stack.replicas[target].target, timeout=5.0, retries=0) as c:
            for event in c.watch(
                prefix=prefix.encode(), from_=cursor, progress_interval_ms=100, reconnect=False
            ):
                if event.kind == "progress":
                    cursor.update(event.applied)
                else:
                    history.add_delivery(
                        Delivery(1, 1, target, event.kind, event.key.decode(), (event.value or b"").decode(),
                                 event.revision, event.partition, event.offset, time.monotonic_ns())
                    )  # fmt: skip
                    cursor[event.partition] = event.offset + 1
                done = all(cursor.get(p, 0) >= o for p, o in end.items())
                if done or (target == "r0" and len(history.deliveries) >= 4):
                    break
    session.end_positions = {p: max(cursor.get(p, 0), o) for p, o in end.items()}
    session.stop = time.monotonic_ns()
    verdict = checkers.watch(history)
    assert verdict.ok, "\n".join(verdict.violations)
    assert verdict.checked == 12


def test_a_replica_rebuilt_from_the_compacted_log_holds_every_acknowledged_write(stack: FaultStack) -> None:
    """create-if-absent, plain delete, create-if-absent again, on 20 keys; compaction drops the delete's
    tombstone (delete.retention.ms=100) before any janitor cleans the first conditional record (grace
    600 s); a fresh replica must still rebuild exactly the live state."""
    history = History()
    rec = Recorder(history, 1)
    prefix = f"{PREFIX}-cas-{time.monotonic_ns()}-"
    with Client(stack.replicas["r0"].target, timeout=5.0, retries=0) as c:
        for i in range(20):
            key = f"{prefix}{i}"
            assert rec.set_if(c, "r0", key, "a", 0).applied
            assert rec.delete(c, "r0", key).outcome == "ok"
            assert rec.set_if(c, "r0", key, "b", 0).applied
    let_compaction_run(stack, seconds=8.0)
    live, _ = final_read(stack, "r1", stack.replicas["r1"].target)
    fresh = stack.start_fresh_replica(f"fresh-{time.monotonic_ns()}")
    rebuilt, _ = final_read(stack, "fresh", fresh.target)
    fresh.stop()
    mine = {k: v for k, v in live.items() if k.startswith(prefix)}
    history.final = {"r1": mine, "fresh": {k: v for k, v in rebuilt.items() if k.startswith(prefix)}}
    verdict = checkers.final_state(history)
    assert verdict.checked == 40
    assert verdict.ok, "\n".join(verdict.violations)


def test_replicas_keep_their_data_while_the_topic_is_only_absent(stack: FaultStack) -> None:
    """The topic vanishes (deleted, not yet recreated): replicas may refuse reads, but a key they showed
    must not read as missing (issue 8 defect 5: no wipe on absence alone; on this branch the replicas turn
    NOT_SERVING before their reads could show the wipe, so this passes here). Runs last in this module:
    it recreates the topic, and the replicas rebuild from the new, empty one."""
    history = History()
    rec = Recorder(history, 1)
    prefix = f"{PREFIX}-gone-{time.monotonic_ns()}-"
    keys = [f"{prefix}{i}" for i in range(20)]
    clients = {name: Client(r.target, timeout=2.0, retries=0) for name, r in stack.replicas.items()}
    try:
        with Client(stack.replicas["r0"].target, timeout=10.0, retries=0) as writer:
            for key in keys:
                assert rec.set(writer, "r0", key, "kept").outcome == "ok"
        for name, c in clients.items():
            for key in keys:
                assert rec.get(c, name, key, "linearizable").found
        stack.delete_topic()
        try:
            until = time.monotonic() + 4.0
            while time.monotonic() < until:
                for name, c in clients.items():
                    for key in keys[::4]:
                        rec.get(c, name, key)
        finally:
            stack.create_topic()
    finally:
        for c in clients.values():
            c.close()
    verdict = checkers.bounded_reads(history)
    answered = [o for o in history.ops if o.kind == "get" and o.read == "eventual" and o.outcome == "ok"]
    assert verdict.ok, f"{len(verdict.violations)} of {len(answered)} answered reads:\n" + "\n".join(
        verdict.violations[:10]
    )
