"""`kubectl delete -f deploy/` with the operator running as deploy/'s own pod and a store that deletes its
topic: the operator's pod is terminated (its namespace goes) while the CRD's deletion deletes the store, and
still the store is finished — its topic deleted — and the command completes with nothing left behind."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from tests.e2e.conftest import DEPLOY, Kube, install_deploy, store_condition, store_manifest
from tests.harness.cluster import Cluster
from tests.harness.common import wait_until
from tests.harness.kafka import KafkaBroker
from tests.harness.kubelet import KubeletProcess

pytestmark = pytest.mark.e2e


def _topics(bootstrap: str) -> set[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    return set(admin.list_topics(timeout=15).topics)


def test_kubectl_delete_of_deploy_finishes_a_store_with_the_operator_as_a_pod(
    cluster: Cluster, kubelet: KubeletProcess, kube: Kube, kafka: KafkaBroker
) -> None:
    operator = install_deploy(cluster, kubelet)

    kube.apply(store_manifest("leaving", kafka.bootstrap_servers, replicas=1, topicDeletionPolicy="Delete"))
    topic = f"{kube.namespace}.leaving"
    kube.wait(
        "the store's topic and finalizer",
        lambda: (
            store_condition(kube.get("kvs", "leaving"), "TopicReady").get("status") == "True"
            and "kvs2.io/topic-deletion"
            in ((kube.get("kvs", "leaving") or {})["metadata"].get("finalizers") or [])
        ),
        timeout=120,
        dump="kvs,pods",
    )
    assert topic in _topics(kafka.bootstrap_servers)
    log_before = operator.log(200)

    result = cluster.kubectl("delete", "-f", str(DEPLOY), "--timeout=180s", check=False, timeout=240)
    assert result.returncode == 0, (
        f"kubectl delete -f deploy/ did not complete: {result.stderr}{result.stdout}\n"
        f"{cluster.kubectl('get', 'kvs,crd,ns,sa,clusterrole', '-A', check=False).stdout}\n{log_before}"
    )
    assert kube.get("kvs", "leaving") is None
    assert topic not in _topics(kafka.bootstrap_servers), "the store's topic was left behind"
    wait_until(
        lambda: (
            "kvs2-operator"
            not in cluster.kubectl("get", "clusterrole,clusterrolebinding", "-o", "name").stdout
        ),
        timeout=60,
        what="the operator's CRD-owned ClusterRole and binding to be garbage-collected",
    )
