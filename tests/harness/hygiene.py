"""pytest plugin for the hygiene of a test run: children die with it, failing tests show their logs.

- `pytest_configure` makes every process the harness starts die with the pytest process (see
  `common.popen`): a CI job killed with SIGKILL leaves no Kafka JVM, etcd, kube-apiserver, process
  kubelet (whose pods die with it) or replica behind. `make up` / `make cluster` do not load this
  plugin, so what they start outlives them as it should.
- A failing test's report gets a section per harness process that the test started (the tail of its
  log) and per longer-lived one still running (what it logged while the test ran): the replica's or
  broker's own account of the failure sits next to the assertion, in CI logs too.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from tests.harness.common import children_die_with_parent, started_processes

TAIL_LINES = 60  # of a process the failing test started
SHARED_TAIL_LINES = 25  # of one that outlives the test (the shared broker, the control plane)
_test_start = pytest.StashKey[tuple[int, dict[int, int]]]()


def pytest_configure(config: pytest.Config) -> None:
    children_die_with_parent(True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Remember which processes exist and how long their logs are before the test's own fixtures run."""
    item.stash[_test_start] = (
        len(started_processes),
        {id(p): _size(p.log_path) for p in started_processes},
    )


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(nothing logged)"


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def log_sections(first_new: int, sizes: dict[int, int]) -> list[tuple[str, str]]:
    """(title, text) per process: whole-log tails for those started at index `first_new` or later,
    what was logged since `sizes` for the earlier ones still running."""
    sections: list[tuple[str, str]] = []
    for index, process in enumerate(started_processes):
        if index >= first_new:
            text = _read_from(process.log_path, 0)
            title = f"log of {process.name} (started by this test): {process.log_path}"
        elif process.alive():
            text = _read_from(process.log_path, sizes.get(id(process), 0))
            if not text:
                continue
            title = f"log of {process.name} while this test ran: {process.log_path}"
        else:
            continue
        sections.append((title, _tail(text, TAIL_LINES if index >= first_new else SHARED_TAIL_LINES)))
    return sections


def _attach(item: pytest.Item, report: pytest.TestReport) -> None:
    first_new, sizes = item.stash.get(_test_start, (len(started_processes), {}))
    for title, text in log_sections(first_new, sizes):
        report.sections.append((title, text))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed and call.when in ("setup", "call"):
        _attach(item, report)
