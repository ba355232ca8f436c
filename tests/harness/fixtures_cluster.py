"""pytest fixtures for a real Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler).

Nothing here skips: if the Go-built binaries are not cached, the `cluster` fixture builds them (a cold build
of the Kubernetes set takes minutes and prints progress), because a test that skips on a fresh machine cannot
fail.

- `cluster`: session-scoped, one control plane per run, shared by every test; tests must not stop it.
- `namespace`: a namespace unique to the test, deleted (without waiting) when the test ends.

The binaries are built right after collection when any selected test uses `cluster`, so a cold build is not
charged to the first test's timeout (pytest-timeout counts fixture setup).
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator

import pytest

from tests.harness.cluster import COMPONENTS, Cluster
from tests.harness.common import progress
from tests.harness.gobuild import GoBuildError, ensure_tool


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any("cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        capture = session.config.pluginmanager.getplugin("capturemanager")
        # Uncaptured, so a person sees a cold build's progress live instead of a silent pause.
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            try:
                for tool in (*COMPONENTS, "kubectl"):
                    ensure_tool(tool)  # no-op when cached
            except GoBuildError as exc:
                pytest.exit(f"cannot build the control-plane binaries the selected tests need: {exc}", 3)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The run's control plane; its run directory (logs, PKI, admin kubeconfig) is printed up front."""
    control_plane = Cluster(tmp_path_factory.mktemp("cluster"))
    progress(f"control plane run directory {control_plane.workdir} (logs in {control_plane.logs})")
    control_plane.start()
    try:
        yield control_plane
    finally:
        control_plane.stop()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """`t-<test name>-<random>`, a valid DNS-1123 label; created before and deleted after the test."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
