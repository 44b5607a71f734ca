"""Nothing learned online is lost: ``POST /admin/save`` saves the trainer's weights as a version now, and
a graceful stop (the API's lifespan, the worker's SIGTERM or Ctrl-C) saves the online updates made since
the last save. The trained fixture's model has 30 pretraining updates; each live transition adds one."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select

from agent.inference import NumpyQNetwork
from service.api.app import create_app
from service.settings import Settings
from service.store.db import make_engine
from service.store.models import Feedback, LiveTransition, ModelVersion
from tests.service.conftest import admin_headers, insert_decisions, wait_for

PRETRAIN_UPDATES = 30  # conftest's pretrain_model
PROBE = np.array([[0.1, 0.2, 0.3, 0.4], [-0.5, 0.0, 0.5, 1.0]], dtype=np.float32)
ROOT = Path(__file__).resolve().parents[2]


def _learn(client: TestClient, n: int, prefix: str = "s") -> None:
    """``n`` terminal decisions with feedback, then wait until the trainer learned from all of them."""
    trainer = client.app.state.service.trainer
    start = trainer.transitions_seen
    rng = np.random.default_rng(0)
    for i in range(n):
        state = rng.normal(size=4).round(3).tolist()
        event = client.post("/act", json={"state": state, "session_id": f"{prefix}{i}"}).json()["event_id"]
        assert client.post(
            "/feedback", json={"event_id": event, "reward": float(i % 2), "done": True}
        ).is_success
    wait_for(lambda: trainer.transitions_seen == start + n, timeout=60)


def _versions(settings: Settings) -> list[ModelVersion]:
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(ModelVersion).order_by(ModelVersion.version)))
    finally:
        engine.dispose()


def _q(checkpoint: bytes) -> np.ndarray:
    return NumpyQNetwork.from_checkpoint(io.BytesIO(checkpoint)).q_values(PROBE)


def test_admin_save_stores_the_current_weights_now(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        trainer = client.app.state.service.trainer
        _learn(client, 6)
        assert (
            client.get("/admin/stats", headers=admin_headers()).json()["trainer"]["updates_since_save"] == 6
        )
        reply = client.post("/admin/save", headers=admin_headers())
        assert reply.status_code == 201, reply.text
        saved = reply.json()
        assert (saved["version"], saved["source"], saved["parent_version"]) == (2, "online", 1)
        assert saved["n_updates"] == PRETRAIN_UPDATES + 6 and saved["is_active"]
        expected_q = trainer.agent.numpy_policy().q_values(PROBE)
        assert (
            client.get("/admin/stats", headers=admin_headers()).json()["trainer"]["updates_since_save"] == 0
        )
        # Served at once by this replica (the weights were already published; now under their version).
        assert client.post("/act", json={"state": PROBE[0].tolist()}).json()["model_version"] == 2
        # A second save without updates in between is still a new version of the same weights.
        again = client.post("/admin/save", headers=admin_headers()).json()
        assert (again["version"], again["parent_version"], again["n_updates"]) == (3, 2, PRETRAIN_UPDATES + 6)
        assert client.post("/admin/save").status_code == 401
    stored = {row.version: row for row in _versions(trained)}
    assert [stored[v].is_active for v in (1, 2, 3)] == [False, False, True]
    np.testing.assert_array_equal(_q(stored[2].checkpoint), expected_q)
    np.testing.assert_array_equal(_q(stored[3].checkpoint), expected_q)
    assert not np.array_equal(_q(stored[1].checkpoint), expected_q)  # the online updates changed them


def test_admin_save_says_why_it_cannot(seeded: Settings) -> None:
    # No trainer in an API replica: 409, naming the role.
    with TestClient(create_app(seeded.model_copy(update={"role": "api"}))) as client:
        reply = client.post("/admin/save", headers=admin_headers())
        assert reply.status_code == 409 and "DQFD_ROLE=api" in reply.json()["detail"][0]["msg"]
    # A trainer without a model (no version yet, pretraining not started): 503, retry later.
    with TestClient(create_app(seeded.model_copy(update={"auto_pretrain": False}))) as client:
        reply = client.post("/admin/save", headers=admin_headers())
        assert reply.status_code == 503 and reply.headers["retry-after"]
        assert "no model yet" in reply.json()["detail"][0]["msg"]
    assert _versions(seeded) == []


def test_admin_save_refuses_diverged_weights(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        trainer = client.app.state.service.trainer
        _learn(client, 2)
        trainer.agent._flat.data[0] = float("nan")  # no transition arrives: the loop does not update
        reply = client.post("/admin/save", headers=admin_headers())
        assert reply.status_code == 409 and "diverged" in reply.json()["detail"][0]["msg"]
    # Nor are they saved on stop: version 1 stays the only one.
    assert [(row.version, row.is_active) for row in _versions(trained)] == [(1, True)]


def test_stopping_saves_the_unsaved_online_updates(
    trained: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.learning.saving")
    with TestClient(create_app(trained)) as client:  # save_every_updates=1000: no periodic save
        trainer = client.app.state.service.trainer
        _learn(client, 7)
        assert [row.version for row in _versions(trained)] == [1]
    assert not trainer.alive
    assert trainer.agent.n_updates == PRETRAIN_UPDATES + 7
    versions = _versions(trained)
    assert [(v.version, v.source, v.parent_version, v.is_active) for v in versions] == [
        (1, "pretrain", None, False),
        (2, "online", 1, True),
    ]
    assert versions[1].n_updates == trainer.agent.n_updates
    np.testing.assert_array_equal(_q(versions[1].checkpoint), trainer.agent.numpy_policy().q_values(PROBE))
    assert "saved 7 unsaved online update(s) as model version 2" in caplog.text
    # The restart goes on from there.
    with TestClient(create_app(trained)) as client:
        trainer = client.app.state.service.trainer
        wait_for(lambda: trainer.base_version == 2)
        assert trainer.agent.n_updates == PRETRAIN_UPDATES + 7
        assert client.post("/act", json={"state": PROBE[0].tolist()}).json()["model_version"] == 2
    # Nothing learned in that run: nothing more saved.
    assert [v.version for v in _versions(trained)] == [1, 2]


def _worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DQFD_")}
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "DQFD_STATE_DIM": str(settings.state_dim),
            "DQFD_HIDDEN_SIZES": "[16]",
            "DQFD_TRAINER_POLL_S": "0.05",
            "DQFD_SAVE_EVERY_UPDATES": "1000",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_the_worker_saves_its_unsaved_updates_when_stopped(
    trained: Settings, tmp_path: Path, how: signal.Signals
) -> None:
    engine = make_engine(trained.database_url)
    events = insert_decisions(engine, 5)
    with engine.begin() as conn:
        conn.execute(
            insert(Feedback),
            [{"event_id": e, "dedup_key": "single", "reward": 1.0, "done": True} for e in events],
        )
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "--no-migrate"],
            cwd=tmp_path,
            env=_worker_env(trained),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def learned() -> bool:
            assert worker.poll() is None, log.read_text()
            with engine.connect() as conn:
                return conn.scalar(select(func.count()).select_from(LiveTransition)) == 5

        # The iteration that stored the five transitions learns from them before it checks for a stop.
        wait_for(learned, timeout=90, interval=0.1)
        worker.send_signal(how)
        assert worker.wait(timeout=60) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        engine.dispose()
    versions = _versions(trained)
    assert [(v.version, v.source, v.n_updates, v.is_active) for v in versions] == [
        (1, "pretrain", PRETRAIN_UPDATES, False),
        (2, "online", PRETRAIN_UPDATES + 5, True),
    ]
    assert "saved 5 unsaved online update(s) as model version 2" in log.read_text()
