"""`kvs2 operator`: run the KeyValueStore operator in this process (kopf, standalone, one replica).

The lead wires the `kvs2 operator` subcommand to `run(argv)`; `python -m kvs2_operator.main` works too.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kvs2_operator.errors import OperatorError


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
        deps=Deps(kube=KubeApi(configuration)),
        options=handlers.Options(
            resync_interval=args.resync_interval,
            namespaces=list(args.namespace),
            kubeconfig=args.kubeconfig,
        ),
    )
    if args.metrics_listen:
        from kvs2_operator import metrics

        try:
            port = metrics.serve(args.metrics_listen).server_port
        except (ValueError, OSError) as exc:
            print(f"kvs2 operator: cannot serve metrics on {args.metrics_listen!r}: {exc}", file=sys.stderr)
            return 2
        logging.getLogger(__name__).info("metrics at :%d/metrics", port)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
