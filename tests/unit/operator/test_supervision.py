"""The resync loop is supervised: a crash is counted, logged and the loop restarted; liveness fails
when it stops sweeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest
from kvs2_operator import handlers
from kvs2_operator.kube import KubeApi
from kvs2_operator.reconcile import Deps


async def test_a_crashed_resync_loop_is_restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    forever = asyncio.Event()

    async def flaky(deps: Deps, options: handlers.Options, resync: handlers.Resync | None = None) -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        await forever.wait()

    monkeypatch.setattr(handlers, "resync_loop", flaky)
    monkeypatch.setattr(handlers, "RESYNC_RESTART_DELAY", 0.0)
    resync = handlers.Resync()
    deps = Deps(kube=cast(KubeApi, object()))
    task = asyncio.create_task(handlers.supervise_resync(deps, handlers.Options(), resync))
    for _ in range(100):
        if len(runs) == 3:
            break
        await asyncio.sleep(0.01)
    assert len(runs) == 3 and resync.crashes == 2 and resync.last_error == "RuntimeError: boom 2"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_liveness_fails_when_no_sweep_happened_for_too_long() -> None:
    probe = cast(Callable[..., dict[str, Any]], handlers.resync_alive)  # kopf's decorator retypes it
    resync = handlers.Resync()
    memo: Any = SimpleNamespace(resync=resync, options=handlers.Options(resync_interval=30.0))
    assert probe(memo=memo)["crashes"] == 0
    resync.last_sweep -= resync.stale_after(30.0) + 1
    with pytest.raises(kopf.PermanentError, match="no resync sweep"):
        probe(memo=memo)
