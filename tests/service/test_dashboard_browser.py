"""The dashboard in a real browser: headless Chromium (Debian's package, through Selenium and the system
ChromeDriver; nothing is downloaded) opens the page of a running service, the token is typed in, and
the charts must hold the served numbers and show them (pixels of the series' colour on the canvas).

Without Chromium, ChromeDriver or Selenium the test is skipped with the reason, except under
``CI=true`` where that is a failure (scripts/install_test_tools.sh installs them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from service.settings import Settings
from tests.service.conftest import LiveServer, wait_for

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_PATH", "/usr/bin/chromedriver")
VIEWER_TOKEN = "viewer-token-for-the-browser"
STATE = [0.1, -0.2, 0.3, 0.0]
SESSIONS, STEPS = 6, 5
REWARD_SERIES_RGB = (30, 136, 229)  # COLORS[0] of dashboard.js: the first version's line and points


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the browser test needs {reason} under CI (scripts/install_test_tools.sh)")
    pytest.skip(f"no browser: {reason} (bash scripts/install_test_tools.sh installs it)")


def chrome_driver(width: int = 1400, height: int = 1700) -> Any:
    """Headless system Chromium through the system ChromeDriver (skips or fails when missing)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("the selenium package (pip install -e '.[dev]')")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            _missing(f"{path}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def send_traffic(base_url: str) -> None:
    """SESSIONS sessions of STEPS decisions; reward i % 2 for the i-th decision, done on each last step."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for i in range(SESSIONS * STEPS):
            act = client.post("/act", json={"state": STATE, "session_id": f"user-{i // STEPS}"})
            assert act.status_code == 200, act.text
            done = i % STEPS == STEPS - 1
            reward = {"event_id": act.json()["event_id"], "reward": float(i % 2), "done": done}
            assert client.post("/feedback", json=reward).status_code == 200


READ_CHARTS = """
const d = window.dashboard;
const charts = {};
for (const [name, chart] of Object.entries(d.charts)) {
  const ctx = chart.ctx;
  const pixels = ctx.getImageData(0, 0, ctx.canvas.width, ctx.canvas.height).data;
  let ink = 0, series = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i + 3] > 0) ink++;
    if (Math.abs(pixels[i] - arguments[0][0]) < 12 && Math.abs(pixels[i + 1] - arguments[0][1]) < 12
        && Math.abs(pixels[i + 2] - arguments[0][2]) < 12 && pixels[i + 3] > 200) series++;
  }
  charts[name] = {data: chart.data, labels: chart.series.map((s) => s.label), ink: ink, series_px: series};
}
const rows = (id) => Array.from(document.querySelectorAll('#' + id + ' tbody tr'))
  .map((tr) => Array.from(tr.children).map((td) => td.textContent));
return {data: d.data, charts: charts, tables: {per_version: rows('per-version'), models: rows('models'),
        activations: rows('activations')}};
"""


def test_dashboard_renders_the_served_data(trained: Settings, tmp_path: Path) -> None:
    settings = trained.model_copy(update={"viewer_token": SecretStr(VIEWER_TOKEN)})
    driver = chrome_driver()
    try:
        with LiveServer(settings) as server:
            send_traffic(server.url)
            trainer = server.app.state.service.trainer
            # The online loop learned from the transitions (at least two history points: a rate).
            wait_for(
                lambda: trainer.history.updates_total >= 1 and len(trainer.history.series()["time"]) >= 2
            )
            headers = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
            api = httpx.get(f"{server.url}/dashboard/data?minutes=5&buckets=10", headers=headers).json()

            driver.get(f"{server.url}/dashboard?minutes=5&buckets=10")
            driver.find_element("id", "token").send_keys(VIEWER_TOKEN)
            driver.find_element("id", "connect").click()
            wait_for(lambda: driver.execute_script("return window.dashboard.renderedAt"), timeout=30)
            page = driver.execute_script(READ_CHARTS, list(REWARD_SERIES_RGB))
            screenshot = tmp_path / "dashboard.png"
            driver.save_screenshot(str(screenshot))
            print(f"dashboard screenshot: {screenshot}")
            token_kept = driver.execute_script("return sessionStorage.getItem('dqfd-dashboard-token')")
    finally:
        driver.quit()

    data, charts = page["data"], page["charts"]
    # The served numbers, hand-computed: 30 decisions of version 1, rewards 0,1,0,1,…: 0.5 a decision;
    # sessions of 5 alternate returns 2 and 3: 2.5 a session. The page got what the API serves.
    expected = {
        "decisions": 30,
        "rewarded": 30,
        "reward_per_decision": 0.5,
        "sessions": 6,
        "return_per_session": 2.5,
    }
    assert {k: v for k, v in data["per_version"]["1"].items() if k != "explored"} == expected
    assert data["per_version"] == api["per_version"]
    assert data["baseline"] == api["baseline"] and data["models"] == api["models"]
    assert sum(data["decisions"]) == 30
    # Each chart holds exactly the served series (uPlot's data: x, then one column per series).
    mids = [s + data["window"]["bucket_s"] / 2 for s in data["window"]["bucket_starts"]]
    assert charts["reward"]["data"][0] == pytest.approx(mids)
    assert charts["reward"]["data"][1] == data["reward_per_decision"]["1"]
    assert charts["reward"]["data"][2] == [data["baseline"]["reward_per_step"]] * 10
    assert charts["reward"]["labels"][1:] == ["v1", "logs (per step)"]
    assert charts["session"]["data"][1] == data["return_per_session"]["1"]
    assert charts["rate"]["data"][1] == data["decisions_per_s"]
    assert sum(v * data["window"]["bucket_s"] for v in charts["rate"]["data"][1]) == pytest.approx(30)
    assert charts["explore"]["data"][1] == data["exploration_share"]
    rates = [v for v in charts["updates"]["data"][1] if v is not None]
    assert rates and max(rates) > 0
    assert "loss" in charts["losses"]["labels"]
    # Drawn, not only loaded: the first version's colour is on the reward and session canvases.
    for name in ("reward", "session", "rate"):
        assert charts[name]["ink"] > 0
    assert charts["reward"]["series_px"] > 0 and charts["session"]["series_px"] > 0
    assert page["tables"]["per_version"] == [
        ["1", "30", str(data["per_version"]["1"]["explored"]), "0.500", "6", "2.50"]
    ]
    assert page["tables"]["activations"][0][1:] == ["1", "pretrain"]
    assert page["tables"]["models"][0][-1] == "–"  # off-policy estimate: none yet
    assert token_kept == VIEWER_TOKEN
