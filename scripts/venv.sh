#!/usr/bin/env bash
# Creates .venv and installs kvs2 with its dev extras, once per pyproject.toml content.
# Why a stamp: `make test` calls this every time; a warm machine must not re-resolve pip each run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.kvs2-stamp
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "==> preparing .venv (python packages from PyPI)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --disable-pip-version-check -q --upgrade pip
.venv/bin/python -m pip install --disable-pip-version-check -q -e '.[dev]'
echo "$want" > "$stamp"
echo "==> .venv ready" >&2
