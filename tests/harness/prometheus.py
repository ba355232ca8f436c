"""A real Prometheus (and promtool) for the tests, built from its Go module and cached by version.

What is built, and why (measured on the 2-core machine, `/usr/bin/time`, module cache warm):
* only `cmd/prometheus` and `cmd/promtool`, without the `builtinassets` tag: the web UI's JavaScript bundle
  is made by npm in Prometheus' release process and is not in the Go module; the server runs fine without
  it (only the browser pages are missing — the HTTP API the tests query is all Go);
* with the `remove_all_sd` tag: Prometheus' own switch that leaves out the cloud service discoveries
  (AWS, Azure, GCE, OpenStack, Hetzner, … — large SDKs); static, file and HTTP discovery stay, and the tests
  use static targets. A cold build (empty Go build cache) took 438 CPU-seconds (370 user + 68 system),
  against 735 for the full build even with part of its build cache warm from the Kubernetes build: about
  4 minutes instead of 6+ on two idle cores, and binaries half the size (52 MB each). promtool still
  includes Kubernetes discovery (it imports it directly). Both binaries are needed: promtool checks and
  unit-tests the alert rules, the server scrapes real replicas.

`PrometheusServer` runs it on 127.0.0.1 with a config the test writes (scrape targets and a short
interval), a TSDB in the test's directory, and `query()` for the HTTP API.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.harness.common import LOOPBACK, ManagedProcess, free_port, wait_until
from tests.harness.gobuild import GoToolSet, ensure_toolset

# Go module versions v0.3XX.Y are Prometheus 3.XX.Y releases.
PROMETHEUS_MODULE_VERSION = "v0.316.0"
PROMETHEUS_VERSION = "3.16.0"
COLD_BUILD = "about 4 minutes on 2 idle cores (438 CPU-seconds measured)"

TOOLSET = GoToolSet(
    name="prometheus-minsd",
    module="github.com/prometheus/prometheus",
    version=PROMETHEUS_MODULE_VERSION,
    packages=(
        "github.com/prometheus/prometheus/cmd/prometheus",
        "github.com/prometheus/prometheus/cmd/promtool",
    ),
    binaries=("prometheus", "promtool"),
    ldflags=(
        f"-X github.com/prometheus/common/version.Version={PROMETHEUS_VERSION}",
        "-X github.com/prometheus/common/version.Branch=module",
    ),
    tags=("remove_all_sd",),
    cold_build=COLD_BUILD,
)


def ensure_prometheus() -> Path:
    """The bin directory holding `prometheus` and `promtool` (built on first use, then cached)."""
    return ensure_toolset(TOOLSET)


def ensure_prometheus_live(config: Any) -> Path:
    """`ensure_prometheus()` from a pytest fixture, with capture off so a cold build's progress shows."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
        return ensure_prometheus()


@dataclass
class PrometheusServer:
    """A Prometheus server scraping `targets` (HOST:PORT of /metrics endpoints) every `interval`."""

    workdir: Path
    targets: Sequence[str]
    interval: str = "1s"
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> PrometheusServer:
        binary = ensure_prometheus() / "prometheus"
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
                    "scrape_configs": [
                        {
                            "job_name": "kvs2",
                            "scrape_timeout": self.interval,
                            "static_configs": [{"targets": list(self.targets)}],
                        }
                    ],
                }
            )
        )
        argv = [
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--log.level=warn",
        ]
        self.process = ManagedProcess("prometheus", argv, self.workdir / "prometheus.log").start()
        wait_until(self._ready, timeout=60, what="Prometheus to be ready")
        return self

    def _ready(self) -> bool:
        if self.process is not None and not self.process.alive():
            raise RuntimeError(f"prometheus exited:\n{self.process.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus API {path} failed: {body}")
        return body["data"]

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: each series' labels and value."""
        data = self.api("query", query=promql)
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def target_health(self) -> list[str]:
        return [t["health"] for t in self.api("targets")["activeTargets"]]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@contextmanager
def prometheus(workdir: Path, targets: Sequence[str], interval: str = "1s") -> Iterator[PrometheusServer]:
    server = PrometheusServer(workdir, targets, interval).start()
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":  # `python -m tests.harness.prometheus`: build (or find) and print the binaries
    print(ensure_prometheus())
