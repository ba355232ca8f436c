"""A store with spec.tls (mutual, an authorization map) and spec.redis (TLS, AUTH users) through the whole
stack: the operator of deploy/ renders it, the process kubelet mounts the Secrets (made here with the
harness's pki.py, as cert-manager would) and the readiness probe goes to the plaintext health port; the
store becomes Ready; a gRPC client with a client certificate writes and reads through a pod; redis-cli
(--tls --cacert) and redis-py (ssl) read what gRPC wrote, through the other pod's Redis port."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import grpc
import pytest
import redis
from kvs2.client import Client, Written
from kvs2.credentials import ClientTls

from tests.e2e.conftest import Kube, OperatorPod, store_manifest, store_pods
from tests.e2e.test_store import _wait_ready, operator_pod  # noqa: F401 - the module's operator fixture
from tests.harness.debian import ensure_apt
from tests.harness.kafka import KafkaBroker
from tests.harness.pki import CertificateAuthority

pytestmark = pytest.mark.e2e

REDIS_PORT = 6380


@pytest.fixture(scope="module")
def redis_cli(pytestconfig: pytest.Config) -> Path:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    live = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with live:
        return ensure_apt("redis-tools", "redis-cli")


def test_a_tls_store_serves_grpc_and_redis_clients_with_certificates(
    kube: Kube,
    operator_pod: OperatorPod,  # noqa: F811 - the fixture imported above
    kafka: KafkaBroker,
    redis_cli: Path,
    tmp_path: Path,
) -> None:
    name = "vault"
    service = f"{name}.{kube.namespace}.svc"
    server_ca, client_ca = CertificateAuthority("store CA"), CertificateAuthority("client CA")
    leaf = server_ca.issue(name, dns=(name, service, f"*.{name}-peers.{kube.namespace}.svc"))
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": f"{name}-tls"},
            "stringData": {
                "tls.crt": leaf.cert_pem.decode(),
                "tls.key": leaf.key_pem.decode(),
                "ca.crt": client_ca.cert_pem.decode(),
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-redis-users"},
            "stringData": {"app": "app-pa55", "auditor": "auditor-pa55"},
        },
    )
    kube.apply(
        store_manifest(
            name,
            kafka.bootstrap_servers,
            replicas=2,
            tls={
                "secretName": f"{name}-tls",
                "authorization": {"app": ["read", "write"], "auditor": ["read"]},
            },
            redis={"enabled": True, "port": REDIS_PORT, "usersSecret": f"{name}-redis-users"},
        )
    )
    _wait_ready(kube, name, operator_pod)
    a, b = (p["status"]["podIP"] for p in store_pods(kube, name))

    client_dir = tmp_path / "client"
    ca = server_ca.write(client_dir / "store-ca.crt")
    cert, key = client_ca.issue("app", server=False).write(client_dir / "app.crt", client_dir / "app.key")
    tls = ClientTls(ca=ca, cert=cert, key=key, server_name=service)
    with Client(f"{a}:50051", timeout=15, tls=tls) as grpc_client:
        wrote = grpc_client.set(b"greeting", b"hello over mTLS")
        # Set is acknowledged by Kafka, before the pod applies it: read your write with its token.
        found = grpc_client.get(b"greeting", after=[Written(wrote.partition, wrote.offset)])
        assert found is not None and found.data == b"hello over mTLS"
    anonymous = Client(f"{a}:50051", timeout=5, retries=0, tls=ClientTls(ca=ca, server_name=service))
    with anonymous, pytest.raises(grpc.RpcError) as refused:  # the handshake wants a client certificate
        anonymous.get(b"greeting")
    assert isinstance(refused.value, grpc.Call) and refused.value.code() == grpc.StatusCode.UNAVAILABLE

    tls_args = ["--tls", "--cacert", str(ca), "--cert", str(cert), "--key", str(key), "--sni", service]

    def cli(*args: str) -> bytes:
        done = subprocess.run(
            [str(redis_cli), "-h", b, "-p", str(REDIS_PORT), *tls_args, "--no-auth-warning", *args],
            capture_output=True,
            timeout=60,
            check=False,
        )
        return done.stdout + done.stderr

    kube.wait(
        "pod 1 to serve the gRPC write to redis-cli",
        lambda: cli("--user", "auditor", "--pass", "auditor-pa55", "GET", "greeting") == b"hello over mTLS\n",
        timeout=60,
    )
    refused = cli("--user", "auditor", "--pass", "auditor-pa55", "SET", "greeting", "x")
    assert b"NOPERM user 'auditor' lacks the 'write' right needed for SET" in refused
    assert b"NOAUTH" in cli("GET", "greeting")
    # redis-benchmark too (same Debian package), over TLS with a user: every request answered.
    bench = subprocess.run(
        [str(redis_cli.with_name("redis-benchmark")), "-h", b, "-p", str(REDIS_PORT), *tls_args,
         "--user", "app", "-a", "app-pa55", "-n", "200", "-c", "4", "-t", "set,get", "-q"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stdout + bench.stderr
    assert "SET: " in bench.stdout and "GET: " in bench.stdout, bench.stdout + bench.stderr

    with redis.Redis(
        host=b,
        port=REDIS_PORT,
        ssl=True,
        ssl_ca_certs=str(ca),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        ssl_check_hostname=False,  # dialled by pod IP; the CA is still verified
        username="app",
        password="app-pa55",
        protocol=3,
        socket_timeout=30,
    ) as r:
        assert r.get("greeting") == b"hello over mTLS"
        assert r.set("from-redis", "written over TLS") is True
        linearizable = r.execute_command("KVS2.GET", "from-redis", "LINEARIZABLE")
        assert linearizable == b"written over TLS"
    with Client(f"{a}:50051", timeout=15, tls=tls) as grpc_client:
        assert kube.wait(
            "pod 0 to apply the Redis write",
            lambda: (v := grpc_client.get(b"from-redis")) is not None and v.data == b"written over TLS",
            timeout=30,
        )
