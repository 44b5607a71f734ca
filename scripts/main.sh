#!/usr/bin/env bash
# The README's main command: from nothing to a pretrained DQfD recommender answering on
# http://127.0.0.1:8000 (SQLite under ./data/, no other service needed).
#
#   bash scripts/main.sh              # set up, create example logs, pretrain, serve (Ctrl-C stops)
#   bash scripts/main.sh --check      # the same, but serve on a free port, do one /act + /feedback, exit
#
# Any other flags go to `python -m service quickstart` (e.g. --pretrain-steps 500 --sessions 300).
# Environment: DATABASE_URL (default sqlite:///data/service.db), DQFD_* settings (docs/service.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DATABASE_URL="${DATABASE_URL:-sqlite:///data/service.db}"
# A modest pretraining budget so a 2-core machine is serving within a minute or two.
export DQFD_PRETRAIN_STEPS="${DQFD_PRETRAIN_STEPS:-3000}"
export DQFD_HIDDEN_SIZES="${DQFD_HIDDEN_SIZES:-[64, 64]}"
export DQFD_TARGET_UPDATE_PERIOD="${DQFD_TARGET_UPDATE_PERIOD:-500}"
export DQFD_LEARNING_RATE="${DQFD_LEARNING_RATE:-0.0005}"
exec .venv/bin/python -m service quickstart "$@"
