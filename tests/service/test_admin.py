"""The admin API: auth, retrain jobs, model versions, activation (rollback), stats."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update

from service.api.app import create_app
from service.settings import Settings
from service.store.db import make_engine, make_session_factory
from service.store.models import ModelVersion
from tests.service.conftest import admin_headers, wait_for

STATE = [0.1, -0.2, 0.3, 0.0]


def test_admin_needs_a_configured_token(trained: Settings) -> None:
    with TestClient(create_app(trained.model_copy(update={"admin_token": None}))) as client:
        response = client.get("/admin/models", headers=admin_headers())
        assert response.status_code == 403 and "disabled" in response.json()["detail"]
    with TestClient(create_app(trained)) as client:
        assert client.get("/admin/models").status_code == 401
        assert client.get("/admin/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/admin/models", headers={"Authorization": "Basic dGVzdA=="}).status_code == 401
        assert client.get("/admin/models", headers=admin_headers()).status_code == 200


def test_retrain_then_rollback(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        response = client.post(
            "/admin/retrain", json={"steps": 20, "activate": True}, headers=admin_headers()
        )
        assert response.status_code == 202
        job_id = response.json()["id"]
        assert response.json()["status"] == "queued"

        def finished() -> dict | None:
            job = client.get(f"/admin/jobs/{job_id}", headers=admin_headers()).json()
            return job if job["status"] in {"succeeded", "failed"} else None

        job = wait_for(finished, timeout=60)
        assert job["status"] == "succeeded", job["error"]
        assert job["progress"] == 1.0
        assert job["model_version"] == 2
        assert {"loss", "j_dq", "j_n", "j_e"} <= set(job["metrics"])
        assert job["metrics"]["pretrain_steps"] == 20

        wait_for(lambda: client.post("/act", json={"state": STATE}).json()["model_version"] == 2)
        models = client.get("/admin/models", headers=admin_headers()).json()
        assert [(m["version"], m["is_active"], m["source"]) for m in models] == [
            (2, True, "retrain"),
            (1, False, "pretrain"),
        ]
        rollback = client.post("/admin/models/1/activate", headers=admin_headers())
        assert rollback.status_code == 200 and rollback.json()["is_active"]
        assert client.post("/act", json={"state": STATE}).json()["model_version"] == 1
        assert client.post("/admin/models/99/activate", headers=admin_headers()).status_code == 404
        assert client.get("/admin/jobs/999", headers=admin_headers()).status_code == 404
        bad = client.post("/admin/retrain", json={"steps": -1}, headers=admin_headers())
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "steps"
        stats = client.get("/admin/stats", headers=admin_headers()).json()
        assert stats["database"]["active_model_version"] == 1
        assert stats["serving"]["model_version"] == 1
        per_version = {v["model_version"]: v for v in stats["database"]["per_model_version"]}
        assert per_version[2]["decisions"] >= 1
        # The job ran on the trainer's job thread; once it is done the trainer reports no job running.
        trainer = wait_for(
            lambda: (
                (t := client.get("/admin/stats", headers=admin_headers()).json()["trainer"])["job_running"]
                is False
                and t
            )
        )
        assert trainer["job_id"] is None and trainer["running"] and trainer["last_job_error"] is None


def test_stats_reward_rate_per_version(trained: Settings) -> None:
    with TestClient(create_app(trained.model_copy(update={"role": "api"}))) as client:
        events = [client.post("/act", json={"state": STATE}).json()["event_id"] for _ in range(4)]
        for event, reward in zip(events[:3], [1.0, 0.0, 1.0], strict=True):
            client.post("/feedback", json={"event_id": event, "reward": reward})
        stats = client.get("/admin/stats", headers=admin_headers()).json()
    db = stats["database"]
    assert db["decisions"] == 4 and db["feedback"] == 3 and db["events_with_feedback"] == 3
    assert db["logged_interactions"] > 0 and db["items"] == 5
    [v1] = db["per_model_version"]
    assert v1["model_version"] == 1 and v1["decisions"] == 4 and v1["with_feedback"] == 3
    assert v1["reward_rate"] == 2 / 3 and v1["feedback_rate"] == 0.75
    assert stats["trainer"] is None  # role api: no trainer in this process


def test_a_model_that_fails_to_load_keeps_the_old_one(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        trainer = client.app.state.service.trainer
        wait_for(lambda: trainer.base_version == 1)  # the trainer has adopted the model it starts from
        engine = make_engine(trained.database_url)
        with make_session_factory(engine)() as session:
            good = session.get(ModelVersion, 1)
            session.add(
                ModelVersion(
                    source="manual",
                    n_updates=0,
                    state_dim=4,
                    n_actions=5,
                    config={},
                    metrics={},
                    checkpoint=b"not a checkpoint",
                    is_active=False,
                )
            )
            session.commit()
            assert good is not None
        engine.dispose()
        response = client.post("/admin/models/2/activate", headers=admin_headers())
        # Refused: version 1 stays active (tests/service/test_activation.py).
        assert response.status_code == 409
        assert response.json()["detail"][0]["msg"].startswith("model version 2's checkpoint cannot be loaded")
        act = client.post("/act", json={"state": STATE})
        assert act.status_code == 200 and act.json()["model_version"] == 1
        # Made active behind the API's back: this replica and the trainer keep what they have.
        with engine.begin() as conn:
            conn.execute(update(ModelVersion).values(is_active=ModelVersion.version == 2))
        engine.dispose()
        client.app.state.service.poller.refresh()
        stats = client.get("/admin/stats", headers=admin_headers()).json()
        assert "cannot be loaded" in stats["serving"]["last_load_error"]
        assert stats["serving"]["fallback"].endswith("serving version 1, the one served before")
        assert client.post("/act", json={"state": STATE}).json()["model_version"] == 1
        wait_for(lambda: trainer._failed_version == 2)
        assert trainer.base_version == 1  # the trainer keeps learning from the model it has
        assert client.post("/act", json={"state": STATE}).json()["model_version"] == 1
