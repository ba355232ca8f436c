"""The fault-suite checkers on hand-made histories: each accepts a correct history and finds the violation
planted in a wrong one (a checker that finds nothing proves nothing). Porcupine's own verdicts are tested
in tests/integration/test_lincheck.py; here `linearizable` runs with a recording fake."""

from __future__ import annotations

from typing import Any

import grpc

from tests.harness import checkers, lincheck
from tests.harness.history import PRODUCER_GIVES_UP_S, Delivery, History, Op, WatchSession

MS = 1_000_000
_ids = iter(range(1, 1_000_000))


def op(kind: str, key: str, call_ms: int, ret_ms: int, **fields: Any) -> Op:
    fields.setdefault("outcome", "ok")
    fields.setdefault("target", "r0")
    fields.setdefault("deadline", 5.0)
    if kind in ("set", "delete"):
        fields.setdefault("applied", True)
    return Op(next(_ids), 1, kind, key, call=call_ms * MS, ret=ret_ms * MS, **fields)


def put(key: str, value: str, offset: int, call: int, ret: int, **f: Any) -> Op:
    return op("set", key, call, ret, value=value, partition=0, offset=offset, revision=offset + 1, **f)


def delete(key: str, offset: int, call: int, ret: int, **f: Any) -> Op:
    return op("delete", key, call, ret, partition=0, offset=offset, revision=offset + 1, **f)


def get(key: str, call: int, ret: int, value: str | None, revision: int = 0, **f: Any) -> Op:
    found = value is not None
    return op("get", key, call, ret, found=found, out_value=value or "", revision=revision, **f)


# ----- (a) final state -------------------------------------------------------------------------------
def _final(ops: list[Op], **replicas: dict[str, tuple[str, int]]) -> checkers.Verdict:
    return checkers.final_state(History(ops=ops, final=dict(replicas)))


def test_final_state_accepts_the_last_acknowledged_write_everywhere() -> None:
    ops = [put("a", "1", 0, 0, 10), put("a", "2", 1, 20, 30), put("b", "x", 2, 0, 10), delete("b", 3, 40, 50)]
    verdict = _final(ops, r0={"a": ("2", 2)}, r1={"a": ("2", 2)})
    assert verdict.ok, verdict.violations
    assert verdict.checked == 4


def test_final_state_finds_a_lost_acknowledged_write() -> None:
    ops = [op("cas_set", "a", 0, 10, value="b", expected=0, applied=True, partition=0, offset=4, revision=5)]
    verdict = _final(ops, live={"a": ("b", 5)}, fresh={})
    assert not verdict.ok
    assert len(verdict.violations) == 1 and verdict.violations[0].startswith("fresh: a is absent")


def test_final_state_finds_an_older_value_a_resurrected_delete_and_an_invented_key() -> None:
    ops = [put("a", "1", 0, 0, 10), put("a", "2", 1, 20, 30), put("b", "x", 2, 0, 10), delete("b", 3, 40, 50)]
    verdict = _final(ops, r0={"a": ("1", 1), "b": ("x", 3), "zz": ("?", 9)})
    assert len(verdict.violations) == 3, verdict.violations


def test_final_state_lets_ambiguous_writes_be_present_or_absent_but_nothing_else() -> None:
    ops = [
        put("a", "1", 0, 0, 10),
        op("set", "a", 20, 30, value="2", outcome="info", applied=False),
        op("delete", "a", 40, 50, outcome="info", applied=False),
        put("b", "x", 2, 0, 10),
        op(
            "cas_set",
            "b",
            20,
            30,
            value="refused",
            expected=1,
            applied=False,
            revision=3,
            partition=0,
            offset=5,
        ),
    ]
    for state in ({"a": ("1", 1)}, {"a": ("2", 7)}, {}):
        verdict = _final(ops, r0={**state, "b": ("x", 3)})
        assert verdict.ok, (state, verdict.violations)
    assert not _final(ops, r0={"a": ("2", 1), "b": ("x", 3)}).ok  # an ambiguous write cannot predate the last
    assert not _final(ops, r0={"a": ("1", 1), "b": ("refused", 6)}).ok  # a refused write never shows


def test_final_state_judges_only_the_epoch_after_the_last_topic_recreation() -> None:
    ops = [put("a", "old", 0, 0, 10), put("a", "new", 0, 200, 210)]
    history = History(ops=ops, recreations=[(100 * MS, 150 * MS)], final={"r0": {"a": ("new", 1)}})
    assert checkers.final_state(history).ok
    history.final = {"r0": {"a": ("old", 1)}}
    assert not checkers.final_state(history).ok


# ----- (b) linearizability: what reaches porcupine ------------------------------------------------------
def test_linearizable_sends_writes_and_linearizable_gets_and_names_the_bad_key() -> None:
    ops = [
        put("a", "1", 0, 0, 10),
        get("a", 20, 30, "1", 1, read="linearizable"),
        get("a", 20, 30, None, read="eventual"),  # not a linearizable read: not sent
        get("a", 20, 30, None, read="linearizable", outcome="fail"),  # failed: not sent
        op("set", "b", 0, 10, value="2", outcome="info"),
        op("set", "c", 0, 10, value="3", outcome="fail"),  # definitely not applied: not sent
    ]
    sent: list[list[lincheck.Op]] = []

    def fake(history: list[lincheck.Op]) -> str:
        sent.append(history)
        return "violation" if any(o.key == "0/b" for o in history) else "ok"

    verdict = checkers.linearizable(History(ops=ops), check=fake)
    assert [(o.op, o.key, o.ambiguous) for o in sent[0]] == [
        ("put", "0/a", False),
        ("get", "0/a", False),
        ("put", "0/b", True),
    ]
    assert len(verdict.violations) == 1 and verdict.violations[0].startswith("key 0/b")


# ----- (c) watch ------------------------------------------------------------------------------------------
def _watch(
    ops: list[Op], deliveries: list[tuple[str, str, str, int]], applied: dict[int, int]
) -> checkers.Verdict:
    session = WatchSession(1, 1, "r0", start=0, applied=applied, end_positions={0: 100}, stop=1000 * MS)
    events = [
        Delivery(1, 1, "r1", kind, key, value, off + 1, 0, off, 500 * MS)
        for kind, key, value, off in deliveries
    ]
    return checkers.watch(History(ops=ops, deliveries=events, sessions=[session]))


WRITES = [put("a", "1", 0, 0, 10), put("a", "2", 1, 20, 30), delete("a", 2, 40, 50), put("b", "x", 3, 40, 50)]


def test_watch_accepts_every_write_after_the_snapshot_once_in_order() -> None:
    deliveries = [("put", "a", "2", 1), ("delete", "a", "", 2), ("put", "b", "x", 3)]
    verdict = _watch(WRITES, deliveries, {0: 1})
    assert verdict.ok, verdict.violations
    assert verdict.checked == 3


def test_watch_finds_a_missed_write() -> None:
    verdict = _watch(WRITES, [("put", "a", "2", 1), ("put", "b", "x", 3)], {0: 1})
    assert len(verdict.violations) == 1 and "never delivered" in verdict.violations[0]


def test_watch_finds_a_write_missed_when_the_range_listed_no_position() -> None:
    verdict = _watch(WRITES, [("put", "a", "2", 1), ("delete", "a", "", 2), ("put", "b", "x", 3)], {})
    assert len(verdict.violations) == 1 and "never delivered" in verdict.violations[0]


def test_watch_finds_duplicates_reordering_snapshot_repeats_and_inventions() -> None:
    deliveries = [
        ("put", "a", "1", 0),  # before the Range's applied
        ("put", "a", "2", 1),
        ("put", "a", "2", 1),  # twice (and so out of order)
        ("put", "b", "x", 3),
        ("delete", "a", "", 2),  # after b: fine for b, but a's order is 1 then 2: ok
        ("put", "c", "ghost", 7),  # nobody wrote it
    ]
    verdict = _watch(WRITES, deliveries, {0: 1})
    text = "\n".join(verdict.violations)
    assert "before the Range's applied" in text
    assert "delivered twice" in text
    assert "out of order" in text
    assert "matches no write" in text


def test_watch_finds_a_refused_compare_and_set_delivered() -> None:
    refused = op(
        "cas_set", "a", 0, 10, value="no", expected=9, applied=False, revision=0, partition=0, offset=5
    )
    verdict = _watch([refused], [("put", "a", "no", 5)], {0: 0})
    assert len(verdict.violations) == 1 and "refused compare-and-set" in verdict.violations[0]


def test_watch_finds_a_stalled_session() -> None:
    history = History(
        ops=WRITES, sessions=[WatchSession(1, 1, "r0", 0, {0: 4}, {0: 4}, stop=1, stalled=True)]
    )
    assert not checkers.watch(history).ok


# ----- (d) bounded reads ---------------------------------------------------------------------------------
def test_bounded_staleness_finds_a_read_older_than_its_bound() -> None:
    ops = [put("a", "1", 0, 0, 10), put("a", "2", 1, 20, 30)]
    fresh = get("a", 2000, 2010, "2", 2, read="staleness", bound=1000)
    within = get("a", 500, 510, "1", 1, read="staleness", bound=1000, target="r1")  # write 2 is 470 ms old
    stale = get("a", 2000, 2010, "1", 1, read="staleness", bound=1000, target="r1")
    assert checkers.bounded_reads(History(ops=[*ops, fresh, within])).ok
    verdict = checkers.bounded_reads(History(ops=[*ops, stale]))
    assert len(verdict.violations) == 1 and "bound 1000 ms" in verdict.violations[0]


def test_bounded_staleness_finds_a_key_missing_that_no_delete_explains() -> None:
    ops = [put("a", "1", 0, 0, 10)]
    assert not checkers.bounded_reads(
        History(ops=[*ops, get("a", 3000, 3010, None, read="staleness", bound=500)])
    ).ok
    ops.append(op("delete", "a", 2990, 3020, outcome="info", applied=False))  # may explain it
    assert checkers.bounded_reads(
        History(ops=[*ops, get("a", 3000, 3010, None, read="staleness", bound=500)])
    ).ok


def test_bounded_lag_finds_a_replica_further_behind_than_its_bound() -> None:
    # a=1 at offset 0, a=2 at offset 1, then 20 records of other keys in the same partition
    ops = [put("a", "1", 0, 0, 10), put("a", "2", 1, 20, 30)]
    ops += [put(f"k{i}", "v", 2 + i, 40, 50) for i in range(20)]
    behind = get("a", 5000, 5010, "1", 1, read="lag", bound=5)  # misses a=2: at least 21 records behind
    verdict = checkers.bounded_reads(History(ops=[*ops, behind]))
    assert len(verdict.violations) == 1 and "at least 21 records behind (bound 5)" in verdict.violations[0]
    lenient = get("a", 5000, 5010, "1", 1, read="lag", bound=50)
    assert checkers.bounded_reads(History(ops=[*ops, lenient])).ok
    current = get("a", 5000, 5010, "2", 2, read="lag", bound=5)
    assert checkers.bounded_reads(History(ops=[*ops, current])).ok


def test_eventual_reads_on_one_replica_never_go_back() -> None:
    ops = [put("a", "1", 0, 0, 10), put("a", "2", 1, 20, 30)]
    forward = [get("a", 40, 41, "1", 1), get("a", 50, 51, "2", 2), get("a", 45, 60, "1", 1, target="r1")]
    assert checkers.bounded_reads(History(ops=[*ops, *forward])).ok
    back = [get("a", 40, 41, "2", 2), get("a", 50, 51, "1", 1)]
    assert not checkers.bounded_reads(History(ops=[*ops, *back])).ok
    vanished = [get("a", 40, 41, "2", 2), get("a", 50, 51, None)]
    assert not checkers.bounded_reads(History(ops=[*ops, *vanished])).ok


# ----- (e) deadlines --------------------------------------------------------------------------------------
def test_deadlines_find_a_call_that_outlived_its_deadline() -> None:
    ok = get("a", 0, 2400, None, deadline=2.0)
    late = get("a", 0, 3500, None, deadline=2.0)
    assert checkers.deadlines(History(ops=[ok])).ok
    verdict = checkers.deadlines(History(ops=[ok, late]))
    assert len(verdict.violations) == 1 and "took 3.50s, deadline 2.00s" in verdict.violations[0]


def test_history_round_trips_through_a_file(tmp_path: Any) -> None:
    history = History(
        ops=list(WRITES),
        deliveries=[Delivery(1, 1, "r0", "put", "a", "1", 1, 0, 0, 5)],
        sessions=[WatchSession(1, 1, "r0", 0, {0: 1}, {0: 4})],
        recreations=[(1, 2)],
        final={"r0": {"a": ("1", 1)}},
    )
    path = tmp_path / "h.json"
    history.save(path)
    loaded = History.load(path)
    assert loaded.ops == history.ops
    assert loaded.sessions == history.sessions
    assert loaded.final == history.final
    assert loaded.recreations == history.recreations


def test_epochs_make_writes_across_a_topic_recreation_ambiguous_and_drop_such_reads() -> None:
    before, during_w, during_r, after = (
        put("a", "1", 0, 0, 10),
        put("a", "2", 0, 90, 120),  # acknowledged while the new topic was being created
        get("a", 95, 125, "1", 1),
        put("a", "3", 1, 200, 210),
    )
    history = History(ops=[before, during_w, during_r, after], recreations=[(100 * MS, 150 * MS)])
    epochs = history.epochs()
    assert [o.id for o in epochs[0]] == [before.id]
    assert [(o.id, o.outcome, o.epoch) for o in epochs[1]] == [(during_w.id, "info", 1), (after.id, "ok", 1)]


def test_an_ambiguous_write_may_land_in_a_topic_recreated_before_the_producer_gives_up() -> None:
    """Torture seed 33: a Set answered "may still be applied later" while the topic was absent (deleted,
    not yet recreated) was delivered by the replica's producer into the recreated topic, seconds after the
    call had ended. Until librdkafka gives up on it (message.timeout.ms) such a write is ambiguous in every
    epoch that begins meanwhile: the watch and final-state checkers must accept it there."""
    lost = op("set", "a", 0, 3000, value="late", outcome="info", applied=False)
    history = History(
        ops=[lost, put("b", "x", 1, 5000, 5010)],
        recreations=[(4000 * MS, 4500 * MS)],
        final={"r0": {"a": ("late", 1), "b": ("x", 2)}},
        sessions=[WatchSession(0, 1, "r0", 4600 * MS, {0: 0}, end_positions={0: 2}, stop=6000 * MS)],
        deliveries=[
            Delivery(0, 1, "r0", "put", "a", "late", 1, 0, 0, 4700 * MS),
            Delivery(0, 1, "r0", "put", "b", "x", 2, 0, 1, 5020 * MS),
        ],
    )
    assert (lost.id, "info", 1) in [(o.id, o.outcome, o.epoch) for o in history.epochs()[1]]
    assert checkers.final_state(history).ok, checkers.final_state(history).violations
    assert checkers.watch(history).ok, checkers.watch(history).violations
    # Not forever: a write called longer ago than the producer keeps a record is not in a later epoch.
    late = 4000 + int(PRODUCER_GIVES_UP_S * 1000) + 1000
    history.recreations = [(late * MS, (late + 500) * MS)]
    assert lost.id not in [o.id for o in history.epochs()[1]]


def test_writes_refused_before_anything_was_sent_are_definite_failures() -> None:
    """A write that never reached a replica (no connection), or that the replica refused before producing
    (not serving, a Delete that could not catch up first), certainly had no effect: `fail`, not `info`.
    Anything else — a timeout, Kafka not acknowledging — stays ambiguous."""
    history = History()
    refused = [
        ("UNAVAILABLE", "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: refused"),
        ("UNAVAILABLE", "this replica is catching up with Kafka and not serving reads yet"),
        ("UNAVAILABLE", "this replica is not serving reads: describing topic 't': Broker: Unknown topic"),
        ("UNAVAILABLE", "the Delete was not sent: the replica did not become fresh enough"),
    ]
    unknown = [
        ("UNAVAILABLE", "Kafka did not acknowledge the write within 3.0s; it may still be applied later"),
        ("UNAVAILABLE", "the conditional write was not acknowledged and applied within 3.0s; it may still"),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded"),
        ("UNAVAILABLE", "Stream removed (Socket closed)"),
    ]
    for code, details in refused + unknown:
        begun = history.begin(1, "set", "a", "r0", 3.0, value="v")
        history.failed(begun, _RpcError(code, details))
    assert [o.outcome for o in history.ops] == ["fail"] * len(refused) + ["info"] * len(unknown)


class _RpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """Just enough of a gRPC error for History.failed."""

    def __init__(self, code: str, details: str) -> None:
        self._code, self._details = grpc.StatusCode[code], details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


# ----- (f) one write, one record ---------------------------------------------------------------------
def test_single_record_accepts_each_write_at_one_revision() -> None:
    ops = [
        put("k", "a", 4, 0, 10),
        op("set", "k", 20, 30, value="b", outcome="info", error="UNAVAILABLE: may still be applied"),
        get("k", 40, 50, "a", revision=5),
        get("k", 60, 70, "b", revision=9),  # the ambiguous write landed later: once, fine
    ]
    deliveries = [Delivery(0, 1, "r0", "put", "k", "b", 9, 0, 8, 65 * MS)]
    verdict = checkers.single_record(History(ops=ops, deliveries=deliveries))
    assert verdict.ok, verdict.violations
    assert verdict.checked == 2


def test_single_record_finds_an_ambiguous_write_appended_twice() -> None:
    """Seed 23: a Set answered UNAVAILABLE landed at revision 92 and again at 117, after newer writes."""
    ops = [
        op("set", "k3", 0, 10, value="p1-184", outcome="info", error="UNAVAILABLE: may still be applied"),
        get("k3", 20, 30, "p1-184", revision=92),
        put("k3", "p3-150", 100, 40, 50),
        get("k3", 60, 70, "p1-184", revision=117),
    ]
    verdict = checkers.single_record(History(ops=ops))
    assert len(verdict.violations) == 1
    assert "rev 92" in verdict.violations[0] and "rev 117" in verdict.violations[0]


def test_single_record_finds_a_duplicate_only_a_watch_saw() -> None:
    ops = [put("k", "a", 4, 0, 10)]
    deliveries = [
        Delivery(0, 1, "r0", "put", "k", "a", 5, 0, 4, 12 * MS),
        Delivery(0, 1, "r0", "put", "k", "a", 12, 0, 11, 30 * MS),
    ]
    verdict = checkers.single_record(History(ops=ops, deliveries=deliveries))
    assert len(verdict.violations) == 1


def test_single_record_does_not_judge_a_value_written_twice() -> None:
    ops = [put("k", "same", 4, 0, 10), put("k", "same", 8, 20, 30)]
    assert checkers.single_record(History(ops=ops)).ok
