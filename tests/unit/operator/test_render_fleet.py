"""Rendering for hardened clusters and real fleets: Pod Security "restricted", no BestEffort pods, the
pod-template knobs, the credentials hash, PDB eviction policy, PVC retention and the default image."""

from __future__ import annotations

from typing import Any

import pytest
from kvs2_operator import diagnose
from kvs2_operator.errors import SpecError
from kvs2_operator.model import DEFAULT_RESOURCES, OperatorDefaults, parse_store
from kvs2_operator.render import CREDENTIALS_HASH_ANNOTATION, render_pdb, render_statefulset


def _pod(body: dict[str, Any], defaults: OperatorDefaults | None = None, **kwargs: Any) -> dict[str, Any]:
    template: dict[str, Any] = render_statefulset(parse_store(body, defaults), **kwargs)["spec"]["template"]
    return template


def test_pods_meet_pod_security_restricted_without_a_hard_coded_uid(body: dict[str, Any]) -> None:
    spec = _pod(body)["spec"]
    context = spec["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "runAsUser" not in context and "runAsGroup" not in context  # the image's USER; OpenShift assigns
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # read-only root, writable /tmp


def test_fs_group_can_be_left_to_the_platform(body: dict[str, Any]) -> None:
    assert _pod(body)["spec"]["securityContext"]["fsGroup"] == 65532
    context = _pod(body, OperatorDefaults(fs_group=None))["spec"]["securityContext"]
    assert "fsGroup" not in context and "fsGroupChangePolicy" not in context


def test_pods_are_never_best_effort(body: dict[str, Any]) -> None:
    assert _pod(body)["spec"]["containers"][0]["resources"] == DEFAULT_RESOURCES
    body["spec"]["resources"] = {"limits": {"memory": "1Gi"}}
    assert _pod(body)["spec"]["containers"][0]["resources"] == {"limits": {"memory": "1Gi"}}


def test_replicas_spread_softly_across_zones_and_nodes_by_default(body: dict[str, Any]) -> None:
    spread = _pod(body)["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    assert {c["whenUnsatisfiable"] for c in spread} == {"ScheduleAnyway"}


def test_pod_template_knobs_are_copied(body: dict[str, Any]) -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "kvs2", "effect": "NoSchedule"}
    affinity: dict[str, Any] = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    spread = [{"maxSkew": 2, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule"}]
    body["spec"]["pod"] = {
        "labels": {"team": "payments", "app.kubernetes.io/instance": "hijack"},
        "annotations": {"prometheus.io/scrape": "true"},
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [toleration],
        "affinity": affinity,
        "topologySpreadConstraints": spread,
        "priorityClassName": "high",
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccountName": "kvs2-data",
    }
    template = _pod(body)
    spec = template["spec"]
    assert template["metadata"]["labels"]["team"] == "payments"
    assert template["metadata"]["labels"]["app.kubernetes.io/instance"] == "orders"  # ours win
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert spec["nodeSelector"] == {"disk": "ssd"}
    assert spec["tolerations"] == [toleration]
    assert spec["affinity"] == affinity
    assert spec["topologySpreadConstraints"] == spread
    assert spec["priorityClassName"] == "high"
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    assert spec["serviceAccountName"] == "kvs2-data"
    assert spec["automountServiceAccountToken"] is False


def test_the_credentials_hash_rolls_the_pods(body: dict[str, Any]) -> None:
    assert "annotations" not in _pod(body)["metadata"]
    annotations = _pod(body, credentials_hash="abc")["metadata"]["annotations"]
    assert annotations == {CREDENTIALS_HASH_ANNOTATION: "abc"}


def test_pdb_always_allows_evicting_unhealthy_pods(body: dict[str, Any]) -> None:
    pdb = render_pdb(parse_store(body))
    assert pdb is not None and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_scale_down_pvc_policy(body: dict[str, Any]) -> None:
    policy = render_statefulset(parse_store(body))["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert policy == {"whenDeleted": "Delete", "whenScaled": "Delete"}
    body["spec"]["storage"] = {"retentionOnScaleDown": "Retain"}
    policy = render_statefulset(parse_store(body))["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert policy == {"whenDeleted": "Delete", "whenScaled": "Retain"}


def test_the_image_defaults_to_the_operators(body: dict[str, Any]) -> None:
    del body["spec"]["image"]
    with pytest.raises(SpecError, match="--default-image"):
        parse_store(body)
    spec = _pod(body, OperatorDefaults(image="registry.example/kvs2:1.2.3"))["spec"]
    assert spec["containers"][0]["image"] == "registry.example/kvs2:1.2.3"
    body["spec"]["image"] = "mine:1"
    assert _pod(body, OperatorDefaults(image="x:1"))["spec"]["containers"][0]["image"] == "mine:1"


@pytest.mark.parametrize(
    "key",
    [
        "bootstrap.servers",
        "acks",
        "enable.idempotence",
        "partitioner",
        "allow.auto.create.topics",
        "transactional.id",
        "max.in.flight.requests.per.connection",
        "sasl.password",
        "sasl.jaas",
    ],
)
def test_client_config_cannot_override_what_the_store_relies_on(body: dict[str, Any], key: str) -> None:
    body["spec"]["kafka"]["clientConfig"] = {key: "x"}
    with pytest.raises(SpecError, match="cannot be overridden"):
        parse_store(body)


@pytest.mark.parametrize("value", ["-1", "lots", True, "1Gi "])
def test_resource_quantities_are_validated(body: dict[str, Any], value: Any) -> None:
    body["spec"]["resources"] = {"requests": {"memory": value}}
    with pytest.raises(SpecError, match="quantity"):
        parse_store(body)


# --- diagnose ---------------------------------------------------------------------------------------------


def test_failed_create_is_quoted_while_pods_are_missing() -> None:
    sts = {"status": {"replicas": 0}}
    events = [
        {"reason": "FailedCreate", "message": "old", "lastTimestamp": "2026-01-01T00:00:00Z"},
        {
            "reason": "FailedCreate",
            "message": 'pods "s-0" is forbidden: violates PodSecurity "restricted:latest"',
            "lastTimestamp": "2026-01-02T00:00:00Z",
        },
        {"reason": "SuccessfulCreate", "message": "fine", "lastTimestamp": "2026-01-03T00:00:00Z"},
    ]
    text = diagnose.explain(sts, 2, [], events)
    assert text is not None and "cannot create pods" in text and "PodSecurity" in text
    assert diagnose.explain({"status": {"replicas": 2}}, 2, [], events) is None


def test_pod_problems_are_quoted() -> None:
    pending = {
        "metadata": {"name": "s-1"},
        "status": {
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
            ]
        },
    }
    pulling = {
        "metadata": {"name": "s-0"},
        "status": {
            "containerStatuses": [
                {
                    "name": "kvs2",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}},
                }
            ]
        },
    }
    text = diagnose.explain({"status": {"replicas": 2}}, 2, [pending, pulling], [])
    assert text == "pod s-0 container kvs2: ImagePullBackOff: no such image"
    assert diagnose.pod_problem([pending]) == "pod s-1 cannot be scheduled: 0/3 nodes"
    assert diagnose.pod_problem([{"metadata": {"name": "ok"}, "status": {}}]) is None
