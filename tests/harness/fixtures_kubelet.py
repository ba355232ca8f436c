"""pytest fixture for the process kubelet: Nodes whose pods run as local processes (tests/harness/kubelet.py).

- `helm_binary`: the Go-built helm (built right after collection when a selected test uses it, so a cold
  build is not charged to the first test's timeout).
- `kubelet`: session-scoped, two Nodes (`kvs2-node-0`, `kvs2-node-1`) on the session's `cluster`; tests must
  not stop it. Its own log and each container's log and PID file live under its state directory.

Tests that use `kubelet` run last: once Nodes exist, the scheduler binds every later pod and the provisioner
binds every PVC, which would change what the control-plane tests (written for a cluster without nodes)
observe. Reordering is cheaper and more honest than a second control plane.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster
from tests.harness.common import progress
from tests.harness.gobuild import GoBuildError, ensure_tool
from tests.harness.kubelet import KubeletProcess

NODES = 2


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    def needs_kubelet(item: pytest.Item) -> bool:
        return "kubelet" in getattr(item, "fixturenames", ())

    items[:] = [i for i in items if not needs_kubelet(i)] + [i for i in items if needs_kubelet(i)]


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any("helm_binary" in getattr(item, "fixturenames", ()) for item in session.items):
        capture = session.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            try:
                ensure_tool("helm")  # no-op when cached
            except GoBuildError as exc:
                pytest.exit(f"cannot build helm, which the selected tests need: {exc}", 3)


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    return ensure_tool("helm")


@pytest.fixture(scope="session")
def kubelet(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[KubeletProcess]:
    process = KubeletProcess(cluster.kubeconfig, tmp_path_factory.mktemp("kubelet"), nodes=NODES)
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        progress(f"process kubelet state directory {process.state_dir} (log {process.process.log_path})")
        process.start()
    try:
        yield process
    finally:
        process.stop()
