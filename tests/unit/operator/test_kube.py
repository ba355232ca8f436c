from __future__ import annotations

import pytest
from kvs2_operator.kube import Ref, _status_message


@pytest.mark.parametrize(
    ("ref", "sub", "path"),
    [
        (Ref("v1", "Service", "ns", "svc"), None, "/api/v1/namespaces/ns/services/svc"),
        (Ref("apps/v1", "StatefulSet", "ns", "db"), None, "/apis/apps/v1/namespaces/ns/statefulsets/db"),
        (
            Ref("policy/v1", "PodDisruptionBudget", "ns", "db"),
            None,
            "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/db",
        ),
        (
            Ref("kvs2.io/v1alpha1", "KeyValueStore", "ns", "s"),
            "status",
            "/apis/kvs2.io/v1alpha1/namespaces/ns/keyvaluestores/s/status",
        ),
        (Ref("kvs2.io/v1alpha1", "KeyValueStore", None), None, "/apis/kvs2.io/v1alpha1/keyvaluestores"),
        (Ref("v1", "Event", "ns"), None, "/api/v1/namespaces/ns/events"),
    ],
)
def test_paths(ref: Ref, sub: str | None, path: str) -> None:
    assert ref.path(sub) == path


def test_ref_of_an_object() -> None:
    ref = Ref.of({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "n"}})
    assert ref == Ref("v1", "Secret", "n", "s")
    assert ref.describe() == "Secret n/s"


def test_status_message_prefers_the_api_servers_words() -> None:
    body = b'{"kind":"Status","message":"services \\"x\\" is forbidden","reason":"Forbidden"}'
    assert _status_message(body, "fallback") == 'services "x" is forbidden'
    assert _status_message(b"plain text", "fallback") == "plain text"
    assert _status_message(b"", "fallback") == "fallback"
