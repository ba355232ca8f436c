"""Toxiproxy, the nemesis' TCP proxy: built from its Go module, run on loopback, driven over its REST API.

Why Toxiproxy (`github.com/Shopify/toxiproxy/v2`) and not a hand-written proxy: it is maintained, it is
what Jepsen-style suites use, and it already does what the faults need — latency (delay), `timeout 0` /
`bandwidth 0` (freeze: sockets stay open, bytes are held), disabling a proxy (cut: every connection closed,
new ones refused) and removing toxics (heal). It is built like the other Go tools (tests/harness/gobuild.py)
and cached under `~/.cache/kvs2/toxiproxy-<version>/`.

Why a thin client over `urllib` and not PyPI's `toxiproxy-python`: that package's last release (0.1.1) is
from January 2019, it pulls in `requests`, has no type hints and predates Toxiproxy 2's API details we use
(`listen` on port 0, toxic `toxicity`); the REST API is six small JSON calls, so a typed client of our own
is smaller than the dependency and is checked by mypy --strict.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.common import LOOPBACK, ManagedProcess, free_port, port_open, wait_until
from tests.harness.gobuild import GoToolSet, ensure_toolset

TOXIPROXY_VERSION = "v2.5.0"

TOOLSET = GoToolSet(
    name="toxiproxy",
    module="github.com/Shopify/toxiproxy/v2",
    version=TOXIPROXY_VERSION,
    packages=("github.com/Shopify/toxiproxy/v2/cmd/server",),
    binaries=("server",),
    ldflags=(f"-X github.com/Shopify/toxiproxy/v2.Version={TOXIPROXY_VERSION}",),
)


class ToxiproxyError(RuntimeError):
    """The Toxiproxy server refused a request or could not be started; the message has its answer."""


def ensure_toxiproxy() -> Path:
    """The `toxiproxy-server` binary (built from the Go module on a cold cache, with progress)."""
    return ensure_toolset(TOOLSET) / "server"


@dataclass(frozen=True)
class Proxy:
    """One proxy as the server reports it: where it listens, where it forwards, and whether it is on."""

    name: str
    listen: str
    upstream: str
    enabled: bool

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class ToxiproxyClient:
    """Typed calls over Toxiproxy's REST API (https://github.com/Shopify/toxiproxy#http-api)."""

    def __init__(self, api: str, timeout: float = 10.0) -> None:
        self.api = api.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.api + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                text = reply.read().decode()
        except urllib.error.HTTPError as exc:
            raise ToxiproxyError(
                f"{method} {path} -> {exc.code}: {exc.read().decode(errors='replace')}"
            ) from exc
        except OSError as exc:
            raise ToxiproxyError(f"{method} {path}: Toxiproxy at {self.api} unreachable: {exc}") from exc
        return json.loads(text) if text.strip() else None

    def version(self) -> str:
        request = urllib.request.Request(self.api + "/version")
        with urllib.request.urlopen(request, timeout=self.timeout) as reply:
            return str(reply.read().decode().strip())

    @staticmethod
    def _proxy(data: dict[str, Any]) -> Proxy:
        return Proxy(data["name"], data["listen"], data["upstream"], bool(data["enabled"]))

    def create_proxy(self, name: str, listen: str, upstream: str) -> Proxy:
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": True}
        return self._proxy(self._call("POST", "/proxies", body))

    def proxy(self, name: str) -> Proxy:
        return self._proxy(self._call("GET", f"/proxies/{name}"))

    def set_enabled(self, name: str, enabled: bool) -> Proxy:
        """Disabling closes every connection through the proxy and refuses new ones (a cut)."""
        return self._proxy(self._call("POST", f"/proxies/{name}", {"enabled": enabled}))

    def add_toxic(
        self,
        proxy: str,
        toxic: str,
        kind: str,
        stream: str,
        attributes: dict[str, int],
        toxicity: float = 1.0,
    ) -> None:
        """`kind` is a Toxiproxy toxic type (latency, timeout, bandwidth, limit_data, ...), `stream` is
        "upstream" (client to server) or "downstream"."""
        body = {"name": toxic, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes}
        self._call("POST", f"/proxies/{proxy}/toxics", body)

    def toxics(self, proxy: str) -> list[str]:
        return [str(t["name"]) for t in self._call("GET", f"/proxies/{proxy}/toxics")]

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")

    def reset(self) -> None:
        """Every proxy enabled again, every toxic removed."""
        self._call("POST", "/reset")


class ToxiproxyServer:
    """`toxiproxy-server` on a free loopback port, its log in `workdir/toxiproxy.log`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: ManagedProcess | None = None

    @property
    def client(self) -> ToxiproxyClient:
        return ToxiproxyClient(f"http://{LOOPBACK}:{self.port}")

    def start(self, timeout: float = 30.0) -> ToxiproxyServer:
        binary = ensure_toxiproxy()
        argv = [str(binary), "-host", LOOPBACK, "-port", str(self.port)]
        self.process = ManagedProcess(f"toxiproxy@{self.port}", argv, self.workdir / "toxiproxy.log").start()

        def up() -> bool:
            if self.process is None or not self.process.alive():
                tail = self.process.log_tail() if self.process else ""
                raise ToxiproxyError(f"toxiproxy exited early:\n{tail}")
            return port_open(LOOPBACK, self.port)

        wait_until(up, timeout=timeout, what=f"toxiproxy on {LOOPBACK}:{self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=5.0)
