"""Generate Python modules from a .proto with grpcio-tools into a directory (for sync and seed tests)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from grpc_tools import protoc


def generate(proto: Path, out_dir: Path, *, mypy: bool = False) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{proto.parent}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
    ]
    if mypy:
        bin_dir = Path(sys.executable).parent
        args += [
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={out_dir}",
            f"--mypy_grpc_out={out_dir}",
        ]
    args.append(str(proto))
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {proto}")


def load(path: Path, name: str) -> ModuleType:
    """Import a generated module under a private name so it never collides with `kvs2._proto`."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
