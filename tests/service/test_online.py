"""Live transitions from decisions + feedback, and online learning that changes the served model."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.api.app import create_app
from service.feedback.transitions import WINDOW_GRACE_S, build_ready_transitions, to_transition
from service.settings import Settings
from service.store.db import make_engine, make_session_factory
from service.store.features import decode_state
from service.store.models import LiveTransition, ModelVersion, utcnow
from tests.service.conftest import admin_headers, wait_for

S0, S1, S2 = [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [-0.1, -0.2, -0.3, -0.4]


def _build(settings: Settings, **kwargs):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            rows = build_ready_transitions(
                session,
                reward_window_s=settings.reward_window_s,
                default_reward=settings.default_reward,
                aggregation=settings.aggregation,
                **kwargs,
            )
            return [
                (row.event_id, to_transition(row, 5), row.default_reward_used, row.truncated) for row in rows
            ]
    finally:
        engine.dispose()


def test_transitions_use_the_next_decision_and_default_rewards(trained: Settings) -> None:
    settings = trained.model_copy(update={"role": "api", "default_reward": -0.5, "reward_window_s": 60.0})
    with TestClient(create_app(settings)) as client:
        e0 = client.post("/act", json={"state": S0, "session_id": "s"}).json()["event_id"]
        e1 = client.post("/act", json={"state": S1, "session_id": "s"}).json()["event_id"]
        e2 = client.post("/act", json={"state": S2, "session_id": "s"}).json()["event_id"]
        lone = client.post("/act", json={"state": S2}).json()["event_id"]
        assert client.post("/feedback", json={"event_id": e0, "reward": 1.0}).status_code == 200
        assert client.post("/feedback", json={"event_id": lone, "reward": 2.0}).status_code == 200
    built = {event: (t, default, truncated) for event, t, default, truncated in _build(settings)}
    # e0: reward known and the session's next decision gives s'; the lone decision is terminal.
    assert set(built) == {e0, lone}
    t0 = built[e0][0]
    np.testing.assert_allclose(t0.state, S0, rtol=1e-6)
    np.testing.assert_allclose(t0.next_state, S1, rtol=1e-6)
    assert t0.reward == 1.0 and not t0.done
    assert built[lone][0].done and built[lone][0].reward == 2.0
    # After the window: e1 gets the default reward with s' = S2; e2 has no successor → episode end.
    later = utcnow() + timedelta(seconds=settings.reward_window_s + WINDOW_GRACE_S + 1)
    rest = {event: (t, default, truncated) for event, t, default, truncated in _build(settings, now=later)}
    assert set(rest) == {e1, e2}
    t1, default1, _ = rest[e1]
    assert default1 and t1.reward == -0.5
    np.testing.assert_allclose(t1.next_state, S2, rtol=1e-6)
    t2, default2, truncated2 = rest[e2]
    assert default2 and truncated2 and t2.done
    assert _build(settings, now=later) == []  # each decision becomes exactly one transition


def test_sum_aggregation_waits_for_the_window(trained: Settings) -> None:
    settings = trained.model_copy(update={"role": "api", "aggregation": "sum", "reward_window_s": 60.0})
    with TestClient(create_app(settings)) as client:
        event = client.post("/act", json={"state": S0}).json()["event_id"]
        client.post("/feedback", json={"event_id": event, "reward": 1.0})
        client.post("/feedback", json={"event_id": event, "reward": 0.5})
    assert _build(settings) == []
    later = utcnow() + timedelta(seconds=settings.reward_window_s + WINDOW_GRACE_S + 1)
    [(_, t, default, _)] = _build(settings, now=later)
    assert t.reward == 1.5 and not default


def test_feedback_drives_online_updates_and_a_new_model_version(trained: Settings) -> None:
    settings = trained.model_copy(
        update={"updates_per_transition": 2, "save_every_updates": 10, "publish_every_updates": 2}
    )
    with TestClient(create_app(settings)) as client:
        before = client.post("/act", json={"state": S0, "explore": False}).json()
        assert before["model_version"] == 1
        rng = np.random.default_rng(0)
        for i in range(8):
            state = rng.normal(size=4).round(3).tolist()
            event = client.post("/act", json={"state": state, "session_id": f"on{i}"}).json()["event_id"]
            reply = client.post("/feedback", json={"event_id": event, "reward": float(i % 2), "done": True})
            assert reply.status_code == 200

        def served_version() -> int | None:
            version = client.post("/act", json={"state": S0}).json()["model_version"]
            return version if version > 1 else None

        new_version = wait_for(served_version, timeout=60)
        wait_for(
            lambda: client.get("/admin/stats", headers=admin_headers()).json()["trainer"]["live_buffer"] >= 8
        )
        stats = client.get("/admin/stats", headers=admin_headers()).json()
        assert stats["database"]["live_transitions"] >= 8
        assert stats["trainer"]["live_buffer"] >= 8
        assert stats["trainer"]["n_updates"] > 30
        models = client.get("/admin/models", headers=admin_headers()).json()
    by_version = {m["version"]: m for m in models}
    assert by_version[new_version]["source"] == "online"
    assert by_version[new_version]["parent_version"] >= 1
    assert by_version[new_version]["is_active"]
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        assert session.scalar(select(func.count()).select_from(LiveTransition)) >= 8
        stored = session.scalars(select(LiveTransition).order_by(LiveTransition.id)).first()
        assert len(decode_state(stored.state)) == 4
        assert session.scalar(select(func.count()).select_from(ModelVersion)) >= 2
    engine.dispose()


def test_trainer_crash_does_not_stop_serving(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        trainer = client.app.state.service.trainer

        def broken() -> int:
            raise RuntimeError("trainer exploded")

        trainer.learn_online = broken
        wait_for(lambda: trainer.last_error is not None)
        for _ in range(3):
            act = client.post("/act", json={"state": S0, "session_id": "c"})
            assert act.status_code == 200
            assert (
                client.post("/feedback", json={"event_id": act.json()["event_id"], "reward": 1.0}).status_code
                == 200
            )
        stats = client.get("/admin/stats", headers=admin_headers()).json()
        assert "trainer exploded" in stats["trainer"]["last_error"]
        assert client.get("/readyz").status_code == 200


def test_start_without_a_model_pretrains_in_the_background(seeded: Settings) -> None:
    with TestClient(create_app(seeded.model_copy(update={"pretrain_steps": 20}))) as client:
        first = client.post("/act", json={"state": S0})
        if first.status_code == 503:  # the background job may already be done on a fast machine
            assert first.headers["retry-after"]

        def job_done() -> dict | None:
            jobs = client.get("/admin/jobs", headers=admin_headers()).json()
            return jobs[0] if jobs and jobs[0]["status"] in {"succeeded", "failed"} else None

        job = wait_for(job_done, timeout=60)
        assert job["kind"] == "pretrain" and job["status"] == "succeeded", job["error"]
        assert job["params"] == {"steps": 20, "activate": True}
        wait_for(lambda: client.post("/act", json={"state": S0}).status_code == 200)
        assert client.post("/act", json={"state": S0}).json()["model_version"] == job["model_version"]
        assert client.get("/readyz").status_code == 200
