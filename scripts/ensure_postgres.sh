#!/usr/bin/env bash
# Starts the machine's PostgreSQL cluster when it is installed but down. The tests read
# TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test); under CI=true a
# PostgreSQL that still does not answer fails the database tests instead of skipping them.
set -uo pipefail
if command -v pg_isready >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q; then
    exit 0
fi
if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null 2>&1; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "==> starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
        pg_isready -h 127.0.0.1 -p 5432 -q && exit 0
        sleep 1
    done
fi
echo "PostgreSQL is not answering on 127.0.0.1:5432" >&2
exit 1
