"""A real Prometheus server (Debian's ``prometheus`` package, installed by scripts/install_test_tools.sh)
scrapes the running service's /metrics with the metrics bearer token, and the test reads the served
decisions back through Prometheus's HTTP API."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from service.quickstart import free_port
from service.settings import Settings
from tests.service.conftest import LiveServer, wait_for
from tests.service.metrics_text import parse, value

PROMETHEUS = "/usr/bin/prometheus"
TOKEN = "scrape-secret"
STATE = [0.1, -0.2, 0.3, 0.0]

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: dqfd
    authorization:
      type: Bearer
      credentials: {token}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def prometheus_binary() -> str:
    """The Prometheus server; skips (fails under CI=true) when it is not installed."""
    path = PROMETHEUS if os.access(PROMETHEUS, os.X_OK) else shutil.which("prometheus")
    if path is None:
        reason = f"Prometheus is not installed ({PROMETHEUS}; scripts/install_test_tools.sh installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A function that starts Prometheus on a free port scraping a given service port; stopped after."""
    binary = prometheus_binary()
    started: list[subprocess.Popen] = []

    def start(service_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(CONFIG.format(token=TOKEN, port=service_port))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("w")
        started.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert started[0].poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=30, interval=0.2)
        return url

    try:
        yield start, tmp_path
    finally:
        for process in started:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def query(url: str, promql: str) -> list[dict]:
    """The result vector of an instant query."""
    body = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_the_service_and_reads_the_decisions_back(trained: Settings, prometheus) -> None:
    start, _ = prometheus
    settings = trained.model_copy(update={"role": "api", "metrics_token": SecretStr(TOKEN)})
    with LiveServer(settings) as server:
        prometheus_url = start(server.port)
        for _ in range(3):
            assert httpx.post(f"{server.url}/act", json={"state": STATE}, timeout=10).status_code == 200
        # The service's own value once the traffic stopped (earlier tests in this process count too).
        own = parse(
            httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).text
        )
        served = value(own, "dqfd_decisions_total", model_version="1")
        assert served >= 3

        def scraped() -> bool:
            result = query(prometheus_url, 'dqfd_decisions_total{job="dqfd",model_version="1"}')
            return bool(result) and float(result[0]["value"][1]) == served

        wait_for(scraped, timeout=30, interval=0.5)
        [up] = query(prometheus_url, 'up{job="dqfd"}')
        assert up["value"][1] == "1"  # scraped with the bearer token (a 401 would make it 0)
        [version] = query(prometheus_url, "dqfd_served_model_version")
        assert version["value"][1] == "1"
