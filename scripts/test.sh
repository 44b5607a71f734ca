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
# Parallel processes (pytest-xdist): one per CPU, at least 2 and at most 4. Each process has its own
# PostgreSQL database and SQLite files (tests/service/conftest.py) and its servers bind free ports, so the
# tests do not share state. PYTEST_WORKERS=0 runs them in this one process (e.g. with -x or --pdb).
workers=${PYTEST_WORKERS:-$(.venv/bin/python -c 'import os; print(min(4, max(2, len(os.sched_getaffinity(0)))))')}
.venv/bin/python -m pytest -n "$workers" "$@"
