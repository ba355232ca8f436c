"""pytest fixtures for a real Kafka: one shared broker per run, private brokers for fault tests.

Nothing here skips when Kafka is missing: the fixtures install it (`ensure_kafka`), because a test
that skips on a machine without Kafka is a test that cannot fail.

- `kafka`: session-scoped, shared by every test; tests must not stop, kill or restart it.
- `private_kafka`: a broker of the test's own, to stop, kill or restart at will.
- `topic_name`: a topic name unique to the test (the shared broker outlives every topic).
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.harness.common import progress
from tests.harness.kafka import KafkaBroker


def _started(config: pytest.Config, workdir: Path, who: str) -> KafkaBroker:
    """Start a broker with pytest's capture off, so a cold install's progress and the log path show live."""
    broker = KafkaBroker(workdir)
    capture = config.pluginmanager.getplugin("capturemanager")
    live = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with live:
        # Printed before the start so the log path is on screen even if the start hangs or fails.
        progress(f"{who}: Kafka run directory {workdir} (log: {broker.log_path})")
        return broker.start()


@pytest.fixture(scope="session")
def kafka(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The run's shared single-node broker, started once and stopped at the end of the session."""
    broker = _started(pytestconfig, tmp_path_factory.mktemp("kafka"), "shared broker")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def private_kafka(pytestconfig: pytest.Config, tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker owned by one test, for stopping, killing and restarting Kafka under the system."""
    broker = _started(pytestconfig, tmp_path / "kafka", "private broker")
    try:
        yield broker
    finally:
        broker.kill()  # its data is thrown away with tmp_path; no need to wait for a clean shutdown


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """`t-<test name>-<random>`: legal for Kafka ([a-zA-Z0-9._-], at most 249 chars) and unique."""
    base = re.sub(r"[^a-zA-Z0-9._-]+", "_", request.node.name).strip("_")[:80]
    return f"t-{base}-{uuid.uuid4().hex[:8]}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used a broker gets a report section naming that broker's log and its tail."""
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("kafka", "private_kafka"):
            broker = funcargs.get(name)
            if isinstance(broker, KafkaBroker):
                text = f"log: {broker.log_path}\n--- last lines ---\n{broker.log_tail(20)}"
                report.sections.append((f"Kafka broker `{name}` ({broker.bootstrap_servers})", text))
    return report
