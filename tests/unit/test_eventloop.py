"""`kvs2 serve --event-loop`: uvloop when installed by default, the standard loop on request, and a
clear error when uvloop is asked for but missing (issue 12)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop
from kvs2 import eventloop
from kvs2.config import ServeSettings
from kvs2.errors import ConfigError


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_auto_runs_on_uvloop_when_installed() -> None:
    assert eventloop.resolve("auto") == "uvloop"
    assert eventloop.run(_loop_type()) is uvloop.Loop
    assert eventloop.run(_loop_type(), "uvloop") is uvloop.Loop


def test_asyncio_runs_the_standard_loop() -> None:
    loop_type = eventloop.run(_loop_type(), "asyncio")
    assert not issubclass(loop_type, uvloop.Loop)
    assert issubclass(loop_type, asyncio.BaseEventLoop)


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "uvloop_installed", lambda: False)
    assert eventloop.resolve("auto") == "asyncio"
    with pytest.raises(ConfigError, match="uvloop package is not installed"):
        eventloop.resolve("uvloop")


def test_an_unknown_loop_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--event-loop"):
        eventloop.resolve("trio")
    with pytest.raises(ConfigError, match="--event-loop must be auto, uvloop or asyncio"):
        ServeSettings(bootstrap_servers="127.0.0.1:9", topic="t", data_dir=tmp_path, event_loop="trio")
