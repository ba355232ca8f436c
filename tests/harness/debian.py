"""Install a Debian package the tests or benchmarks need, when its program is missing.

Why here: the project's own scripts must bring what they use onto a fresh machine (CI runs as root on
Debian); a test that needs `redis-cli` installs `redis-tools` through this, once, under a file lock so
that concurrent test runs do not race dpkg. Only Debian's own archive is used (apt-get).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from tests.harness.common import cache_root, progress

_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}
# Wait for another apt/dpkg (another checkout's test run) instead of failing at once.
_APT_OPTIONS = ["-o", "DPkg::Lock::Timeout=600", "-q", "-y"]


class AptUnavailable(RuntimeError):
    """The program is missing and this machine cannot install its package (no apt-get, not root)."""


def ensure_apt(package: str, binary: str) -> Path:
    """The path of `binary`; installs the Debian package `package` first if it is not on PATH."""
    found = shutil.which(binary)
    if found:
        return Path(found)
    apt = shutil.which("apt-get")
    sudo: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise AptUnavailable(
                f"{binary} is missing: install it with `apt-get install {package}` (as root)"
            )
        sudo = ["sudo", "-n"]
    if apt is None:
        raise AptUnavailable(f"{binary} is missing and this machine has no apt-get: install {package}")
    lock = cache_root() / "apt.lock"
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if not shutil.which(binary):  # another process may have installed it while we waited
                _install(sudo, package)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    found = shutil.which(binary)
    if not found:
        raise AptUnavailable(f"installed the Debian package {package}, but {binary} is still not on PATH")
    return Path(found)


def _install(sudo: list[str], package: str) -> None:
    env = {**os.environ, **_APT_ENV}
    install = [*sudo, "apt-get", *_APT_OPTIONS, "install", "--no-install-recommends", package]
    progress(f"installing the Debian package {package} (apt-get install {package})")
    done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # a fresh machine has no package lists yet
        progress("apt-get install failed; running apt-get update and trying again")
        subprocess.run([*sudo, "apt-get", *_APT_OPTIONS, "update"], env=env, capture_output=True, text=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise AptUnavailable(f"apt-get install {package} failed ({done.returncode}):\n{tail}")
    progress(f"installed {package}")
