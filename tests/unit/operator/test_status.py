from __future__ import annotations

import ast
import inspect
from typing import Any

import pytest
from kvs2_operator import errors, reconcile, status
from kvs2_operator.errors import Reason
from kvs2_operator.status import (
    Condition,
    build_status,
    merge_conditions,
    ready_condition,
    status_changed,
    topic_condition,
    transitions,
    workload_condition,
)

T0 = "2030-01-01T00:00:00Z"
T1 = "2030-01-01T00:05:00Z"


def _sts(generation: int = 1, observed: int = 1, ready: int = 0, updated: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {"observedGeneration": observed, "readyReplicas": ready, "updatedReplicas": updated},
    }


def test_workload_not_ready_while_pods_do_not_run() -> None:
    cond = workload_condition(_sts(ready=0), desired=3)
    assert (cond.status, cond.reason) == (False, Reason.REPLICAS_NOT_READY)
    assert "0/3" in cond.message


def test_workload_progressing_until_the_controller_observed_the_generation() -> None:
    cond = workload_condition(_sts(generation=2, observed=1, ready=3, updated=3), desired=3)
    assert (cond.status, cond.reason) == (False, Reason.WORKLOAD_PROGRESSING)


def test_workload_rolling_update_is_progressing() -> None:
    cond = workload_condition(_sts(ready=3, updated=1), desired=3)
    assert (cond.status, cond.reason) == (False, Reason.WORKLOAD_PROGRESSING)


def test_workload_ready_and_scaled_to_zero() -> None:
    assert workload_condition(_sts(ready=3, updated=3), desired=3).reason == Reason.REPLICAS_READY
    zero = workload_condition(_sts(), desired=0)
    assert (zero.status, zero.reason) == (True, Reason.SCALED_TO_ZERO)
    assert workload_condition(None, desired=1).status is False


def test_ready_summarises_the_first_failing_condition() -> None:
    topic_bad = topic_condition(False, Reason.KAFKA_UNAVAILABLE, "no broker")
    workload_bad = Condition(status.WORKLOAD_READY, False, Reason.REPLICAS_NOT_READY, "0/3")
    ready = ready_condition(topic_bad, workload_bad)
    assert (ready.type, ready.status, ready.reason, ready.message) == (
        "Ready",
        False,
        Reason.KAFKA_UNAVAILABLE,
        "no broker",
    )
    topic_ok = topic_condition(True, Reason.TOPIC_CREATED, "ok")
    assert ready_condition(topic_ok, workload_bad).reason == Reason.REPLICAS_NOT_READY
    workload_ok = Condition(status.WORKLOAD_READY, True, Reason.REPLICAS_READY, "3/3")
    assert ready_condition(topic_ok, workload_ok).reason == Reason.READY
    zero = Condition(status.WORKLOAD_READY, True, Reason.SCALED_TO_ZERO, "none")
    assert ready_condition(topic_ok, zero).status is False


def test_last_transition_time_survives_message_and_reason_changes() -> None:
    first = merge_conditions(
        None, [topic_condition(False, Reason.KAFKA_UNAVAILABLE, "a")], generation=1, now=T0
    )
    second = merge_conditions(
        first, [topic_condition(False, Reason.KAFKA_REJECTED, "b")], generation=2, now=T1
    )
    assert second[0]["lastTransitionTime"] == T0
    assert second[0]["observedGeneration"] == 2
    third = merge_conditions(second, [topic_condition(True, Reason.TOPIC_CREATED, "c")], generation=2, now=T1)
    assert third[0]["lastTransitionTime"] == T1
    assert third[0]["status"] == "True"


def _full(topic: Condition, workload: Condition, previous: dict[str, Any], now: str) -> dict[str, Any]:
    return build_status(previous, generation=1, topic=topic, workload=workload, extra={"topic": "t"}, now=now)


def test_status_unchanged_on_a_steady_second_pass() -> None:
    topic = topic_condition(True, Reason.TOPIC_CREATED, "ok")
    workload = Condition(status.WORKLOAD_READY, False, Reason.REPLICAS_NOT_READY, "0/3")
    first = _full(topic, workload, {}, T0)
    second = _full(topic, workload, first, T1)
    assert not status_changed(first, second)
    assert [c["type"] for c in first["conditions"]] == ["Ready", "TopicReady", "WorkloadReady"]
    assert transitions(first["conditions"], second["conditions"]) == []


def test_transitions_name_what_changed() -> None:
    topic_down = topic_condition(False, Reason.KAFKA_UNAVAILABLE, "down")
    topic_up = topic_condition(True, Reason.TOPIC_CREATED, "up")
    workload = Condition(status.WORKLOAD_READY, False, Reason.REPLICAS_NOT_READY, "0/3")
    before = _full(topic_down, workload, {}, T0)
    after = _full(topic_up, workload, before, T1)
    changed = {c["type"] for c in transitions(before["conditions"], after["conditions"])}
    assert changed == {"Ready", "TopicReady"}
    assert status_changed(before, after)


def test_build_status_omits_unknown_extras() -> None:
    topic = topic_condition(True, Reason.TOPIC_CREATED, "ok")
    workload = Condition(status.WORKLOAD_READY, True, Reason.REPLICAS_READY, "1/1")
    result = build_status(
        {}, generation=3, topic=topic, workload=workload, extra={"topic": None, "replicas": 1}
    )
    assert "topic" not in result
    assert result["replicas"] == 1 and result["observedGeneration"] == 3


def _reason_literals(module: Any) -> set[str]:
    """CamelCase string literals passed where a reason is expected would bypass the enum."""
    tree = ast.parse(inspect.getsource(module))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "reason" and isinstance(node.value, ast.Constant):
            found.add(str(node.value.value))
    return found


@pytest.mark.parametrize("module", [status, reconcile])
def test_no_reason_is_invented_outside_the_closed_list(module: Any) -> None:
    assert _reason_literals(module) == set()


def test_every_reason_is_camel_case_and_unique() -> None:
    values = [r.value for r in Reason]
    assert len(values) == len(set(values))
    for value in values:
        assert value[0].isupper() and value.isalnum(), value


def test_every_operator_error_carries_a_reason_from_the_list() -> None:
    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, errors.OperatorError):
            assert isinstance(obj.reason, Reason)


def test_unknown_reason_cannot_be_constructed() -> None:
    with pytest.raises(ValueError, match="NotAReason"):
        Reason("NotAReason")
