"""The floor of a unary gRPC call in Python: a bare grpc.aio server whose Get returns a fixed reply.

`python -m bench.floor --listen 127.0.0.1:PORT [--loop asyncio|uvloop]`

Why: kvs2's Get cost per call is only meaningful beside what grpc.aio itself costs for the same call on
the same machine (issue 12: the floor was 368 µs of server CPU per call, kvs2's Get 465 µs). This server
speaks kvs2's own proto (the same `kvs2.Kvs2/Get` method, request parsed and reply serialized by the
same generated code, the same channel options), so ghz drives it exactly as it drives a replica; the
handler does nothing else. bench/run.py runs it pinned to the server core with the event loop the kvs2
replica uses.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

import grpc
from kvs2._proto import kvs2_pb2 as pb

try:  # the replica's own channel options, so the floor differs from it only in the handler
    from kvs2.server import GRPC_OPTIONS
except ImportError:  # renamed: the values they had when this was written
    GRPC_OPTIONS = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]

# What a replica answers for an existing key with a 100-byte value.
REPLY = pb.GetReply(status=pb.OK, data=b"v" * 100, revision=1)


async def get(request: pb.GetRequest, context: object) -> pb.GetReply:
    return REPLY


# The same method handler `add_Kvs2Servicer_to_server` registers for Get (same (de)serializers), alone.
HANDLER = grpc.method_handlers_generic_handler(
    "kvs2.Kvs2",
    {
        "Get": grpc.unary_unary_rpc_method_handler(
            get,
            request_deserializer=pb.GetRequest.FromString,
            response_serializer=pb.GetReply.SerializeToString,
        )
    },
)


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=[*GRPC_OPTIONS, ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((HANDLER,))
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"floor: cannot listen on {listen}")
    await server.start()
    print(f"floor: listening on {listen}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        importlib.import_module("uvloop").run(serve(args.listen))  # optional: not every venv has it
    else:
        asyncio.run(serve(args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
