#!/usr/bin/env bash
# Installs the system programs that the end-to-end tests drive, from Debian's packages: Chromium and
# ChromeDriver (the dashboard test, tests/service/test_dashboard_browser.py) and Prometheus (the scrape
# test, tests/service/test_prometheus_scrape.py), and Compose 1.29, which validates docker-compose.yml
# without an engine (tests/deployment/test_compose.py). Idempotent: nothing is fetched when all are present.
# Without root or apt-get it only says what is missing; the tests then skip with that reason, except
# under CI=true, where a missing tool is a failure.
set -uo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "==> test tools missing (${missing[*]}): install them with apt-get as root; their tests will skip" >&2
    exit 0
fi
echo "==> installing test tools from Debian's packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/install_test_tools.log 2>&1; then
    apt-get update -q >>/tmp/install_test_tools.log 2>&1
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/install_test_tools.log 2>&1 \
        || echo "==> installing ${missing[*]} failed (see /tmp/install_test_tools.log); their tests will skip" >&2
fi
# Debian's prometheus package starts a system service on :9090; the tests run their own server.
if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus >/dev/null 2>&1 || true; fi
pkill -x prometheus >/dev/null 2>&1 || true
exit 0
