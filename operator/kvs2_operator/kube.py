"""The operator's Kubernetes API border: plain dicts in and out, errors mapped to `errors.py` here only.

Why not the generated model classes: the operator renders manifests as dicts (see render.py) and
applies them with server-side apply; round-tripping through pydantic models would drop fields the
model of this client version does not know and cost a lot of CPU for nothing. So this module uses the
`kubernetes` package only for what it is good at — loading kubeconfig / in-cluster credentials and a
pooled, authenticated HTTP client — and speaks JSON to the API paths itself.

The client is synchronous; every call runs in a worker thread (`asyncio.to_thread`) so kopf's event
loop never blocks on the network.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes.client
import kubernetes.config
import urllib3.exceptions

from kvs2_operator.crd import FIELD_MANAGER
from kvs2_operator.errors import (
    KubernetesApiError,
    KubernetesConflictError,
    KubernetesInvalidError,
    KubernetesNotFoundError,
)

#: (connect, read) seconds for one API call; watches are kopf's, not ours.
REQUEST_TIMEOUT = (5.0, 30.0)

_PLURALS = {
    "StatefulSet": "statefulsets",
    "Service": "services",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Event": "events",
    "Secret": "secrets",
    "ConfigMap": "configmaps",  # spec.kafka.tls.ca.configMapName
    "Pod": "pods",
    "ResourceQuota": "resourcequotas",
    "KeyValueStore": "keyvaluestores",
    "Certificate": "certificates",  # cert-manager.io (kvs2_operator.protection)
    "NetworkPolicy": "networkpolicies",
    # The operator's own install (uninstall.py).
    "ServiceAccount": "serviceaccounts",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "CustomResourceDefinition": "customresourcedefinitions",
    # Volume expansion (volumes.py).
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "StorageClass": "storageclasses",
}


@dataclass(frozen=True)
class Ref:
    """Where an object lives: enough to build its URL."""

    api_version: str
    kind: str
    namespace: str | None
    name: str | None = None

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Ref:
        meta = obj.get("metadata", {})
        return cls(str(obj["apiVersion"]), str(obj["kind"]), meta.get("namespace"), meta.get("name"))

    def path(self, subresource: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespace:
            base += f"/namespaces/{quote(self.namespace, safe='')}"
        base += f"/{_PLURALS[self.kind]}"
        if self.name:
            base += f"/{quote(self.name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base

    def describe(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name or '*'}"


def load_configuration(kubeconfig: str | None = None) -> kubernetes.client.Configuration:
    """Credentials: an explicit kubeconfig, else in-cluster (service account), else $KUBECONFIG/~/.kube."""
    cfg = kubernetes.client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        return cfg
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=path, client_configuration=cfg, persist_config=False
    )
    return cfg


def _status_message(body: bytes | str | None, fallback: str) -> str:
    if not body:
        return fallback
    try:
        status = json.loads(body)
    except ValueError:
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        return text.strip()[:500] or fallback
    if isinstance(status, dict) and status.get("message"):
        return str(status["message"])
    return fallback


class KubeApi:
    """Async, dict-based access to the few API calls the operator makes."""

    def __init__(self, configuration: kubernetes.client.Configuration) -> None:
        self.configuration = configuration
        self._client = kubernetes.client.ApiClient(configuration)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    # --- the one place HTTP happens ------------------------------------------------------------------

    def _request_sync(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        url_path = path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            method_, url, headers_, body_, _ = self._client.param_serialize(
                method=method,
                resource_path=url_path,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._client.call_api(
                method_, url, header_params=headers_, body=body_, _request_timeout=REQUEST_TIMEOUT
            )
            data = response.read()  # type: ignore[no-untyped-call]
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubernetesApiError(f"Kubernetes API unreachable ({method} {path}): {exc}") from exc
        except kubernetes.client.ApiException as exc:
            raise KubernetesApiError(
                f"{method} {path}: {_status_message(exc.body, str(exc.reason))}", exc.status
            ) from exc
        status = int(response.status)
        if status >= 300:
            return status, _status_message(data, str(response.reason))
        return status, json.loads(data) if data else {}

    def request_sync(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A blocking call for code outside the event loop (leader election runs before kopf's loop)."""
        return self._request_sync(method, path, body=body)

    async def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await asyncio.to_thread(self._request_sync, method, path, **kwargs)

    @staticmethod
    def _raise(status: int, message: str, what: str) -> None:
        text = f"{what}: {message} (HTTP {status})"
        if status == 404:
            raise KubernetesNotFoundError(text, status)
        if status == 409:
            raise KubernetesConflictError(text, status)
        if status in (400, 422):
            raise KubernetesInvalidError(text, status)
        raise KubernetesApiError(text, status)

    # --- the calls ------------------------------------------------------------------------------------

    async def get(self, ref: Ref) -> dict[str, Any] | None:
        status, data = await self._request("GET", ref.path())
        if status == 404:
            return None
        if status >= 300:
            self._raise(status, data, f"get {ref.describe()}")
        return dict(data)

    async def list(
        self, ref: Ref, label_selector: str | None = None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        status, data = await self._request("GET", ref.path(), query=query or None)
        if status >= 300:
            self._raise(status, data, f"list {ref.describe()}")
        return list(data.get("items", []))

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply, forced: the operator owns every field it renders (drift is overwritten)."""
        ref = Ref.of(obj)
        status, data = await self._request(
            "PATCH",
            ref.path(),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=dict(obj),
            content_type="application/apply-patch+yaml",
        )
        if status >= 300:
            self._raise(status, data, f"apply {ref.describe()}")
        return dict(data)

    async def delete(self, ref: Ref, propagation: str = "Background") -> bool:
        """True when something was deleted, False when it was already gone. `propagation` "Orphan" keeps
        the object's dependents (a StatefulSet's pods and claims)."""
        status, data = await self._request("DELETE", ref.path(), body={"propagationPolicy": propagation})
        if status == 404:
            return False
        if status >= 300:
            self._raise(status, data, f"delete {ref.describe()}")
        return True

    async def patch(self, ref: Ref, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """A JSON merge patch (fields the operator changes outside server-side apply); None if absent."""
        status, data = await self._request(
            "PATCH", ref.path(), body=dict(body), content_type="application/merge-patch+json"
        )
        if status == 404:
            return None
        if status >= 300:
            self._raise(status, data, f"patch {ref.describe()}")
        return dict(data)

    async def patch_status(self, ref: Ref, status_body: Mapping[str, Any]) -> dict[str, Any]:
        status, data = await self._request(
            "PATCH",
            ref.path("status"),
            body={"status": dict(status_body)},
            content_type="application/merge-patch+json",
        )
        if status >= 300:
            self._raise(status, data, f"patch status of {ref.describe()}")
        return dict(data)

    async def create(self, ref: Ref, body: Mapping[str, Any]) -> dict[str, Any]:
        status, data = await self._request("POST", ref.path(), body=dict(body))
        if status >= 300:
            self._raise(status, data, f"create {ref.describe()}")
        return dict(data)

    async def post_event(self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about `involved` (a full object), like `kubectl describe` shows them."""
        meta = involved.get("metadata", {})
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER, "host": socket.gethostname()},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": socket.gethostname(),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.create(Ref("v1", "Event", meta.get("namespace")), event)
