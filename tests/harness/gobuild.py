"""Build the Go programs the tests need (Kubernetes control plane, etcd, helm, gRPC tools) from Go modules.

Why build instead of download: this machine reaches the Go module proxy but no release download site, so the
only honest way to run a *real* kube-apiserver is to compile it. Each tool is built once into
`~/.cache/kvs2/<name>-<version>/bin/` and reused; a cold build prints what it is downloading and compiling,
with elapsed time, because the Kubernetes set takes many minutes on two cores.

Kubernetes is special: `k8s.io/kubernetes` is not meant to be used as a module (its go.mod requires its
staging modules at v0.0.0 and points them at `./staging`), so the throw-away module replaces every staging
module with its published `v0.<minor>.<patch>` twin, and the version is stamped with `-ldflags -X` so
`kubectl version` and `/version` report the real release instead of `v0.0.0-master`.

CLI: `python -m tests.harness.gobuild NAME...` builds (if needed) and prints the binaries' paths.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.common import cache_root, popen, progress

KUBERNETES_VERSION = "v1.37.2"
# The etcd release that Kubernetes 1.37 is built and tested against (its go.mod pins the etcd v3.7 libraries).
ETCD_VERSION = "v3.7.0"


class GoBuildError(RuntimeError):
    """A Go tool could not be built; the message names the command and points at the full build log."""


@dataclass(frozen=True)
class GoToolSet:
    """One throw-away Go module that yields one or more binaries, cached together by version.

    `packages` are the main packages to build (`"."` means the module's own `main_go`, copied from a
    template under tests/harness/go/), `binaries` the file names `go build -o bin/` leaves behind for them.
    """

    name: str
    module: str
    version: str
    packages: tuple[str, ...]
    binaries: tuple[str, ...]
    ldflags: tuple[str, ...] = ()
    main_go: Path | None = None
    kubernetes_staging: bool = False
    extra_requires: tuple[tuple[str, str], ...] = field(default=())
    tags: tuple[str, ...] = ()  # Go build tags (`go build -tags`)
    cold_build: str = "under a minute or two"  # what to expect, told to the person watching

    @property
    def home(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    @property
    def bin_dir(self) -> Path:
        return self.home / "bin"

    def built(self) -> bool:
        return all((self.bin_dir / b).is_file() for b in self.binaries) and (self.home / "BUILT").is_file()


def _kubernetes_ldflags(version: str) -> tuple[str, ...]:
    major, minor = version.lstrip("v").split(".")[:2]
    flags: list[str] = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.gitCommit=module-{version}",
        ]
    return tuple(flags)


# Go sources kept as templates: tools whose module has no main package we can build directly.
GO_TEMPLATES = Path(__file__).resolve().parent / "go"

TOOLSETS: dict[str, GoToolSet] = {
    s.name: s
    for s in (
        GoToolSet(
            name="kubernetes",
            module="k8s.io/kubernetes",
            version=KUBERNETES_VERSION,
            packages=(
                "k8s.io/kubernetes/cmd/kube-apiserver",
                "k8s.io/kubernetes/cmd/kube-controller-manager",
                "k8s.io/kubernetes/cmd/kube-scheduler",
                "k8s.io/kubernetes/cmd/kubectl",
            ),
            binaries=("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
            ldflags=_kubernetes_ldflags(KUBERNETES_VERSION),
            kubernetes_staging=True,
            cold_build="about 7 minutes on 2 cores",
        ),
        GoToolSet(
            name="etcd",
            module="go.etcd.io/etcd/server/v3",
            version=ETCD_VERSION,
            packages=(".",),
            binaries=("etcd",),
            main_go=GO_TEMPLATES / "etcd" / "main.go",
        ),
        GoToolSet(
            name="helm",
            module="helm.sh/helm/v3",
            version="v3.22.0",
            packages=("helm.sh/helm/v3/cmd/helm",),
            binaries=("helm",),
            ldflags=("-X helm.sh/helm/v3/internal/version.version=v3.22.0",),
        ),
        GoToolSet(
            name="grpcurl",
            module="github.com/fullstorydev/grpcurl",
            version="v1.9.4",
            packages=("github.com/fullstorydev/grpcurl/cmd/grpcurl",),
            binaries=("grpcurl",),
            ldflags=("-X main.version=v1.9.4",),
        ),
        GoToolSet(
            name="ghz",
            module="github.com/bojand/ghz",
            version="v0.121.0",
            packages=("github.com/bojand/ghz/cmd/ghz",),
            binaries=("ghz",),
        ),
        GoToolSet(
            name="grpc-health-probe",
            module="github.com/grpc-ecosystem/grpc-health-probe",
            version="v0.4.61",
            packages=("github.com/grpc-ecosystem/grpc-health-probe",),
            binaries=("grpc-health-probe",),
        ),
    )
}

# Binary name -> the tool set that produces it (`ensure_tool("kubectl")` builds the Kubernetes set).
TOOLS: dict[str, GoToolSet] = {b: s for s in TOOLSETS.values() for b in s.binaries}


def ensure_tool(name: str) -> Path:
    """Path to the binary `name`, building its tool set first if the cache does not have it."""
    try:
        toolset = TOOLS[name] if name in TOOLS else TOOLSETS[name]
    except KeyError:
        known = ", ".join(sorted(set(TOOLS) | set(TOOLSETS)))
        raise GoBuildError(f"unknown Go tool {name!r}; known: {known}") from None
    ensure_toolset(toolset)
    binary = name if name in TOOLS else toolset.binaries[0]
    return toolset.bin_dir / binary


def ensure_toolset(toolset: GoToolSet) -> Path:
    """Build `toolset` unless it is cached; returns its bin directory. Safe against concurrent callers."""
    if toolset.built():
        return toolset.bin_dir
    toolset.home.mkdir(parents=True, exist_ok=True)
    with _locked(toolset.home / ".lock"):
        if toolset.built():  # someone else built it while we waited
            return toolset.bin_dir
        _build(toolset)
    return toolset.bin_dir


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another process building in {path.parent} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env.setdefault("CGO_ENABLED", "0")  # static binaries; the control plane needs no cgo
    return env


def _build(toolset: GoToolSet) -> None:
    if shutil.which("go") is None:
        raise GoBuildError("the `go` command is not on PATH; install Go to build the test tools")
    src = toolset.home / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    log_path = toolset.home / "build.log"
    log_path.unlink(missing_ok=True)
    started = time.monotonic()
    progress(
        f"building {toolset.name} {toolset.version} ({', '.join(toolset.binaries)}) from Go modules; "
        f"a cold build takes {toolset.cold_build}. Log: {log_path}"
    )
    env = _go_env()
    (src / "go.mod").write_text(_go_mod(toolset, env, log_path, started))
    if toolset.main_go is not None:
        shutil.copyfile(toolset.main_go, src / "main.go")
        _run(["go", "get", f"{toolset.module}@{toolset.version}"], src, env, log_path, started, "resolve")
        _run(["go", "mod", "tidy"], src, env, log_path, started, "resolve")
    else:
        pinned = [f"{p}@{toolset.version}" for p in toolset.packages]  # bare `go get` would upgrade
        _run(["go", "get", *pinned], src, env, log_path, started, "resolve")
    out = toolset.home / "bin.partial"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    ldflags = " ".join(("-s", "-w", *toolset.ldflags))
    tags = [f"-tags={','.join(toolset.tags)}"] if toolset.tags else []
    argv = [
        "go",
        "build",
        "-v",
        "-trimpath",
        f"-ldflags={ldflags}",
        *tags,
        "-o",
        f"{out}/",
        *toolset.packages,
    ]
    _run(argv, src, env, log_path, started, "compile")
    missing = [b for b in toolset.binaries if not (out / b).is_file()]
    if missing:
        raise GoBuildError(f"go build finished but did not produce {missing}; see {log_path}")
    if toolset.bin_dir.exists():
        shutil.rmtree(toolset.bin_dir)
    out.rename(toolset.bin_dir)
    elapsed = time.monotonic() - started
    (toolset.home / "BUILT").write_text(
        json.dumps({"version": toolset.version, "seconds": round(elapsed, 1), "at": time.time()}) + "\n"
    )
    progress(f"built {toolset.name} {toolset.version} in {elapsed:.0f}s -> {toolset.bin_dir}")


def _go_mod(toolset: GoToolSet, env: dict[str, str], log_path: Path, started: float) -> str:
    lines = [
        "// Throw-away module generated by tests/harness/gobuild.py; safe to delete.",
        # `go build -o dir/ .` names the binary after the module path's last element.
        f"module kvs2.local/gobuild/{toolset.binaries[0] if toolset.main_go else toolset.name}",
        "",
        "go 1.26",
        "",
        f"require {toolset.module} {toolset.version}",
    ]
    for module, version in toolset.extra_requires:
        lines.append(f"require {module} {version}")
    if toolset.kubernetes_staging:
        staging_version = "v0." + toolset.version.lstrip("v").split(".", 1)[1]
        lines.append("")
        for module in _kubernetes_staging_modules(toolset, env, log_path, started):
            lines.append(f"replace {module} => {module} {staging_version}")
    return "\n".join(lines) + "\n"


_STAGING_REPLACE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", re.MULTILINE)


def _kubernetes_staging_modules(
    toolset: GoToolSet, env: dict[str, str], log_path: Path, started: float
) -> list[str]:
    """The staging modules, read from k8s.io/kubernetes' own go.mod (so a new release needs no list edit)."""
    info = _run(
        ["go", "mod", "download", "-json", f"{toolset.module}@{toolset.version}"],
        cache_root(),
        env,
        log_path,
        started,
        "download",
        capture=True,
    )
    gomod = Path(json.loads(info)["GoMod"]).read_text()
    modules = _STAGING_REPLACE.findall(gomod)
    if not modules:
        raise GoBuildError(f"no staging `replace` directives in {toolset.module}@{toolset.version}'s go.mod")
    return sorted(modules)


def _run(
    argv: Sequence[str],
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    started: float,
    phase: str,
    *,
    capture: bool = False,
) -> str:
    """Run a go command with its output in the build log, printing a heartbeat every few seconds.

    `go get` prints `go: downloading M V` and `go build -v` prints each package as it starts compiling; the
    heartbeat says how many of those lines went by and the latest one, so a person watching a cold build sees
    it is alive (a single big package or the final link can take a minute without a new line).
    With `capture`, stdout is returned instead of logged (stderr still goes to the log).
    """
    with log_path.open("a") as log:
        log.write(f"$ (cd {cwd} && {' '.join(argv)})\n")
        log.flush()
        proc = popen(  # dies with the run that started it
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE if capture else log,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stderr is not None
        stderr = proc.stderr
        lines: list[str] = []

        def drain() -> None:
            for line in stderr:
                lines.append(line.rstrip())
                log.write(line)
                log.flush()

        reader = threading.Thread(target=drain, name=f"go-{phase}-output", daemon=True)
        reader.start()
        stdout = ""
        while True:
            try:
                if capture:
                    stdout, _ = proc.communicate(timeout=10.0)
                else:
                    proc.wait(timeout=10.0)
                break
            except subprocess.TimeoutExpired:
                latest = lines[-1].strip()[:90] if lines else "(no output yet)"
                progress(
                    f"[{time.monotonic() - started:5.0f}s] go {argv[1]} ({phase}): "
                    f"{len(lines)} packages/modules so far; latest: {latest}"
                )
        reader.join()
    if proc.returncode != 0:
        detail = "\n".join(lines[-30:])
        raise GoBuildError(
            f"`{' '.join(argv)}` failed ({proc.returncode}) in {cwd}:\n{detail}\n(full log: {log_path})"
        )
    return stdout


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    names = ", ".join(sorted(set(TOOLS) | set(TOOLSETS)))
    parser.add_argument("names", nargs="+", help=f"tools or tool sets: {names}")
    args = parser.parse_args(argv)
    try:
        for name in args.names:
            print(ensure_tool(name))
    except GoBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
