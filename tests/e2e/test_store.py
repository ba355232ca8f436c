"""A KeyValueStore through the whole stack: `kubectl apply -f deploy/` runs the operator as a pod under its
own RBAC; a store's replicas run as real `kvs2 serve` processes on real Kafka; a client generated from the
seed's proto talks to them by pod IP. Nothing here is faked: readiness is the replicas' own gRPC health."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from confluent_kafka import TopicCollection
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import (
    DEPLOY,
    OPERATOR_NAMESPACE,
    Kube,
    OperatorPod,
    container_status,
    install_deploy,
    pod_ready,
    seed,
    store_condition,
    store_manifest,
    store_pods,
    target,
)
from tests.harness.cluster import Cluster
from tests.harness.common import CheckedThread
from tests.harness.kafka import KafkaBroker
from tests.harness.kubelet import KubeletProcess

pytestmark = pytest.mark.e2e

READY_TIMEOUT = "180s"


@pytest.fixture(scope="module")
def operator_pod(cluster: Cluster, kubelet: KubeletProcess) -> Iterator[OperatorPod]:
    """deploy/ as a person installs it; the operator deleted again after the module."""
    operator = install_deploy(cluster, kubelet)
    try:
        yield operator
    finally:
        cluster.kubectl(
            "-n",
            OPERATOR_NAMESPACE,
            "delete",
            "deployment",
            "kvs2-operator",
            "--cascade=foreground",
            "--timeout=60s",
            check=False,
            timeout=90,
        )
        cluster.kubectl("delete", "-f", str(DEPLOY / "10-rbac.yaml"), "--wait=false", check=False)


def _wait_ready(kube: Kube, name: str, operator: OperatorPod) -> dict[str, Any]:
    """`kubectl wait --for=condition=Ready kvs/NAME`, the way a person (or CI) waits for a store."""
    result = kube.cluster.kubectl(
        "-n",
        kube.namespace,
        "wait",
        "--for=condition=Ready",
        f"kvs/{name}",
        f"--timeout={READY_TIMEOUT}",
        check=False,
        timeout=200,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"kvs/{name} not Ready: {result.stderr}\n"
            f"{kube.kubectl('get', 'kvs,sts,pods,pvc', '-o', 'wide')}\n"
            f"{kube.kubectl('get', 'kvs', name, '-o', 'yaml')}\n--- operator ---\n{operator.log()}\n"
            f"--- {name}-0 ---\n{kube.pod_logs(f'{name}-0', 'kvs2')}"
        )
    store = kube.get("kvs", name)
    assert store is not None
    return store


def _assert_ready_means_all_replicas_ready(kube: Kube, name: str, replicas: int) -> None:
    store = kube.get("kvs", name)
    assert store_condition(store, "Ready")["status"] == "True"
    assert store_condition(store, "TopicReady")["status"] == "True"
    pods = store_pods(kube, name)
    assert len(pods) == replicas and all(pod_ready(p) for p in pods), [p["status"] for p in pods]
    assert store["status"]["readyReplicas"] == replicas  # type: ignore[index]


def _pid(kubelet: KubeletProcess, namespace: str, pod: str) -> int:
    pid = kubelet.container_pid(namespace, pod, "kvs2")
    assert pid is not None, f"no running process for {namespace}/{pod}"
    return pid


def test_apply_set_get_across_pods_crash_recovery_and_delete(
    kube: Kube, operator_pod: OperatorPod, kafka: KafkaBroker, seed_code: Path
) -> None:
    name = "shop"
    kube.apply(store_manifest(name, kafka.bootstrap_servers, replicas=2))
    store = _wait_ready(kube, name, operator_pod)
    _assert_ready_means_all_replicas_ready(kube, name, 2)
    assert store["status"]["topic"] == f"{kube.namespace}.{name}"
    # "The topic is right", asked of Kafka itself: the partitions asked for, compacted.
    topic = store["status"]["topic"]
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    described = admin.describe_topics(TopicCollection([topic]), request_timeout=10)[topic].result(15)
    assert len(described.partitions) == 3
    resource = ConfigResource(ResourceType.TOPIC, topic)
    config = admin.describe_configs([resource], request_timeout=10)[resource].result(15)
    assert config["cleanup.policy"].value == "compact"

    pods = store_pods(kube, name)
    a, b = target(pods[0]), target(pods[1])
    assert pods[0]["status"]["podIP"] != pods[1]["status"]["podIP"]
    assert seed(seed_code, ["set", a, "apple", "red"], ["set", a, "kiwi", "green"]) == ["PUBLISHED"] * 2
    kube.wait(
        "pod 1 to apply the writes made through pod 0",
        lambda: seed(seed_code, ["get", b, "kiwi"]) == [["OK", "green"]],
        timeout=30,
    )
    assert seed(seed_code, ["get", b, "apple"], ["mget", b, ["kiwi", "nope", "apple"]]) == [
        ["OK", "red"],
        [["kiwi", "OK", "green"], ["nope", "NOT_FOUND", ""], ["apple", "OK", "red"]],
    ]

    # Kill pod 1's process: the kubelet restarts it; writes made meanwhile reach it through Kafka.
    old_pid = _pid(kube.kubelet, kube.namespace, f"{name}-1")
    os.kill(old_pid, signal.SIGKILL)
    meanwhile = [["set", a, f"meanwhile-{i}", f"v{i}"] for i in range(20)]
    assert seed(seed_code, *meanwhile) == ["PUBLISHED"] * 20
    kube.wait(
        "the store to report the lost replica (Ready=False)",
        lambda: store_condition(kube.get("kvs", name), "Ready").get("status") == "False",
        timeout=60,
        dump="kvs",
    )

    def recovered() -> dict[str, Any] | None:
        pod = kube.get("pod", f"{name}-1")
        st = container_status(pod, "kvs2")
        return pod if st.get("restartCount") == 1 and pod_ready(pod) else None

    restarted = kube.wait("pod 1 restarted and Ready", recovered, timeout=120)
    assert _pid(kube.kubelet, kube.namespace, f"{name}-1") != old_pid
    assert container_status(restarted, "kvs2")["lastState"]["terminated"]["signal"] == signal.SIGKILL
    b = target(restarted)
    keys = [f"meanwhile-{i}" for i in range(20)]
    kube.wait(
        "the restarted replica to serve every write made while it was down",
        lambda: seed(seed_code, ["mget", b, keys])[0] == [[k, "OK", f"v{i}"] for i, k in enumerate(keys)],
        timeout=30,
    )
    _wait_ready(kube, name, operator_pod)
    _assert_ready_means_all_replicas_ready(kube, name, 2)

    # Deleting the store stops its processes and removes its pods and volumes.
    pids = [_pid(kube.kubelet, kube.namespace, f"{name}-{i}") for i in range(2)]
    kube.kubectl("delete", "kvs", name, "--wait=true", timeout=120)
    kube.wait("the store's pods to be gone", lambda: not store_pods(kube, name), timeout=90)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    kube.wait("the store's PVCs to be gone", lambda: not kube.items("pvc"), timeout=60, dump="pvc")


def _serving(pod_ip: str) -> bool:
    try:
        with grpc.insecure_channel(f"{pod_ip}:50051") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def test_scale_out_catches_up_and_a_rolling_update_keeps_replicas_ready(
    kube: Kube, operator_pod: OperatorPod, kafka: KafkaBroker, seed_code: Path
) -> None:
    name = "cart"
    kube.apply(store_manifest(name, kafka.bootstrap_servers, replicas=2))
    _wait_ready(kube, name, operator_pod)
    a = target(store_pods(kube, name)[0])
    keys = [f"item-{i:03}" for i in range(100)]
    assert seed(seed_code, *[["set", a, k, k.upper()] for k in keys]) == ["PUBLISHED"] * 100

    # Scale 2 -> 3 through the scale subresource: the new replica is built from a ready peer's snapshot
    # (the operator points KVS2_BOOTSTRAP_PEERS at the headless Service) and is not Ready until then.
    kube.kubectl("scale", f"kvs/{name}", "--replicas=3")
    # Not Ready while the new replica catches up (it cannot be: its first readiness probe fails, the next
    # is 5 s later), with the reason saying so.
    not_ready = kube.wait(
        "Ready=False while the third replica is not ready",
        lambda: (c := store_condition(kube.get("kvs", name), "Ready")).get("status") == "False" and c,
        timeout=30,
        dump="kvs",
    )
    assert not_ready["reason"] in ("ReplicasNotReady", "WorkloadProgressing"), not_ready
    kube.wait("StatefulSet scaled to 3", lambda: len(store_pods(kube, name)) == 3, timeout=60)
    _wait_ready(kube, name, operator_pod)
    _assert_ready_means_all_replicas_ready(kube, name, 3)
    newest = target(store_pods(kube, name)[2])
    assert seed(seed_code, ["mget", newest, keys])[0] == [[k, "OK", k.upper()] for k in keys]
    # Built from a peer's snapshot over the data channel (port 50052), not by replaying the topic.
    built = kube.pod_logs(f"{name}-2", "kvs2")
    assert "received" in built and "snapshot bytes over the data channel" in built, built
    assert "bootstrapped from a snapshot of peer" in built, built

    # A settings change rolls the pods one by one; sample readiness and real reads all the way through.
    pdb = kube.get("pdb", name)
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1
    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pods = store_pods(kube, name)
            ready = [p for p in pods if pod_ready(p)]
            serving = sum(1 for p in ready if _serving(p["status"]["podIP"]))
            samples.append((len(ready), serving))
            time.sleep(0.2)

    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in store_pods(kube, name)}
    watcher = CheckedThread(sample, name="readiness-sampler")  # its failure fails the test
    watcher.start()
    try:
        kube.kubectl("patch", "kvs", name, "--type=merge", "-p", '{"spec": {"logLevel": "DEBUG"}}')

        def rolled() -> bool:
            watcher.check()  # a dead sampler would leave the availability claims unchecked
            sts = kube.get("sts", name) or {}
            status = sts.get("status", {})
            pods = store_pods(kube, name)
            return (
                status.get("updateRevision") == status.get("currentRevision")
                and status.get("updatedReplicas") == 3
                and all(p["metadata"]["uid"] != before[p["metadata"]["name"]] for p in pods)
                and all(pod_ready(p) for p in pods)
            )

        kube.wait("the rolling update to finish", rolled, timeout=240, dump="pods")
        _wait_ready(kube, name, operator_pod)
    finally:
        stop.set()
        watcher.join(timeout=30)  # raises what the sampler raised
    assert samples, "no samples taken"
    assert min(r for r, _ in samples) >= 2, samples  # never more unavailable than the PDB's maxUnavailable
    assert min(s for _, s in samples) >= 1, samples  # and always a replica that really serves
    env = {
        e["name"]: e.get("value")
        for e in (kube.get("sts", name) or {})["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KVS2_LOG_LEVEL"] == "DEBUG"
    last = target(store_pods(kube, name)[0])
    assert seed(seed_code, ["mget", last, keys])[0] == [[k, "OK", k.upper()] for k in keys]


def test_a_store_without_image_becomes_ready_under_pod_security_restricted_and_deletes_cleanly(
    kube: Kube, operator_pod: OperatorPod, kafka: KafkaBroker, seed_code: Path
) -> None:
    """The namespace enforces Pod Security `restricted` (the real API server's admission); the store sets
    no image (the operator's default, recorded in status). With `topicDeletionPolicy: Delete`, deleting it
    stops the replicas before it deletes the topic it created."""
    kube.cluster.kubectl(
        "label", "namespace", kube.namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    name = "locked"
    manifest = store_manifest(name, kafka.bootstrap_servers, replicas=2, topicDeletionPolicy="Delete")
    del manifest["spec"]["image"]
    kube.apply(manifest)
    store = _wait_ready(kube, name, operator_pod)
    _assert_ready_means_all_replicas_ready(kube, name, 2)
    assert store["status"]["image"] == "kvs2:0.1.0"
    assert store["status"]["topicOwnership"] == "Created"
    pod = store_pods(kube, name)[0]
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    a = target(pod)
    assert seed(seed_code, ["set", a, "k", "v"]) == ["PUBLISHED"]

    topic = f"{kube.namespace}.{name}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    kube.kubectl("delete", "kvs", name, "--wait=true", "--timeout=120s", timeout=150)
    assert not store_pods(kube, name), "the topic was deleted while replicas still ran"
    names = admin.list_topics(timeout=15).topics
    assert topic not in names
