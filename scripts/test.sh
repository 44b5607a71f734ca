#!/usr/bin/env bash
# Sets up (scripts/setup.sh), installs the browser and Prometheus the end-to-end tests drive
# (scripts/install_test_tools.sh), makes sure PostgreSQL answers, then runs ruff and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_test_tools.sh
bash scripts/ensure_postgres.sh || true
.venv/bin/ruff check .
.venv/bin/ruff format --check . || { echo "ruff format: run .venv/bin/ruff format ." >&2; exit 1; }
.venv/bin/python -m pytest "$@"
