"""Which asyncio event loop `kvs2 serve` runs on: uvloop when installed (the default), or the standard one.

Why: a replica's CPU per call is mostly grpc's C core and the event loop's own bookkeeping; uvloop (libuv)
measured about 9 % less CPU per unary call here (issue 12; bench/servercpu.py compares both). The
standard loop stays one flag away (`--event-loop asyncio`) in case uvloop misbehaves on a platform.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from kvs2.errors import ConfigError

log = logging.getLogger(__name__)

EVENT_LOOPS = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    """`auto` → `uvloop` when it is installed, else `asyncio`; `uvloop` must be installed."""
    if choice not in EVENT_LOOPS:
        raise ConfigError(f"--event-loop must be one of {', '.join(EVENT_LOOPS)}, got {choice!r}")
    if choice == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    if choice == "uvloop" and not uvloop_installed():
        raise ConfigError("--event-loop uvloop: the uvloop package is not installed (pip install uvloop)")
    return choice


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for `asyncio.Runner` (None: the standard loop)."""
    if resolve(choice) == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """`asyncio.run(main)` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        log.debug("event loop: %s", type(runner.get_loop()).__module__)
        return runner.run(main)
