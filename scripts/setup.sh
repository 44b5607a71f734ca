#!/usr/bin/env bash
# Creates .venv under the repository and installs the project into it. Idempotent: a second run
# only reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    echo "==> installing into .venv (PyTorch CPU wheel first, then the project)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # The CPU wheel first: pyproject's range is then already satisfied and pip pulls no CUDA build.
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e ".[dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
