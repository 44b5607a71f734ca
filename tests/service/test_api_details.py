"""Details a newcomer meets first: optional bodies, where a bad field was, what a revision counts."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.cli import main
from service.quickstart import free_port
from service.settings import Settings
from tests.service.conftest import STATE, admin_headers, wait_for


def test_retrain_needs_no_body(trained: Settings) -> None:
    """Every field of the retrain request has a default, so the body may be left out."""
    with TestClient(create_app(trained)) as client:
        response = client.post("/admin/retrain", headers=admin_headers())
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["kind"] == "retrain"
        assert job["params"] == {"steps": trained.pretrain_steps, "activate": False, "replay_updates": 0}
        done = wait_for(
            lambda: (
                (j := client.get(f"/admin/jobs/{job['id']}", headers=admin_headers()).json())["status"]
                in ("succeeded", "failed")
                and j
            )
        )
        assert done["status"] == "succeeded", done


def test_malformed_json_names_the_body_not_a_character_offset(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        response = client.post(
            "/act", content=b'{"state": [0.1,, 0.2]}', headers={"content-type": "application/json"}
        )
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["field"] == "body" and detail["loc"] == ["body"]
    assert detail["msg"].startswith("the request body is not valid JSON (")
    assert "at character 15" in detail["msg"]


def test_path_parameters_are_reported_as_path_parameters(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        missing = client.get("/admin/jobs/999", headers=admin_headers())
        assert missing.status_code == 404
        assert missing.json()["detail"][0]["loc"] == ["path", "job_id"]
        assert missing.json()["detail"][0]["field"] == "job_id"
        unknown = client.post("/admin/models/77/activate", headers=admin_headers())
        assert unknown.status_code == 404 and unknown.json()["detail"][0]["loc"] == ["path", "version"]
        malformed = client.get("/admin/jobs/abc", headers=admin_headers())
        assert malformed.status_code == 422
        assert malformed.json()["detail"][0]["loc"] == ["path", "job_id"]
        assert malformed.json()["detail"][0]["field"] == "job_id"
        item = client.post("/admin/items/nope/active", params={"active": False}, headers=admin_headers())
        assert item.status_code == 404 and item.json()["detail"][0]["loc"] == ["path", "item_id"]


def test_policy_revision_counts_online_updates_only(trained: Settings) -> None:
    """A freshly pretrained version serves with revision 0 (its 30 pretraining updates are not
    online updates); revisions grow once the trainer learns from live feedback."""
    live = trained.model_copy(update={"publish_every_updates": 1, "publish_every_s": 0.05})
    with TestClient(create_app(live)) as client:
        first = client.post("/act", json={"state": STATE, "explore": False, "session_id": "s"}).json()
        assert first["model_version"] == 1 and first["policy_revision"] == 0
        for _ in range(12):  # decisions with feedback in one session: ready transitions for the learner
            act = client.post("/act", json={"state": STATE, "session_id": "s"}).json()
            assert (
                client.post("/feedback", json={"event_id": act["event_id"], "reward": 1.0}).status_code == 200
            )
        revision = wait_for(
            lambda: client.post("/act", json={"state": STATE, "explore": False}).json()["policy_revision"],
            timeout=30,
        )
        assert 0 < revision <= 12 * live.updates_per_transition + 1


def test_quickstart_check_honours_port(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [k for k in os.environ if k.startswith("DQFD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DQFD_PRETRAIN_STEPS", "10")
    monkeypatch.setenv("DQFD_HIDDEN_SIZES", "[16]")
    monkeypatch.setenv("DQFD_BATCH_SIZE", "8")
    port = free_port()
    assert main(["quickstart", "--check", "--sessions", "5", "--port", str(port)]) == 0
    out = capsys.readouterr().out
    assert "check: OK" in out
    assert f"http://127.0.0.1:{port}/act" in out


def test_a_job_progress_bar_does_not_flood_a_log(
    seeded: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """stderr is not a terminal here (as in a container's log): the bar of a 200-step pretrain writes
    its first and last state, not one line per refresh (the loss postfix must not force a redraw)."""
    from service.learning.trainer import Trainer
    from service.store.db import make_engine, make_session_factory

    engine = make_engine(seeded.database_url)
    try:
        Trainer(seeded, engine, make_session_factory(engine)).run_job_now(
            "pretrain", {"steps": 200, "activate": True}, progress=True
        )
    finally:
        engine.dispose()
    err = capsys.readouterr().err
    redraws = [part for part in err.replace("\r", "\n").split("\n") if part.startswith("pretrain (job")]
    assert 1 <= len(redraws) <= 4, redraws
    assert "200/200" in redraws[-1]
