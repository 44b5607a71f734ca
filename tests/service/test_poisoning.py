"""Poisoned data cannot stop the learner: a transition with a non-finite or out-of-range value never
enters the replay (nor blocks the rows after it), a non-finite update is skipped, a restart quarantines
the poisoned rows already stored, and the trainer's problems show on /readyz and /admin/stats.
Feedback is learned in the order it arrives, whatever the number of decisions still waiting."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, update

from service.api.app import create_app
from service.feedback.transitions import build_ready_transitions
from service.ingest.catalogue import load_catalogue
from service.learning import agents
from service.learning.replay import Quarantine, ReplayLoader
from service.settings import Settings
from service.store.db import make_engine, make_session_factory
from service.store.models import Feedback, LiveTransition, LoggedInteraction, utcnow
from tests.service.conftest import STATE_DIM, admin_headers, insert_decisions, pretrain_model, wait_for

pytestmark = pytest.mark.timeout(240)  # a learner that loops fails the test instead of hanging it

NORMAL = [0.1, -0.2, 0.3, 0.05]


def _trainer(client: TestClient) -> dict[str, Any]:
    return client.get("/admin/stats", headers=admin_headers()).json()["trainer"]


def _sessions_with_feedback(client: TestClient, n: int, tag: str) -> None:
    """``n`` two-step sessions, each decision with feedback (the first learns at once: its next state is
    the second decision; the second waits for its window, so is not counted on)."""
    for i in range(n):
        session = f"{tag}-{i}"
        first = client.post("/act", json={"state": NORMAL, "session_id": session})
        assert first.status_code == 200, first.text
        assert all(math.isfinite(item["score"]) for item in first.json()["ranking"])
        second = client.post("/act", json={"state": NORMAL[::-1], "session_id": session})
        assert second.status_code == 200, second.text
        for event in (first.json()["event_id"], second.json()["event_id"]):
            answer = client.post("/feedback", json={"event_id": event, "reward": 1.0})
            assert answer.status_code == 200, answer.text


def _weights_finite(client: TestClient) -> bool:
    agent = client.app.state.service.trainer.agent  # type: ignore[attr-defined]
    return all(bool(np.isfinite(p.detach().numpy()).all()) for p in agent.online.parameters())


def test_the_reported_attack_is_quarantined_and_learning_goes_on_across_a_restart(trained: Settings) -> None:
    # Bounds raised so far that the API lets the attack in (as a deployment before the bounds would).
    # Ten updates per transition: the poisoned row, at the top priority, is drawn within them.
    lax = trained.model_copy(
        update={"max_abs_state": 1e39, "max_abs_reward": math.inf, "updates_per_transition": 10}
    )
    with TestClient(create_app(lax)) as client:
        wait_for(lambda: _trainer(client)["model_version"] is not None)
        # The reported attack: a state of 3e38 everywhere (finite as float32), and a reward of 1e308.
        big = client.post("/act", json={"state": [3e38] * STATE_DIM}).json()["event_id"]
        assert client.post("/feedback", json={"event_id": big, "reward": 1.0}).status_code == 200
        huge = client.post("/act", json={"state": NORMAL}).json()["event_id"]
        assert client.post("/feedback", json={"event_id": huge, "reward": 1e308}).status_code == 200
        _sessions_with_feedback(client, 20, "before")
        # The reward row is refused on the way in; the state row is drawn, its update skipped, and
        # the row quarantined in the replay. The 20 normal transitions are learned all the same.
        stats = wait_for(
            lambda: (
                (s := _trainer(client))["live_transitions_learned"] >= 21 and s["quarantined_rows"] >= 2 and s
            )
        )
        assert stats["n_skipped_updates"] >= 1
        assert stats["n_updates"] > 0 and not stats["diverged"]
        assert _weights_finite(client)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["problems"] == []
        scores = client.post("/act", json={"state": NORMAL}).json()["ranking"]
        assert all(math.isfinite(item["score"]) for item in scores)

    # Restart on the same database, with the default bounds: the stored poisoned rows are refused on
    # load (not replayed forever), and every new feedback is learned.
    with TestClient(create_app(trained)) as client:
        wait_for(lambda: _trainer(client)["model_version"] is not None)
        before = _trainer(client)
        assert before["quarantined_rows"] >= 2  # both poisoned rows refused on load
        _sessions_with_feedback(client, 30, "after")
        stats = wait_for(lambda: (s := _trainer(client))["live_transitions_learned"] >= 30 and s)
        assert stats["n_updates"] > before["n_updates"]
        assert _weights_finite(client)
        scores = client.post("/act", json={"state": NORMAL}).json()["ranking"]
        assert all(math.isfinite(item["score"]) for item in scores)


def _insert_live(engine: Any, state: list[float], reward: float) -> int:
    """A live transition stored straight to the database (as an old deployment did); returns its id."""
    [event] = insert_decisions(engine, 1, built=True, state=state)
    raw = np.asarray(state, dtype="<f4").tobytes()
    with engine.begin() as conn:
        conn.execute(
            insert(LiveTransition),
            [
                {
                    "event_id": event,
                    "state": raw,
                    "action_index": 0,
                    "reward": reward,
                    "next_state": None,
                    "done": True,
                    "truncated": False,
                    "default_reward_used": False,
                    "created_at": utcnow(),
                }
            ],
        )
        return int(conn.scalar(select(LiveTransition.id).where(LiveTransition.event_id == event)))


def test_stored_poisoned_rows_do_not_block_the_rows_after_them(trained: Settings) -> None:
    engine = make_engine(trained.database_url)
    try:
        _insert_live(engine, [float("nan")] * STATE_DIM, 1.0)
        _insert_live(engine, NORMAL, 1e308)
        _insert_live(engine, [float("inf"), *NORMAL[1:]], 0.0)
        good = [_insert_live(engine, NORMAL, 0.5) for _ in range(3)]
    finally:
        engine.dispose()
    with TestClient(create_app(trained)) as client:
        stats = wait_for(lambda: (s := _trainer(client))["model_version"] is not None and s)
        assert stats["quarantined_rows"] == 3
        assert stats["live_buffer"] == len(good)
        _sessions_with_feedback(client, 5, "new")
        stats = wait_for(lambda: (s := _trainer(client))["live_transitions_learned"] >= 5 and s)
        assert stats["n_updates"] > 0 and not stats["diverged"]
        assert _weights_finite(client)


def test_a_diverged_learner_is_reported_without_failing_readiness(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        wait_for(lambda: _trainer(client)["model_version"] is not None)
        agent = client.app.state.service.trainer.agent  # type: ignore[attr-defined]
        agent.consecutive_skipped_updates = agent.config.diverged_after_skipped_updates  # seeded
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        [problem] = ready.json()["problems"]
        assert problem.startswith("trainer diverged: ")
        stats = _trainer(client)
        assert stats["diverged"] is True and stats["problems"] == [problem]


def test_feedback_is_learned_whatever_the_number_of_decisions_waiting(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    try:
        insert_decisions(engine, 1100)  # waiting for feedback, window open
        newer = insert_decisions(engine, 5)
        with engine.begin() as conn:
            conn.execute(
                insert(Feedback),
                [
                    {"event_id": e, "dedup_key": "k", "reward": 2.0, "done": False, "created_at": utcnow()}
                    for e in newer
                ],
            )
        with make_session_factory(engine)() as session:
            rows = build_ready_transitions(
                session,
                reward_window_s=settings.reward_window_s,
                default_reward=settings.default_reward,
                aggregation=settings.aggregation,
            )
            assert [row.event_id for row in rows] == newer  # in the order the feedback arrived
            assert all(row.reward == 2.0 for row in rows)
    finally:
        engine.dispose()


def test_a_catch_up_after_a_retrain_passes_a_poisoned_row(trained: Settings) -> None:
    engine = make_engine(trained.database_url)
    try:
        ids = [_insert_live(engine, NORMAL, 0.5), _insert_live(engine, NORMAL, 1e308)]
        ids.append(_insert_live(engine, NORMAL, -0.5))
        sessions = make_session_factory(engine)
        with sessions() as session:
            catalogue = load_catalogue(session)
        agent = agents.new_agent(trained, catalogue.n_actions)
        quarantine = Quarantine()
        observed, last_id = ReplayLoader(trained, engine, sessions).observe_live_after(
            agent, catalogue, 0, quarantine
        )
        # The poisoned row is counted and passed: the cursor moves beyond it and the row after it is learned.
        assert (observed, last_id, quarantine.count, agent.n_agent_transitions) == (2, ids[-1], 1, 2)
    finally:
        engine.dispose()


def test_poisoned_demonstrations_are_left_out_of_pretraining_and_the_replay(seeded: Settings) -> None:
    engine = make_engine(seeded.database_url)
    try:
        with engine.begin() as conn:
            first, sixth = conn.scalars(
                select(LoggedInteraction.id).order_by(LoggedInteraction.id).limit(6)
            ).all()[::5]
            conn.execute(update(LoggedInteraction).where(LoggedInteraction.id == first).values(reward=1e308))
            nan_state = np.full(STATE_DIM, np.nan, dtype="<f4").tobytes()
            conn.execute(
                update(LoggedInteraction).where(LoggedInteraction.id == sixth).values(state=nan_state)
            )
            n_rows = conn.scalar(select(func.count()).select_from(LoggedInteraction))
    finally:
        engine.dispose()
    assert pretrain_model(seeded) == 1  # the job succeeds without the two rows
    with TestClient(create_app(seeded)) as client:
        stats = wait_for(lambda: (s := _trainer(client))["model_version"] is not None and s)
        assert stats["demonstration_buffer"] == n_rows - 2
        assert stats["quarantined_rows"] == 2
        assert _weights_finite(client)
