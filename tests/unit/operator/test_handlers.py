"""handlers.py turns outcomes into kopf's retry semantics; main.py parses the command line."""

from __future__ import annotations

import kopf
import pytest
from kvs2_operator import handlers
from kvs2_operator.errors import (
    KafkaRejectedError,
    KafkaUnavailableError,
    NotSupportedError,
    SpecError,
)
from kvs2_operator.main import run


def test_no_error_raises_nothing() -> None:
    handlers.raise_for(None, retry=0)


@pytest.mark.parametrize("error", [SpecError("bad"), NotSupportedError("no")])
def test_permanent_errors_stop_kopf_retrying(error: Exception) -> None:
    with pytest.raises(kopf.PermanentError, match=str(error)):
        handlers.raise_for(error, retry=0)  # type: ignore[arg-type]


def test_transient_errors_back_off_exponentially_with_a_cap() -> None:
    error = KafkaUnavailableError("down")
    delays: list[float] = []
    for retry in range(12):
        with pytest.raises(kopf.TemporaryError) as info:
            handlers.raise_for(error, retry=retry)
        assert info.value.delay is not None
        delays.append(info.value.delay)
    assert delays[:5] == [1, 2, 4, 8, 16]
    assert max(delays) == handlers.MAX_RETRY_DELAY
    assert delays == sorted(delays)


def test_a_kafka_refusal_is_retried_slowly() -> None:
    assert handlers.retry_delay(0, KafkaRejectedError("rf too big")) == handlers.REJECTED_RETRY_DELAY


def test_the_finalizer_is_only_for_the_delete_policy() -> None:
    assert handlers._deletes_topic(spec=kopf.Spec({"spec": {"topicDeletionPolicy": "Delete"}}))  # type: ignore[arg-type]
    assert not handlers._deletes_topic(spec=kopf.Spec({"spec": {"topicDeletionPolicy": "Retain"}}))  # type: ignore[arg-type]
    assert not handlers._deletes_topic(spec=kopf.Spec({"spec": {}}))  # type: ignore[arg-type]


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--resync-interval", "0"]) == 2
    assert "--resync-interval must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        run(["--no-such-flag"])
    assert info.value.code == 2


def test_unreadable_kubeconfig_exits_2(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--", "--kubeconfig", "/nonexistent/kubeconfig"]) == 2
    assert "cannot load Kubernetes credentials" in capsys.readouterr().err


def test_every_handler_is_registered() -> None:
    """The kopf wiring itself: a refactor that drops a decorator must fail here, not in a cluster."""
    registry = kopf.get_default_registry()
    changing = {(h.id, h.reason, h.initial) for h in registry._changing.get_all_handlers()}
    assert ("reconcile_store", kopf.Reason.CREATE, None) in changing
    assert ("reconcile_store", kopf.Reason.UPDATE, None) in changing
    assert ("reconcile_store", None, True) in changing  # resume: every existing store at operator start
    deletes = [h for h in registry._changing.get_all_handlers() if h.reason == kopf.Reason.DELETE]
    assert [h.id for h in deletes] == ["delete_topic"] and deletes[0].requires_finalizer
    assert deletes[0].when is handlers._deletes_topic
    watching = [h.id for h in registry._watching.get_all_handlers()]
    assert watching == ["child_changed"] * 3  # StatefulSets, Services, PodDisruptionBudgets
    assert registry._spawning.get_all_handlers() == [], "a timer/daemon would put a finalizer on every store"
