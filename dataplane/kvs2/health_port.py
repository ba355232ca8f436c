"""A plaintext port that serves only `grpc.health.v1`, for probes that cannot speak TLS.

Why: Kubernetes' built-in gRPC probe (and grpc-health-probe without flags) dials plaintext. With TLS
(and certainly with mTLS) on the main port, the kubelet could not ask for health at all. This second
server shares the replica's health servicer, so it reports exactly what the main port would, and carries
nothing else: no data, no reflection, no keys. Bind it to the pod IP (the kubelet dials that).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from kvs2.errors import ConfigError


async def start_health_server(
    address: str | None, servicer: HealthServicer, *, reuse_port: bool
) -> grpc.aio.Server | None:
    """Start the health-only server on `address` (None: none); ConfigError when it cannot bind."""
    if not address:
        return None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if server.add_insecure_port(address) == 0:
        raise ConfigError(f"cannot listen on {address} (--health-listen)")
    await server.start()
    return server
