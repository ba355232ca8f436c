"""`kvs2 operator`: run the KeyValueStore operator in this process (kopf, standalone, one replica).

The lead wires the `kvs2 operator` subcommand to `run(argv)`; `python -m kvs2_operator.main` works too.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import logging
import os
import signal
import socket
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from kvs2_operator.errors import OperatorError
from kvs2_operator.leader import LeaseElector
from kvs2_operator.model import IMAGE_GID, OperatorDefaults
from kvs2_operator.uninstall import Drain, Guards


def default_image() -> str:
    """The data-plane image of the same release as this operator (one image runs both)."""
    try:
        return f"kvs2:{version('kvs2')}"
    except PackageNotFoundError:
        return "kvs2:latest"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvs2 operator",
        description="Reconcile KeyValueStore resources into Kafka topics, StatefulSets, Services and PDBs.",
    )
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="serve only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file; default: in-cluster service account, else $KUBECONFIG, else ~/.kube/config",
    )
    parser.add_argument(
        "--resync-interval",
        type=float,
        default=30.0,
        help="seconds between full passes over every store (drift repair, status refresh); default 30",
    )
    parser.add_argument(
        "--deletion-timeout",
        type=float,
        default=300.0,
        help="seconds after a store (topicDeletionPolicy Delete) is deleted before the operator gives up on "
        "a topic it cannot delete (Kafka or the credentials Secret unavailable), leaves it behind with a "
        "Warning Event and removes the finalizer; default 300",
    )
    parser.add_argument(
        "--default-image",
        default=os.environ.get("KVS2_DEFAULT_IMAGE") or default_image(),
        help="data-plane image of stores that set no spec.image (env KVS2_DEFAULT_IMAGE); default: "
        "kvs2:<this operator's version>",
    )
    parser.add_argument(
        "--pod-fs-group",
        default=os.environ.get("KVS2_POD_FS_GROUP", str(IMAGE_GID)),
        help="fsGroup of data-plane pods, so volumes are writable for the image's group (env "
        f"KVS2_POD_FS_GROUP); empty where the platform assigns one (OpenShift); default {IMAGE_GID}",
    )
    parser.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (kvs2_operator.metrics)",
    )
    parser.add_argument(
        "--leader-election",
        action="store_true",
        help="run only while holding a coordination.k8s.io Lease, so several replicas can be deployed "
        "(one reconciles, the others stand by)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE", "kvs2-system"),
        help="namespace of the Lease (env POD_NAMESPACE); default kvs2-system",
    )
    parser.add_argument("--leader-election-lease", default="kvs2-operator", help="name of the Lease")
    parser.add_argument(
        "--guard-service-account",
        default=None,
        metavar="NAMESPACE/NAME",
        help="the operator's own ServiceAccount; with --guard-cluster-role, lets the operator finish the "
        "stores being deleted when its whole install is deleted (kubectl delete -f deploy/; see "
        "kvs2_operator.uninstall)",
    )
    parser.add_argument(
        "--guard-cluster-role",
        default=None,
        metavar="NAME",
        help="the operator's own ClusterRole (see --guard-service-account)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def run(argv: list[str]) -> int:
    if argv[:1] == ["--"]:  # `kvs2 operator -- --namespace x`: the outer parser passes the separator on
        argv = argv[1:]
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.log_level == "INFO":
        # kopf logs every successful handler call per object at INFO (one line per child event);
        # the operator logs its own status transitions, and kopf's failures are WARNING/ERROR anyway.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.resync_interval <= 0:
        print("kvs2 operator: --resync-interval must be positive", file=sys.stderr)
        return 2
    fs_group: int | None = None
    if str(args.pod_fs_group).strip():
        try:
            fs_group = int(args.pod_fs_group)
        except ValueError:
            print("kvs2 operator: --pod-fs-group must be an integer or empty", file=sys.stderr)
            return 2
    defaults = OperatorDefaults(
        image=args.default_image or None,
        fs_group=fs_group,
        operator_namespace=os.environ.get("POD_NAMESPACE") or None,
    )
    if args.deletion_timeout < 0:
        print("kvs2 operator: --deletion-timeout must not be negative", file=sys.stderr)
        return 2

    guards: Guards | None = None
    if args.guard_service_account or args.guard_cluster_role:
        try:
            guards = Guards.parse(args.guard_service_account or "", args.guard_cluster_role or "")
        except ValueError as exc:
            print(f"kvs2 operator: {exc}", file=sys.stderr)
            return 2

    # Imported here: importing kopf handlers registers them, which only `run` should do.
    import kopf

    from kvs2_operator import handlers
    from kvs2_operator.kube import KubeApi, load_configuration
    from kvs2_operator.reconcile import Deps

    try:
        configuration = load_configuration(args.kubeconfig)
    except Exception as exc:  # kubernetes.config raises several unrelated types for a bad kubeconfig
        print(f"kvs2 operator: cannot load Kubernetes credentials: {exc}", file=sys.stderr)
        return 2
    memo = kopf.Memo(
        deps=Deps(kube=KubeApi(configuration), namespaces=list(args.namespace) or None, defaults=defaults),
        options=handlers.Options(
            resync_interval=args.resync_interval,
            namespaces=list(args.namespace),
            kubeconfig=args.kubeconfig,
            deletion_timeout=args.deletion_timeout,
        ),
        uninstall=Drain(guards=guards),
    )
    if args.metrics_listen:
        from kvs2_operator import metrics

        try:
            port = metrics.serve(args.metrics_listen).server_port
        except (ValueError, OSError) as exc:
            print(f"kvs2 operator: cannot serve metrics on {args.metrics_listen!r}: {exc}", file=sys.stderr)
            return 2
        logging.getLogger(__name__).info("metrics at :%d/metrics", port)
    elector: LeaseElector | None = None
    lost = threading.Event()
    if args.leader_election:
        identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        elector = LeaseElector(
            memo.deps.kube.request_sync,
            args.leader_election_namespace,
            args.leader_election_lease,
            identity,
        )
        with _standby_health(args.liveness):
            if not elector.wait_until_leader():
                return 1

        def on_lost() -> None:
            if memo.uninstall.draining:
                # The Lease's namespace is being deleted with the operator: finish the drain first
                # (its pod is going, and so is any standby).
                logging.getLogger(__name__).warning("lost the Lease during an uninstall; draining on")
                return
            lost.set()
            os.kill(os.getpid(), signal.SIGTERM)  # kopf stops gracefully; the pod restarts as a standby

        elector.keep_leading(on_lost)
    try:
        kopf.run(
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=list(args.namespace),
            memo=memo,
            liveness_endpoint=args.liveness,
        )
    except OperatorError as exc:
        print(f"kvs2 operator: {exc}", file=sys.stderr)
        return 1
    finally:
        if elector is not None:
            elector.stop()
            if not lost.is_set():
                elector.release()
    return 1 if lost.is_set() else 0


@contextlib.contextmanager
def _standby_health(url: str | None) -> Iterator[None]:
    """While standing by, answer the liveness probe (kopf serves it once this replica leads)."""
    if not url:
        yield
        return
    parts = urllib.parse.urlsplit(url)

    class Standby(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"standby": true}')

        def log_message(self, *_: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer((parts.hostname or "127.0.0.1", parts.port or 80), Standby)
    thread = threading.Thread(target=server.serve_forever, name="kvs2-standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
