"""A small JSON client for the Kubernetes API, for the process kubelet.

Why not the generated `kubernetes.client` models: they round-trip objects through pydantic classes that
drop fields the client version does not know, and a kubelet must copy pod specs faithfully. So, like the
operator's own border, this uses the `kubernetes` package only to load credentials from a kubeconfig and
speaks JSON over one pooled urllib3 connection pool — including watches, which are just long GETs that
stream one JSON event per line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes.client
import kubernetes.config
import urllib3

#: Seconds for connect / read of ordinary calls; watches ask the server to end them instead.
TIMEOUT = urllib3.Timeout(connect=5.0, read=30.0)


class ApiError(RuntimeError):
    """An API call answered with an error status (or not at all: status 0)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Api:
    """Authenticated JSON calls to one API server; thread-safe (urllib3 pools are)."""

    def __init__(self, kubeconfig: str) -> None:
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=cfg, persist_config=False
        )
        self.host = cfg.host.rstrip("/")
        self.ca_file: str | None = cfg.ssl_ca_cert
        self._headers = {"Accept": "application/json"}
        token = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
        if token:
            self._headers["Authorization"] = token
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=32,
            cert_reqs="CERT_REQUIRED" if cfg.verify_ssl else "CERT_NONE",
            ca_certs=cfg.ssl_ca_cert,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
        )

    def _url(self, path: str, query: Mapping[str, Any] | None) -> str:
        return self.host + path + (f"?{urlencode(query)}" if query else "")

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """(status, decoded JSON body). Never raises for an HTTP error status; raises ApiError when the
        server cannot be reached at all."""
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        try:
            resp = self._pool.request(
                method, self._url(path, query), body=data, headers=headers, timeout=TIMEOUT, retries=False
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(f"{method} {path}: API server unreachable: {exc}", 0) from exc
        try:
            decoded = json.loads(resp.data) if resp.data else {}
        except ValueError:
            decoded = {"message": resp.data.decode(errors="replace")}
        return int(resp.status), decoded

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Like `request` but raises ApiError for any status >= 300."""
        status, data = self.request(method, path, **kwargs)
        if status >= 300:
            message = data.get("message") if isinstance(data, dict) else data
            raise ApiError(f"{method} {path}: HTTP {status}: {message}", status)
        return data

    def get(self, path: str, **query: Any) -> Any | None:
        """The object, or None when it does not exist."""
        status, data = self.request("GET", path, query=query or None)
        if status == 404:
            return None
        if status >= 300:
            raise ApiError(f"GET {path}: HTTP {status}: {data.get('message')}", status)
        return data

    def watch(self, path: str, query: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Stream watch events ({type, object}) until the server ends the watch (`timeoutSeconds`)."""
        q = dict(query, watch="true")
        try:
            resp = self._pool.request(
                "GET",
                self._url(path, q),
                headers=self._headers,
                preload_content=False,
                timeout=urllib3.Timeout(connect=5.0, read=float(q.get("timeoutSeconds", 60)) + 15.0),
                retries=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(f"WATCH {path}: API server unreachable: {exc}", 0) from exc
        try:
            if resp.status >= 300:
                raise ApiError(f"WATCH {path}: HTTP {resp.status}: {resp.read()[:300]!r}", int(resp.status))
            buffer = b""
            for chunk in resp.stream(65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(f"WATCH {path}: stream broke: {exc}", 0) from exc
        finally:
            resp.release_conn()


def ns_path(group_version: str, plural: str, namespace: str | None = None, name: str | None = None) -> str:
    """`/api/v1/namespaces/ns/pods/name` and friends; `group_version` is "v1" for the core group."""
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    if namespace:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name, safe='')}"
    return base
