"""A client generated from the seed's proto ALONE, run in an isolated interpreter (`python -I`).

Why a subprocess: the seed's `kvs2.proto` and the project's own generated code register the same proto
file name in protobuf's descriptor pool, so they cannot live in one process — and isolation proves the
client needs nothing of this repository but that one .proto file.

Protocol: argv = [generated-code dir]; stdin = JSON list of operations
  ["set", target, key, value] | ["get", target, key] | ["mget", target, [keys...]]
stdout = JSON list of results: "PUBLISHED" | [status, value] | [[key, status, value], ...]
(keys and values are UTF-8 text here, for readable tests).
"""

import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc
import kvs2_pb2 as pb  # type: ignore[import-not-found]
import kvs2_pb2_grpc as rpc  # type: ignore[import-not-found]


def main() -> None:
    channels: dict[str, grpc.Channel] = {}

    def stub(target: str) -> rpc.Kvs2Stub:
        if target not in channels:
            channels[target] = grpc.insecure_channel(target)
        return rpc.Kvs2Stub(channels[target])

    results: list[object] = []
    for op in json.load(sys.stdin):
        kind, target = op[0], op[1]
        if kind == "set":
            reply = stub(target).Set(pb.SetRequest(key=op[2].encode(), value=op[3].encode()), timeout=15)
            results.append(pb.SetStatus.Name(reply.status))
        elif kind == "get":
            got = stub(target).Get(pb.GetRequest(key=op[2].encode()), timeout=15)
            results.append([pb.ReadStatus.Name(got.status), got.data.decode()])
        elif kind == "mget":
            multi = stub(target).MultiGet(pb.MultiGetRequest(keys=[k.encode() for k in op[2]]), timeout=15)
            results.append(
                [[p.key.decode(), pb.ReadStatus.Name(p.status), p.data.decode()] for p in multi.parts]
            )
        else:
            raise SystemExit(f"unknown operation {kind!r}")
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
