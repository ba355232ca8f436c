"""A linearizability check of recorded kvs2 histories with porcupine (a Go module, built and cached).

The checker's source is `tests/harness/go/lincheck/main.go`; its cache key includes a hash of that file,
so editing the model rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.harness.gobuild import GoToolSet, ensure_toolset

MAIN_GO = Path(__file__).parent / "go" / "lincheck" / "main.go"
PORCUPINE_VERSION = "v1.3.1"


@dataclass(frozen=True)
class Op:
    """One completed operation: what was asked, when, and what came back (nanosecond clock)."""

    client: int
    op: str  # "put", "del", "cas" (compare-and-set), "cas_del" (compare-and-delete) or "get"
    key: str
    call: int
    ret: int
    value: str = ""
    expected: int = 0
    applied: bool = False
    found: bool = False
    out_value: str = ""
    revision: int = 0
    # The call's outcome is unknown (timed out, UNAVAILABLE): it may or may not have been applied. `check`
    # gives it a return time after every other operation, as Jepsen does.
    ambiguous: bool = False


def _toolset() -> GoToolSet:
    digest = hashlib.sha256(MAIN_GO.read_bytes()).hexdigest()[:10]
    return GoToolSet(
        name=f"lincheck-{digest}",
        module="github.com/anishathalye/porcupine",
        version=PORCUPINE_VERSION,
        packages=(".",),
        binaries=("lincheck",),
        main_go=MAIN_GO,
    )


def check(history: Sequence[Op]) -> str:
    """ "ok", "violation" or "unknown" (the checker timed out)."""
    binary = ensure_toolset(_toolset()) / "lincheck"
    forever = max((max(o.call, o.ret) for o in history), default=0) + 1
    payload = [
        {**{k: v for k, v in asdict(o).items() if k != "ret"}, "return": forever if o.ambiguous else o.ret}
        for o in history
    ]
    result = subprocess.run(
        [str(binary)], input=json.dumps(payload), capture_output=True, text=True, timeout=300, check=False
    )
    verdict = result.stdout.strip()
    if verdict not in ("ok", "violation", "unknown"):
        raise RuntimeError(f"lincheck failed ({result.returncode}): {result.stderr}")
    return verdict
