#!/usr/bin/env bash
# Regenerates the Python protobuf/gRPC modules from proto/kvs2.proto with grpcio-tools.
# tests/unit/test_proto_sync.py proves the committed output matches this script's output.
set -euo pipefail
cd "$(dirname "$0")/.."
out=dataplane/kvs2/_proto
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/python -m grpc_tools.protoc -Iproto \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/kvs2.proto
# grpc_tools emits `import kvs2_pb2`; make it a package-relative import.
sed -i 's/^import kvs2_pb2 as kvs2__pb2$/from kvs2._proto import kvs2_pb2 as kvs2__pb2/' "$out/kvs2_pb2_grpc.py"
