"""A fault stack (tests/harness/nemesis.py) shared by the targeted fault tests of this directory: Kafka,
Toxiproxy and two replicas that reach Kafka only through their own proxies, on an aggressively compacted
topic. Each test heals what it broke; the stack's logs are named when a test fails."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator

import pytest

from tests.harness.nemesis import FaultStack, StackConfig


@pytest.fixture(scope="module")
def fault_stack(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultStack]:
    stack = FaultStack(tmp_path_factory.mktemp("faults"), StackConfig(replicas=2, cas_cleanup_grace=600.0))
    with running(stack, pytestconfig):
        yield stack


@contextlib.contextmanager
def running(stack: FaultStack, pytestconfig: pytest.Config) -> Iterator[FaultStack]:
    """Start `stack` with pytest's capture off (a cold build or install shows its progress); stop it after."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    try:
        if capture is not None:
            with capture.global_and_fixture_disabled():
                stack.start()
        else:
            stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack(fault_stack: FaultStack) -> Iterator[FaultStack]:
    """The shared stack, healed after the test whatever it did."""
    yield fault_stack
    fault_stack.heal_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.failed and isinstance(stack, FaultStack):
        for name, replica in stack.replicas.items():
            tail = replica.process.log_tail(30) if replica.process else "(not started)"
            report.sections.append((f"replica {name} ({replica.log_path})", tail))
    return report
