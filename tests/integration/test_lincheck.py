"""The porcupine-based checker itself: it accepts a linearizable history and catches violations
(so a test that relies on it can fail)."""

from __future__ import annotations

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
