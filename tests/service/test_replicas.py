"""Several API replicas and a separate worker on one database."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.learning.trainer import Trainer
from service.settings import Settings
from service.store.db import make_engine, make_session_factory
from tests.service.conftest import admin_headers, wait_for

STATE = [0.1, -0.2, 0.3, 0.0]


def test_replicas_share_decisions_and_follow_activation_with_a_worker(trained: Settings) -> None:
    api = trained.model_copy(update={"role": "api"})
    engine = make_engine(trained.database_url)
    worker = Trainer(trained.model_copy(update={"role": "worker"}), engine, make_session_factory(engine))
    worker.start()
    try:
        with TestClient(create_app(api)) as a, TestClient(create_app(api)) as b:
            event = a.post("/act", json={"state": STATE, "session_id": "x"}).json()["event_id"]
            assert b.post("/feedback", json={"event_id": event, "reward": 1.0}).json()["status"] == "stored"
            assert (
                a.post("/feedback", json={"event_id": event, "reward": 1.0}).json()["status"] == "duplicate"
            )
            # A retrain queued through replica A is run by the worker process's trainer...
            job = a.post(
                "/admin/retrain", json={"steps": 10, "activate": True}, headers=admin_headers()
            ).json()
            done = wait_for(
                lambda: (
                    (j := b.get(f"/admin/jobs/{job['id']}", headers=admin_headers()).json())["status"]
                    in {"succeeded", "failed"}
                    and j
                ),
                timeout=60,
            )
            assert done["status"] == "succeeded", done["error"]
            # ...and both replicas pick up the newly activated version from the database.
            for replica in (a, b):
                wait_for(lambda r=replica: r.post("/act", json={"state": STATE}).json()["model_version"] == 2)
            a.post("/admin/models/1/activate", headers=admin_headers())
            wait_for(lambda: b.post("/act", json={"state": STATE}).json()["model_version"] == 1)
            wait_for(lambda: worker.base_version == 1)
    finally:
        worker.stop()
        engine.dispose()
