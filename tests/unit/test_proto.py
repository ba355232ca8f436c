"""The committed generated code matches proto/kvs2.proto, and the API stays wire-compatible with the seed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from kvs2._proto import kvs2_pb2

from tests.protogen import generate

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "tests" / "fixtures" / "seed" / "kvs2.proto"


def _postprocess(text: str) -> str:
    # scripts/gen-proto.sh rewrites this one import to be package-relative.
    return text.replace("import kvs2_pb2 as kvs2__pb2", "from kvs2._proto import kvs2_pb2 as kvs2__pb2")


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    generate(ROOT / "proto" / "kvs2.proto", tmp_path, mypy=True)
    committed = ROOT / "dataplane" / "kvs2" / "_proto"
    for name in ("kvs2_pb2.py", "kvs2_pb2_grpc.py", "kvs2_pb2.pyi", "kvs2_pb2_grpc.pyi"):
        fresh = (tmp_path / name).read_text()
        if name == "kvs2_pb2_grpc.py":
            fresh = _postprocess(fresh)
        assert (committed / name).read_text() == fresh, f"{name} is stale: run `make proto`"


def _file_descriptor(proto: Path, tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / (proto.stem + ".pb")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto.parent}",
            f"--descriptor_set_out={out}",
            str(proto),
        ],
        check=True,
    )
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return fds.file[0]


def test_every_seed_element_is_unchanged(tmp_path: Path) -> None:
    """Each seed message field keeps name, number, type and label; enums keep values; methods keep
    their types. New things may only be added."""
    seed = _file_descriptor(SEED, tmp_path)
    ours = descriptor_pb2.FileDescriptorProto()
    kvs2_pb2.DESCRIPTOR.CopyToProto(ours)
    assert ours.package == seed.package == "kvs2"

    our_messages = {m.name: m for m in ours.message_type}
    for message in seed.message_type:
        assert message.name in our_messages, message.name
        our_fields = {f.number: f for f in our_messages[message.name].field}
        for field in message.field:
            mine = our_fields[field.number]
            assert (mine.name, mine.type, mine.label, mine.type_name) == (
                field.name,
                field.type,
                field.label,
                field.type_name,
            ), f"{message.name}.{field.name} changed"

    our_enums = {e.name: e for e in ours.enum_type}
    for enum in seed.enum_type:
        values = {v.name: v.number for v in our_enums[enum.name].value}
        for value in enum.value:
            assert values.get(value.name) == value.number, f"{enum.name}.{value.name} changed"

    (seed_service,) = seed.service
    our_service = {s.name: s for s in ours.service}[seed_service.name]
    our_methods = {m.name: m for m in our_service.method}
    for method in seed_service.method:
        our_method = our_methods[method.name]
        assert (our_method.input_type, our_method.output_type) == (method.input_type, method.output_type)
        assert not our_method.client_streaming
        assert not our_method.server_streaming


def test_seed_encoding_is_read_identically(tmp_path: Path) -> None:
    """Bytes a seed client sends decode to the same values in our messages, and back.

    The seed's messages live in a private descriptor pool: both files are named kvs2.proto.
    """
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor(SEED, tmp_path))

    def seed(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"kvs2.{name}"))

    wire = seed("MultiGetRequest")(keys=[b"a", b"b", b"a"]).SerializeToString()
    assert list(kvs2_pb2.MultiGetRequest.FromString(wire).keys) == [b"a", b"b", b"a"]
    reply = kvs2_pb2.GetReply(status=kvs2_pb2.NOT_FOUND, data=b"v", revision=7).SerializeToString()
    seed_reply = seed("GetReply").FromString(reply)
    assert (seed_reply.status, seed_reply.data) == (1, b"v")
    set_reply = kvs2_pb2.SetReply(status=kvs2_pb2.PUBLISHED, partition=3, offset=9).SerializeToString()
    assert seed("SetReply").FromString(set_reply).status == 0
