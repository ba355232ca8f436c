"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, controller-manager, scheduler.

Why real binaries: the operator's promises (CRD validation, ownerReferences garbage collection, StatefulSets
turning into Pods, scale subresources) are enforced by the API server and the controller-manager, so a fake
client would only test our own assumptions. There are no nodes and no kubelet, so Pods stay Pending; every
controller-level behaviour is real.

Everything binds to loopback. Tests use free ports and a temporary run directory; the local stack (`make
cluster`) uses fixed, non-default ports (apiserver 16443, etcd 12379) and `.kvs2/cluster/`. The PKI (a CA, an
apiserver serving cert, client certs for the admin and each component, the service-account key pair) is
generated with `cryptography` and kept in the run directory, so a restarted local stack keeps its kubeconfig.

CLI (`make cluster` / `make cluster-down`): `python -m tests.harness.cluster up|down|status`.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import functools
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness.common import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    progress,
    repo_root,
    state_root,
    stop_pid,
    wait_until,
)
from tests.harness.gobuild import ensure_tool

SERVICE_CIDR = "10.0.0.0/24"
FIRST_SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service; must be in the serving cert

# The controllers our operator relies on (names as kube-controller-manager --help lists them in 1.37).
CONTROLLERS = (
    "serviceaccount-token-controller",
    "serviceaccount-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "disruption-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "job-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "root-ca-certificate-publisher-controller",
    "resourcequota-controller",
    "pod-garbage-collector-controller",
    "service-cidr-controller",
    "clusterrole-aggregation-controller",
)

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class ClusterError(RuntimeError):
    """The control plane failed to start or answer; the message carries the failing component's log tail."""


@dataclass(frozen=True)
class ClusterPorts:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    @classmethod
    def free(cls) -> ClusterPorts:
        """Fresh loopback ports for a test run (never the well-known etcd/apiserver/controller ports)."""
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())

    @classmethod
    def local_stack(cls) -> ClusterPorts:
        """Fixed ports for `make cluster`, chosen away from the defaults so a real cluster is never hit."""
        return cls(
            etcd_client=12379, etcd_peer=12380, apiserver=16443, controller_manager=16444, scheduler=16445
        )


# --------------------------------------------------------------------------------------------------- PKI


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Pki:
    """Paths of the generated key material; created once per run directory and reused afterwards."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def client_cert(self, user: str) -> Path:
        return self.dir / f"{user}.crt"

    def client_key(self, user: str) -> Path:
        return self.dir / f"{user}.key"

    def ensure(self) -> Pki:
        if (self.dir / "COMPLETE").is_file():
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvs2-test-ca")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(self.ca_key, _key_pem(ca_key))
        self.ca_cert.write_bytes(_cert_pem(ca))

        def leaf(
            cn: str, orgs: Sequence[str], usage: x509.ObjectIdentifier, sans: Sequence[x509.GeneralName] = ()
        ) -> tuple[bytes, bytes]:
            key = ec.generate_private_key(ec.SECP256R1())
            attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
            attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name(attrs))
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
                )
            )
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
            return _cert_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key)

        serving_sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
            x509.IPAddress(ipaddress.ip_address(FIRST_SERVICE_IP)),
            *(
                x509.DNSName(n)
                for n in (
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                )
            ),
        ]
        cert, key = leaf("kube-apiserver", (), ExtendedKeyUsageOID.SERVER_AUTH, serving_sans)
        self.serving_cert.write_bytes(cert)
        _write_private(self.serving_key, key)
        # RBAC identities: system:masters for the admin; the components get their built-in bootstrap roles.
        for user, cn, orgs in (
            ("admin", "kvs2-admin", ("system:masters",)),
            ("kube-controller-manager", "system:kube-controller-manager", ()),
            ("kube-scheduler", "system:kube-scheduler", ()),
        ):
            cert, key = leaf(cn, orgs, ExtendedKeyUsageOID.CLIENT_AUTH)
            self.client_cert(user).write_bytes(cert)
            _write_private(self.client_key(user), key)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(self.sa_key, _key_pem(sa_key))
        self.sa_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        (self.dir / "COMPLETE").write_text("ok\n")
        return self


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, pki: Pki, user: str, cluster_name: str = "kvs2") -> Path:
    """A self-contained kubeconfig (certs embedded), so it can be copied or read by any client library."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": server, "certificate-authority-data": _b64(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(pki.client_cert(user)),
                    "client-key-data": _b64(pki.client_key(user)),
                },
            }
        ],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": cluster_name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    _write_private(tmp, json.dumps(config, indent=2).encode())  # JSON is YAML; no extra dependency
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------- cluster


class Cluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler, started from the Go-built binaries.

    `start()` builds the binaries if the cache lacks them (never skips), writes PID files to `workdir/pids/`,
    and returns once `/readyz` is ok and the `default` ServiceAccount exists (proof the controller-manager
    works). `stop()` ends exactly the PIDs it started, in reverse order.
    """

    def __init__(self, workdir: Path, ports: ClusterPorts | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self._free_ports = ports is None
        self.ports = ports or ClusterPorts.free()
        self.pki = Pki(self.workdir / "pki")
        self.logs = self.workdir / "logs"
        self.pid_dir = self.workdir / "pids"
        self.processes: list[ManagedProcess] = []
        self._binaries: dict[str, Path] = {}

    @property
    def api_url(self) -> str:
        return f"https://{LOOPBACK}:{self.ports.apiserver}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    def env(self) -> dict[str, str]:
        """The environment for a client subprocess (an operator, a script) that should use this cluster."""
        return dict(os.environ, KUBECONFIG=str(self.kubeconfig))

    def binary(self, name: str) -> Path:
        if name not in self._binaries:
            self._binaries[name] = ensure_tool(name)
        return self._binaries[name]

    # ------------------------------------------------------------------------------------------ start

    def start(self, timeout: float = 180.0) -> Cluster:
        for name in ("etcd", *COMPONENTS[1:], "kubectl"):
            self.binary(name)  # build everything before starting anything
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki.ensure()
        attempts = 3 if self._free_ports else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_all(timeout)
                break
            except ClusterError as exc:
                # A free port can be taken between choosing it and binding it; only then is a retry honest.
                if attempt == attempts or "address already in use" not in str(exc):
                    raise
                progress(f"control plane start lost a port race ({exc.args[0].splitlines()[0]}); retrying")
                self.ports = ClusterPorts.free()
                shutil.rmtree(self.workdir / "etcd-data", ignore_errors=True)
        progress(
            f"control plane ready at {self.api_url} in {time.monotonic() - started:.1f}s ({self.workdir})"
        )
        return self

    def _start_all(self, timeout: float) -> None:
        write_kubeconfig(self.kubeconfig, self.api_url, self.pki, "admin")
        for user in ("kube-controller-manager", "kube-scheduler"):
            write_kubeconfig(self.workdir / f"{user}.kubeconfig", self.api_url, self.pki, user)
        try:
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._start("kube-controller-manager", self._controller_manager_args())
            self._start("kube-scheduler", self._scheduler_args())
            for name, port in (
                ("kube-controller-manager", self.ports.controller_manager),
                ("kube-scheduler", self.ports.scheduler),
            ):
                url = f"https://{LOOPBACK}:{port}/healthz"
                self._wait(functools.partial(_http_ok, url), f"{name} {url}", timeout)
            self._wait_for_default_service_account(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name=name, argv=argv, log_path=self.logs / f"{name}.log", cwd=self.workdir)
        proc.start()
        self.processes.append(proc)
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        (self.pid_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc

    def _check_alive(self) -> None:
        for proc in self.processes:
            if not proc.alive():
                raise ClusterError(
                    f"{proc.name} exited (code {proc.popen.returncode if proc.popen else '?'}); "
                    f"log {proc.log_path}:\n{proc.log_tail()}"
                )

    def _wait(self, predicate: Callable[[], bool], what: str, timeout: float) -> None:
        def check() -> bool:
            self._check_alive()
            return predicate()

        try:
            wait_until(check, timeout=timeout, interval=0.25, what=what)
        except TimeoutError as exc:
            tails = "\n".join(f"--- {p.name} ({p.log_path}):\n{p.log_tail(15)}" for p in self.processes)
            raise ClusterError(f"{exc}\n{tails}") from exc

    def _start_etcd(self, timeout: float) -> None:
        client = f"http://{LOOPBACK}:{self.ports.etcd_client}"
        peer = f"http://{LOOPBACK}:{self.ports.etcd_peer}"
        self._start(
            "etcd",
            [
                str(self.binary("etcd")),
                "--name=kvs2",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=kvs2={peer}",
                "--unsafe-no-fsync=true",  # test data; durability across power loss is not the point here
                "--log-level=warn",
            ],
        )
        self._wait(lambda: _http_ok(f"{client}/health"), "etcd /health", timeout)

    def _start_apiserver(self, timeout: float) -> None:
        pki = self.pki
        self._start(
            "kube-apiserver",
            [
                str(self.binary("kube-apiserver")),
                f"--etcd-servers=http://{LOOPBACK}:{self.ports.etcd_client}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={self.ports.apiserver}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-account-issuer={self.api_url}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                # The endpoint reconciler refuses a loopback advertise address; with no nodes nothing could
                # reach the `kubernetes` Service's endpoints anyway.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait(lambda: self._api_get("/readyz") == (200, b"ok"), "kube-apiserver /readyz", timeout)

    def _controller_manager_args(self) -> list[str]:
        return [
            str(self.binary("kube-controller-manager")),
            f"--kubeconfig={self.workdir / 'kube-controller-manager.kubeconfig'}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.ports.controller_manager}",
            f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            "--use-service-account-credentials=true",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--concurrent-statefulset-syncs=5",
            "--v=1",
        ]

    def _scheduler_args(self) -> list[str]:
        return [
            str(self.binary("kube-scheduler")),
            f"--kubeconfig={self.workdir / 'kube-scheduler.kubeconfig'}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.ports.scheduler}",
            f"--cert-dir={self.workdir / 'scheduler-certs'}",
            "--leader-elect=false",
            "--v=1",
        ]

    def _wait_for_default_service_account(self, timeout: float) -> None:
        self._wait(
            lambda: self._api_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            "namespace `default` and its ServiceAccount (created by kube-controller-manager)",
            timeout,
        )

    # ------------------------------------------------------------------------------------------- use

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.client_cert("admin")), str(self.pki.client_key("admin")))
        return ctx

    def _api_get(self, path: str) -> tuple[int, bytes]:
        """GET as the admin; (0, b"") while the server does not answer yet."""
        try:
            with urllib.request.urlopen(self.api_url + path, context=self._ssl_context(), timeout=5) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (OSError, ssl.SSLError):
            return 0, b""

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; raises ClusterError with stderr when `check` fails."""
        argv = [str(self.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
            )
        return result

    def get_object(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        """One object as JSON, or None when it does not exist (any other failure raises)."""
        result = self.kubectl("-n", namespace, "get", kind, name, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise ClusterError(f"kubectl get {kind}/{name} failed:\n{result.stderr}")
        loaded: dict[str, Any] = json.loads(result.stdout)
        return loaded

    # ------------------------------------------------------------------------------------------- stop

    def stop(self) -> None:
        """Stop exactly the processes this object started, newest first (scheduler ... etcd)."""
        for proc in reversed(self.processes):
            proc.stop(grace=15.0)
            (self.pid_dir / f"{proc.name}.pid").unlink(missing_ok=True)
        self.processes.clear()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    """GET `url` == 200. For the components' own self-signed health endpoints on loopback the serving
    certificate is not verified: they sign it themselves at start, nothing to pin it to."""
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return int(resp.status) == 200
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------------------------------ local stack
#
# `make cluster` leaves everything running after this process exits; `make cluster-down` finds it again
# through the PID files under .kvs2/cluster/pids/ and stops exactly those PIDs.

KAFKA_PORT = 19092


def _stack_dir() -> Path:
    return state_root() / "cluster"


def _pid_is(pid: int, binary_name: str) -> bool:
    """True if `pid` is still the process we recorded (guards against a recycled PID after a reboot)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return binary_name.encode() in cmdline and "\nState:\tZ" not in status


def _recorded(pid_dir: Path, name: str) -> int | None:
    try:
        pid = int((pid_dir / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_is(pid, "kvs2" if name == "operator" else name) else None


def _stack_up() -> int:
    from tests.harness import kafka  # imported late: only the local stack needs Kafka

    stack = _stack_dir()
    bootstrap = kafka.up(port=KAFKA_PORT, state_dir=state_root() / "kafka")
    progress(f"Kafka: {bootstrap}")

    cluster = Cluster(stack, ClusterPorts.local_stack())
    running = [n for n in COMPONENTS if _recorded(cluster.pid_dir, n) is not None]
    if running and len(running) < len(COMPONENTS):
        progress(f"a partial control plane is running ({', '.join(running)}); stopping it first")
        _stack_down_control_plane()
    if len(running) == len(COMPONENTS):
        progress(f"control plane already running ({stack})")
    else:
        cluster.start()
        cluster.processes.clear()  # hand the processes over to the PID files: they outlive this command
    kubeconfig = state_root() / "kubeconfig"
    shutil.copyfile(cluster.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o600)

    crd = repo_root() / "deploy" / "crd.yaml"
    if crd.is_file():
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
        cluster.kubectl("wait", "--for=condition=Established", "-f", str(crd), "--timeout=60s")
        progress(f"installed CRD from {crd}")
    else:
        progress(f"no {crd} yet: CRD not installed")

    _start_operator(cluster, kubeconfig)
    from tests.harness import kubelet_stack  # the process kubelet runs the pods; then a demo store

    kubelet_stack.start_kubelet(cluster)
    demo = kubelet_stack.apply_demo(cluster, bootstrap) if crd.is_file() else []

    kubectl = cluster.binary("kubectl")
    replica_metrics = ", ".join(f"http://{d.rsplit(':', 1)[0]}:9464/metrics" for d in demo)
    print(
        f"""
Local Kubernetes control plane is up; {kubelet_stack.NODES} process-kubelet nodes run its pods as processes.
  demo store : default/demo, gRPC at {", ".join(demo) or "(not Ready, see above)"}
               e.g. .venv/bin/kvs2 set --target {demo[0] if demo else "<pod IP>:50051"} greeting hello
  metrics    : operator http://{OPERATOR_METRICS}/metrics; replicas {replica_metrics or "(none yet)"}
  API server : {cluster.api_url}
  Kafka      : {bootstrap}
  logs       : {cluster.logs}
  kubectl    : {kubectl}

  export KUBECONFIG={kubeconfig}
  export PATH={kubectl.parent}:$PATH
  kubectl get kvs      # a KeyValueStore's spec.kafka.bootstrapServers: {bootstrap}

Stop it with: make cluster-down
"""
    )
    return 0


# The operator's Prometheus metrics in `make cluster` (each store pod serves its own on <pod IP>:9464).
OPERATOR_METRICS = "127.0.0.1:59090"


def _start_operator(cluster: Cluster, kubeconfig: Path) -> None:
    pid_dir = cluster.pid_dir
    if (pid := _recorded(pid_dir, "operator")) is not None:
        progress(f"operator already running (pid {pid}), log: {cluster.logs / 'operator.log'}")
        return
    kvs2 = repo_root() / ".venv" / "bin" / "kvs2"
    usage = (
        subprocess.run([str(kvs2), "--help"], capture_output=True, text=True, check=False).stdout
        if kvs2.is_file()
        else ""
    )
    if not re.search(r"\boperator\b", usage):
        progress(f"operator NOT started: `{kvs2} operator` is not available yet")
        return
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    proc = ManagedProcess(
        name="operator",
        argv=[str(kvs2), "operator", "--metrics-listen", OPERATOR_METRICS],
        log_path=cluster.logs / "operator.log",
        env=env,
        cwd=repo_root(),
    ).start()
    pid_dir.mkdir(parents=True, exist_ok=True)
    (pid_dir / "operator.pid").write_text(f"{proc.pid}\n")
    time.sleep(2.0)
    if not proc.alive():
        raise ClusterError(f"operator exited at once; log {proc.log_path}:\n{proc.log_tail()}")
    progress(f"operator running (pid {proc.pid}), log: {proc.log_path}")


def _stack_down_control_plane() -> None:
    from tests.harness import kubelet_stack

    pid_dir = _stack_dir() / "pids"
    kubelet_stack.stop_kubelet(pid_dir, _stack_dir() / "kubelet")
    for name in ("operator", *reversed(COMPONENTS)):
        pid = _recorded(pid_dir, name)
        if pid is not None:
            progress(f"stopping {name} (pid {pid})")
            stop_pid(pid, grace=15.0)
        (pid_dir / f"{name}.pid").unlink(missing_ok=True)


def _stack_down() -> int:
    from tests.harness import kafka

    _stack_down_control_plane()
    kafka.down(state_root() / "kafka")
    progress("local stack stopped (state kept in .kvs2/; `make clean` removes it)")
    return 0


def _stack_status() -> int:
    pid_dir = _stack_dir() / "pids"
    for name in (*COMPONENTS, "operator", "kubelet"):
        pid = _recorded(pid_dir, name)
        print(f"{name:25} {'running, pid ' + str(pid) if pid else 'stopped'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.cluster", description=__doc__.splitlines()[0]
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return _stack_up()
        if args.command == "down":
            return _stack_down()
        return _stack_status()
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
