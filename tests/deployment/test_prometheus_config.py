"""deploy/prometheus.yml: valid for Prometheus's own checker, and aimed at the compose file's services."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "prometheus.yml"


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:  # it comes with Debian's prometheus package (scripts/install_test_tools.sh)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool is not installed (scripts/install_test_tools.sh installs prometheus)")
        pytest.skip("promtool is not installed (Debian's prometheus package has it)")
    done = subprocess.run([promtool, "check", "config", str(CONFIG)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_scrapes_the_compose_services_on_their_ports() -> None:
    targets = set(re.findall(r'"([a-z]+:\d+)"', CONFIG.read_text()))
    assert targets == {"api:8000", "worker:8001"}
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "DQFD_METRICS_PORT: 8001" in compose  # the worker serves its metrics where they are scraped
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in compose
    assert "ENV DQFD_HOST=0.0.0.0 DQFD_PORT=8000" in (ROOT / "Dockerfile").read_text()
