"""GET /metrics: real /act and /feedback requests and a real trainer, read back from the Prometheus text
with prometheus_client's parser. The counters are process-wide, so each test asserts the exact increase
between a scrape before and one after what it does."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.learning.trainer import Trainer
from service.metrics import LOSS_COMPONENTS, record_losses
from service.metrics_exposition import render, start_server
from service.quickstart import free_port
from service.settings import Settings
from service.store.db import make_engine, make_session_factory
from service.store.models import utcnow
from tests.service.conftest import admin_headers, insert_decisions, make_settings, wait_for
from tests.service.metrics_text import delta, parse, value

STATE = [0.1, -0.2, 0.3, 0.0]
ROOT = Path(__file__).resolve().parents[2]


def scrape(client: TestClient) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def test_act_and_feedback_are_counted_by_version_route_and_outcome(trained: Settings) -> None:
    # role api: no trainer thread, so nothing but these requests moves the counters asserted on.
    settings = trained.model_copy(update={"role": "api", "epsilon": 0.5})
    with TestClient(create_app(settings)) as client:
        before = scrape(client)
        served = [client.post("/act", json={"state": STATE}).json() for _ in range(6)]
        events = [s["event_id"] for s in served]
        for event, reward in zip(events[:4], (1.0, 0.0, 0.5, 2.0), strict=True):
            assert client.post("/feedback", json={"event_id": event, "reward": reward}).status_code == 200
        assert client.post("/feedback", json={"event_id": events[0], "reward": 1.0}).json()["status"] == (
            "duplicate"
        )
        assert client.post("/feedback", json={"event_id": events[1], "reward": 9.0}).status_code == 409
        assert client.post("/feedback", json={"event_id": "no-such-event", "reward": 1.0}).status_code == 404
        after = scrape(client)

    n_explored = sum(s["explored"] for s in served)
    assert {s["model_version"] for s in served} == {1}
    assert delta(before, after, "dqfd_decisions_total", model_version="1") == 6
    assert delta(before, after, "dqfd_explored_decisions_total", model_version="1") == n_explored
    assert delta(before, after, "dqfd_decision_propensity_count") == 6
    assert delta(before, after, "dqfd_decision_propensity_sum") == pytest.approx(
        sum(s["propensity"] for s in served)
    )
    greedy = sum(s["propensity"] > 0.5 for s in served)  # 1 − ε + ε/5 = 0.6 vs ε/5 = 0.1
    assert delta(before, after, "dqfd_decision_propensity_bucket", le="0.5") == 6 - greedy
    for outcome, n in (("stored", 4), ("duplicate", 1), ("conflict", 1), ("unknown_event", 1)):
        assert delta(before, after, "dqfd_feedback_total", outcome=outcome) == n, outcome

    def requests(route: str, status: str) -> float:
        return delta(before, after, "dqfd_http_requests_total", method="POST", route=route, status=status)

    assert requests("/act", "200") == 6
    assert requests("/feedback", "200") == 5
    assert requests("/feedback", "409") == 1
    assert requests("/feedback", "404") == 1
    duration = "dqfd_http_request_duration_seconds_count"
    assert delta(before, after, duration, method="POST", route="/act", status="200") == 6
    assert value(after, "dqfd_served_model_version") == 1
    # Read by the model poller at start (the trained fixture's pretrain job), not by the scrape.
    assert value(after, "dqfd_jobs", state="succeeded") == 1
    assert value(after, "dqfd_jobs", state="queued") == 0


def test_route_templates_not_raw_paths_and_503_reasons(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"auto_pretrain": False, "role": "api"}))
    with TestClient(app) as client:
        before = scrape(client)
        assert client.post("/act", json={"state": STATE}).status_code == 503  # no model yet
        for job_id in (7, 8, 9):
            assert client.get(f"/admin/jobs/{job_id}", headers=admin_headers()).status_code == 404
        assert client.get("/no/such/page").status_code == 404
        big = {"content-length": str(settings.max_body_bytes + 1), "content-type": "application/json"}
        assert client.post("/act", content=b"{}", headers=big).status_code == 413
        after = scrape(client)
    assert delta(before, after, "dqfd_unavailable_responses_total", reason="no_model") == 1
    assert delta(before, after, "dqfd_http_requests_total", method="POST", route="/act", status="503") == 1
    jobs = {"method": "GET", "route": "/admin/jobs/{job_id}", "status": "404"}
    assert delta(before, after, "dqfd_http_requests_total", **jobs) == 3
    assert not any("/admin/jobs/7" in dict(labels).get("route", "") for _, labels in after)
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert delta(before, after, "dqfd_http_requests_total", **unmatched) == 1
    # Refused by Content-Length before routing, still under its route's template.
    assert delta(before, after, "dqfd_http_requests_total", method="POST", route="/act", status="413") == 1
    assert value(after, "dqfd_served_model_version") == 0


def test_trainer_updates_rewards_lag_losses_and_replay(trained: Settings) -> None:
    settings = trained.model_copy(
        update={"role": "api", "default_reward": -0.5, "reward_window_s": 60.0, "updates_per_transition": 2}
    )
    with TestClient(create_app(settings)) as client:
        events = [client.post("/act", json={"state": STATE}).json()["event_id"] for _ in range(3)]
        for event, reward in zip(events, (1.0, 0.25, 2.0), strict=True):
            assert client.post("/feedback", json={"event_id": event, "reward": reward}).status_code == 200
    engine = make_engine(settings.database_url)
    try:
        # Two decisions whose window closed 98 s ago without feedback: the default reward, ready since then.
        insert_decisions(engine, 2, created_at=utcnow() - timedelta(seconds=160))
        trainer = Trainer(settings, engine, make_session_factory(engine))
        trainer.sync_active_version()
        updates_before = int(trainer.agent.n_updates)
        before = parse(render().decode())
        learned = trainer.learn_online()
        after = parse(render().decode())
    finally:
        engine.dispose()
    assert learned == 10  # 5 transitions × 2 updates
    assert (
        delta(before, after, "dqfd_trainer_updates_total") == trainer.agent.n_updates - updates_before == 10
    )
    assert delta(before, after, "dqfd_trainer_skipped_updates_total") == 0
    assert delta(before, after, "dqfd_trainer_transitions_total") == 5
    assert delta(before, after, "dqfd_decision_reward_count", model_version="1") == 5
    assert delta(before, after, "dqfd_decision_reward_sum", model_version="1") == pytest.approx(2.25)
    assert delta(before, after, "dqfd_default_rewards_total", model_version="1") == 2
    # Feedback-rewarded ones were ready seconds ago; the default-rewarded ones about 98 s ago.
    assert delta(before, after, "dqfd_trainer_lag_seconds_bucket", le="60.0") == 3
    assert delta(before, after, "dqfd_trainer_lag_seconds_bucket", le="300.0") == 5
    assert delta(before, after, "dqfd_trainer_lag_seconds_count") == 5
    for component in LOSS_COMPONENTS:
        assert value(after, "dqfd_trainer_loss", component=component) == pytest.approx(
            trainer.last_losses[component]
        )
    assert value(after, "dqfd_trainer_replay_transitions", part="demonstrations") == trainer.demo_size > 0
    assert (
        value(after, "dqfd_trainer_replay_transitions", part="live") == trainer.online_loop.live_buffer == 5
    )
    assert value(after, "dqfd_trainer_model_version") == 1


def test_a_skipped_update_is_counted_apart_and_keeps_the_last_losses() -> None:
    before = parse(render().decode())
    record_losses({"loss": 2.0, "j_dq": 1.0, "j_n": 0.5, "j_e": 0.5, "j_l2": 0.0, "skipped": 0.0})
    record_losses({"loss": float("nan"), "j_dq": float("nan"), "skipped": 1.0})
    after = parse(render().decode())
    assert delta(before, after, "dqfd_trainer_updates_total") == 1
    assert delta(before, after, "dqfd_trainer_skipped_updates_total") == 1
    assert value(after, "dqfd_trainer_loss", component="loss") == 2.0


def test_a_metrics_token_is_required_when_set_and_metrics_stay_out_of_openapi(tmp_path: Path) -> None:
    # No lifespan (and so no database) is needed: a scrape reads memory only.
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'absent.db'}", metrics_token="scrape-secret"))
    client = TestClient(app)
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert ok.status_code == 200 and "dqfd_http_requests_total" in ok.text
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    open_app = TestClient(create_app(make_settings(f"sqlite:///{tmp_path / 'absent.db'}", metrics_token="")))
    assert open_app.get("/metrics").status_code == 200  # a blank token (compose's default) is no token


def test_the_worker_metrics_server_answers_scrapes_with_its_token() -> None:
    server = start_server("127.0.0.1", 0, "worker-secret")
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert httpx.get(f"{url}/metrics").status_code == 401
        ok = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer worker-secret"})
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "dqfd_trainer_updates_total" in ok.text
        assert httpx.get(f"{url}/other").status_code == 404
    finally:
        server.shutdown()
        server.server_close()


WRITER = """
from service.metrics import DECISIONS, JOBS, SERVED_VERSION
DECISIONS.labels("3").inc({n})
SERVED_VERSION.set({version})
JOBS.labels("queued").set({queued})
"""

SCRAPER = """
from fastapi.testclient import TestClient
from service.api.app import create_app
from service.settings import Settings
app = create_app(Settings(_env_file=None, database_url="sqlite:///{db}"))
print(TestClient(app).get("/metrics").text)
"""


def test_multiprocess_mode_sums_the_processes_counters(tmp_path: Path) -> None:
    folder = tmp_path / "prometheus-multiproc"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(ROOT)}

    def run(code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    run(WRITER.format(n=3, version=4, queued=1))
    run(WRITER.format(n=4, version=5, queued=2))
    samples = parse(run(SCRAPER.format(db=tmp_path / "absent.db")))
    assert value(samples, "dqfd_decisions_total", model_version="3") == 7  # 3 + 4, two processes
    # One series per process: the writers (exited without marking themselves dead, so still listed)
    # and the scraping process, which serves nothing (0).
    versions = {
        dict(labels)["pid"]: v for (name, labels), v in samples.items() if name == "dqfd_served_model_version"
    }
    assert sorted(versions.values()) == [0.0, 4.0, 5.0] and len(versions) == 3
    assert value(samples, "dqfd_jobs", state="queued") == 2  # the most recent write wins


def test_the_worker_process_serves_its_trainer_metrics_on_its_port(trained: Settings, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": trained.database_url,
        "DQFD_STATE_DIM": "4",
        "DQFD_HIDDEN_SIZES": "[16]",
        "DQFD_BATCH_SIZE": "8",
        "DQFD_N_STEP": "3",
        "DQFD_TRAINER_POLL_S": "0.1",
        "DQFD_METRICS_PORT": str(port),
        "DQFD_METRICS_TOKEN": "worker-secret",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "service", "worker", "--no-migrate"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:

        def following_version_1() -> dict | None:
            assert worker.poll() is None, log.read_text()
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer worker-secret"}
                )
            except httpx.TransportError:
                return None
            samples = parse(response.text)
            return samples if value(samples, "dqfd_trainer_model_version") == 1 else None

        samples = wait_for(following_version_1, timeout=60, interval=0.2)
        assert value(samples, "dqfd_jobs", state="succeeded") == 1  # read by its job loop: no poller here
        assert value(samples, "dqfd_trainer_replay_transitions", part="demonstrations") > 0
    finally:
        worker.terminate()
        worker.wait(30)
