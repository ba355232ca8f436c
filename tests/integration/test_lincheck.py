"""The porcupine-based checker itself: it accepts a linearizable history and catches violations
(so a test that relies on it can fail)."""

from __future__ import annotations

from tests.harness import checkers
from tests.harness.history import History
from tests.harness.history import Op as HOp
from tests.harness.lincheck import Op, check


def test_checker_accepts_a_linearizable_history() -> None:
    history = [
        Op(1, "put", "k", 0, 10, value="a", revision=5),
        Op(2, "get", "k", 5, 8, found=False),  # overlaps the put: may see either
        Op(2, "get", "k", 20, 30, found=True, out_value="a", revision=5),
        Op(3, "cas", "k", 31, 40, value="b", expected=5, applied=True, revision=9),
        Op(1, "cas", "k", 41, 50, value="c", expected=5, applied=False, revision=9),
    ]
    assert check(history) == "ok"


def test_checker_catches_a_stale_read() -> None:
    history = [Op(1, "put", "k", 0, 10, value="a", revision=5), Op(2, "get", "k", 20, 30, found=False)]
    assert check(history) == "violation"


def test_checker_catches_two_winners_of_create_if_absent() -> None:
    history = [
        Op(1, "cas", "k", 0, 10, value="a", expected=0, applied=True, revision=3),
        Op(2, "cas", "k", 0, 10, value="b", expected=0, applied=True, revision=4),
    ]
    assert check(history) == "violation"


def test_checker_accepts_a_delete_then_create_if_absent() -> None:
    history = [
        Op(1, "put", "k", 0, 10, value="a", revision=5),
        Op(2, "del", "k", 11, 20, revision=6),
        Op(3, "get", "k", 21, 22, found=False),
        Op(3, "cas", "k", 23, 30, value="b", expected=0, applied=True, revision=8),
        Op(1, "cas_del", "k", 31, 40, expected=8, applied=True, revision=9),
        Op(2, "get", "k", 41, 42, found=False),
    ]
    assert check(history) == "ok"


def test_checker_catches_a_read_of_a_deleted_key() -> None:
    history = [
        Op(1, "put", "k", 0, 10, value="a", revision=5),
        Op(2, "del", "k", 11, 20, revision=6),
        Op(3, "get", "k", 21, 22, found=True, out_value="a", revision=5),
    ]
    assert check(history) == "violation"


def test_checker_catches_a_compare_and_delete_that_ignores_its_condition() -> None:
    history = [
        Op(1, "put", "k", 0, 10, value="a", revision=5),
        Op(2, "cas_del", "k", 11, 20, expected=4, applied=True, revision=6),
    ]
    assert check(history) == "violation"


def test_checker_catches_a_refused_compare_and_set_whose_condition_held() -> None:
    history = [
        Op(1, "put", "k", 0, 10, value="a", revision=5),
        Op(2, "cas", "k", 11, 20, value="b", expected=5, applied=False, revision=5),
    ]
    assert check(history) == "violation"


def test_checker_lets_an_ambiguous_write_be_applied_or_not() -> None:
    applied = [
        Op(1, "put", "k", 0, 10, value="a", ambiguous=True),
        Op(2, "get", "k", 20, 30, found=True, out_value="a", revision=7),
        Op(2, "cas", "k", 31, 40, value="b", expected=7, applied=True, revision=9),
    ]
    never = [Op(1, "put", "k", 0, 10, value="a", ambiguous=True), Op(2, "get", "k", 20, 30, found=False)]
    assert check(applied) == "ok"
    assert check(never) == "ok"


def test_checker_catches_a_value_nobody_wrote_even_with_ambiguous_writes() -> None:
    history = [
        Op(1, "put", "k", 0, 10, value="a", ambiguous=True),
        Op(2, "get", "k", 20, 30, found=True, out_value="z", revision=7),
    ]
    assert check(history) == "violation"


def test_checker_catches_an_ambiguous_write_read_then_lost() -> None:
    history = [
        Op(1, "put", "k", 0, 10, value="a", ambiguous=True),
        Op(2, "get", "k", 20, 30, found=True, out_value="a", revision=7),
        Op(2, "get", "k", 40, 50, found=False),
    ]
    assert check(history) == "violation"


def test_history_checker_names_the_key_porcupine_rejects() -> None:
    """checkers.linearizable on a recorded History: a lost delete under an ambiguous write is caught."""
    ms = 1_000_000
    ops = [
        HOp(1, 1, "set", "a", "r0", 0, 10 * ms, outcome="ok", value="1", applied=True, revision=1),
        HOp(2, 2, "delete", "a", "r1", 20 * ms, 30 * ms, outcome="ok", applied=True, revision=2),
        HOp(3, 1, "set", "a", "r0", 31 * ms, 32 * ms, outcome="info", value="2"),
        HOp(4, 2, "get", "a", "r1", 40 * ms, 50 * ms, outcome="ok", read="linearizable", found=True,
            out_value="1", revision=1),
        HOp(5, 1, "set", "b", "r0", 0, 10 * ms, outcome="ok", value="x", applied=True, revision=3),
        HOp(6, 2, "get", "b", "r1", 40 * ms, 50 * ms, outcome="ok", read="linearizable", found=True,
            out_value="x", revision=3),
    ]  # fmt: skip
    verdict = checkers.linearizable(History(ops=ops))
    assert verdict.checked == 6
    assert len(verdict.violations) == 1 and verdict.violations[0].startswith("key 0/a is not linearizable")
    assert checkers.linearizable(History(ops=[ops[0], *ops[2:]])).ok  # without the delete: fine
