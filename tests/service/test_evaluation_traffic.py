"""``"learn": false`` on /act: evaluation or QA traffic is stored and marked, takes feedback, is counted
apart in /admin/stats, and never becomes a live transition (so never reaches the learner), also inside a
session that mixes it with learning steps."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, text, update

from service.api.app import create_app
from service.feedback.recording import record_feedback
from service.feedback.transitions import WINDOW_GRACE_S, build_ready_transitions, to_transition
from service.settings import Settings
from service.store import migrate
from service.store.db import make_engine, make_session_factory
from service.store.models import Decision, Feedback, LiveTransition, utcnow
from tests.service.conftest import admin_headers, insert_decisions, wait_for

S0, S1, S2, S3 = [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [-0.1, -0.2, -0.3, -0.4], [0.9, 0.0, -0.9, 0.0]


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
            return {row.event_id: (to_transition(row, 5), row.truncated) for row in rows}
    finally:
        engine.dispose()


def _decisions(settings: Settings) -> dict[str, tuple[int, bool, bool]]:
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Decision.event_id, Decision.step, Decision.learn, Decision.transition_built)
            )
            return {event: (step, learn, built) for event, step, learn, built in rows}
    finally:
        engine.dispose()


def test_a_mixed_session_learns_only_from_its_learning_steps(trained: Settings) -> None:
    settings = trained.model_copy(update={"role": "api", "reward_window_s": 60.0})
    with TestClient(create_app(settings)) as client:
        replies = [
            client.post("/act", json={"state": state, "session_id": "mixed", "learn": learn}).json()
            for state, learn in [(S0, True), (S1, False), (S2, True), (S3, False)]
        ]
        assert [r["learn"] for r in replies] == [True, False, True, False]  # echoed
        e0, e1, e2, e3 = (r["event_id"] for r in replies)
        # Feedback is accepted on every step, evaluation steps included.
        for event, reward in [(e0, 1.0), (e1, 2.0), (e2, 0.5), (e3, -1.0)]:
            reply = client.post("/feedback", json={"event_id": event, "reward": reward})
            assert reply.status_code == 200 and reply.json()["status"] == "stored", reply.text
        stats = client.get("/admin/stats", headers=admin_headers()).json()["database"]
    # Stored and marked, numbered as one session; evaluation steps are never pending.
    assert _decisions(settings) == {
        e0: (0, True, False),
        e1: (1, False, True),
        e2: (2, True, False),
        e3: (3, False, True),
    }
    assert stats["decisions"] == 4 and stats["decisions_not_learned"] == 2
    assert stats["pending_decisions"] == 2
    [version] = stats["per_model_version"]
    assert (version["decisions"], version["with_feedback"], version["reward_sum"]) == (4, 4, 2.5)
    assert version["not_learned"] == {
        "decisions": 2,
        "with_feedback": 2,
        "reward_sum": 1.0,
        "reward_rate": 0.5,
    }

    # A learning step's next state is its session's next step, an evaluation step included: where its
    # action led (bootstrapped from, not terminal). The evaluation steps never become transitions.
    built = _build(settings)
    assert set(built) == {e0, e2}
    for event, reward, next_state in [(e0, 1.0, S1), (e2, 0.5, S3)]:
        transition, truncated = built[event]
        np.testing.assert_allclose(transition.next_state, next_state, rtol=1e-6)
        assert transition.reward == reward and not transition.done and not truncated
    later = utcnow() + timedelta(seconds=settings.reward_window_s + WINDOW_GRACE_S + 1)
    assert _build(settings, now=later) == {}
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        assert set(conn.scalars(select(LiveTransition.event_id))) == {e0, e2}
    engine.dispose()


def test_evaluation_feedback_is_summed_and_judged_like_any_other(trained: Settings) -> None:
    settings = trained.model_copy(update={"role": "api", "aggregation": "sum", "reward_window_s": 60.0})
    with TestClient(create_app(settings)) as client:
        event = client.post("/act", json={"state": S0, "learn": False}).json()["event_id"]
        first = client.post("/feedback", json={"event_id": event, "reward": 1.0, "feedback_id": "a"})
        second = client.post("/feedback", json={"event_id": event, "reward": 0.25, "feedback_id": "b"})
        again = client.post("/feedback", json={"event_id": event, "reward": 0.25, "feedback_id": "b"})
    assert (first.json()["status"], first.json()["reward"]) == ("stored", 1.0)
    assert (second.json()["status"], second.json()["reward"]) == ("stored", 1.25)
    assert (again.json()["status"], again.json()["reward"]) == ("duplicate", 1.25)
    # The one-post path (the batch writer's fallback) judges it the same way.
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        result = record_feedback(
            session, event, 0.5, True, aggregation="sum", reward_window_s=60.0, feedback_id="c"
        )
        assert (result.status, result.reward, result.done) == ("stored", 1.75, True)
        assert len(list(session.scalars(select(Feedback).where(Feedback.event_id == event)))) == 3
    engine.dispose()
    later = utcnow() + timedelta(seconds=settings.reward_window_s + WINDOW_GRACE_S + 1)
    assert _build(settings, now=later) == {}


def test_an_unbuilt_evaluation_decision_is_marked_but_never_learned(trained: Settings) -> None:
    """A ``learn`` false decision the API did not write (another writer left it pending) is still never a
    transition: the builder marks it done, feedback or not."""
    engine = make_engine(trained.database_url)
    with_feedback, without, learning = insert_decisions(engine, 3)
    with engine.begin() as conn:
        conn.execute(update(Decision).where(Decision.event_id != learning).values(learn=False))
        conn.execute(
            insert(Feedback).values(event_id=with_feedback, dedup_key="single", reward=1.0, done=True)
        )
        conn.execute(insert(Feedback).values(event_id=learning, dedup_key="single", reward=1.0, done=True))
    later = utcnow() + timedelta(seconds=trained.reward_window_s + WINDOW_GRACE_S + 1)
    assert set(_build(trained, now=later)) == {learning}
    assert {event: built for event, (_, _, built) in _decisions(trained).items()} == {
        with_feedback: True,
        without: True,
        learning: True,
    }
    engine.dispose()


def test_the_learner_never_sees_evaluation_traffic(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        # Evaluation first: were it learned from, it would be learned before the learning step.
        for i in range(5):
            event = client.post("/act", json={"state": S0, "session_id": f"qa{i}", "learn": False}).json()
            reply = client.post(
                "/feedback", json={"event_id": event["event_id"], "reward": 1.0, "done": True}
            )
            assert reply.status_code == 200
        event = client.post("/act", json={"state": S1, "session_id": "user"}).json()["event_id"]
        client.post("/feedback", json={"event_id": event, "reward": 1.0, "done": True})
        trainer = client.app.state.service.trainer
        # Every evaluation feedback was stored before this step's: had any become a transition, it would
        # have been learned no later than this one.
        wait_for(lambda: trainer.transitions_seen >= 1)
        stats = client.get("/admin/stats", headers=admin_headers()).json()
    assert stats["trainer"]["live_transitions_learned"] == 1
    assert stats["database"]["live_transitions"] == 1 and stats["database"]["pending_decisions"] == 0
    assert stats["database"]["decisions_not_learned"] == 5
    engine = make_engine(trained.database_url)
    with engine.connect() as conn:
        assert list(conn.scalars(select(LiveTransition.event_id))) == [event]
    engine.dispose()


def test_learn_must_be_a_json_boolean(trained: Settings) -> None:
    with TestClient(create_app(trained.model_copy(update={"role": "api"}))) as client:
        for bad in ["false", 0, None]:
            reply = client.post("/act", json={"state": S0, "learn": bad})
            assert reply.status_code == 422 and reply.json()["detail"][0]["field"] == "learn", (
                bad,
                reply.text,
            )
        assert client.post("/act", json={"state": S0}).json()["learn"] is True


def test_migration_0003_marks_stored_decisions_as_learned(database_url: str) -> None:
    """Decisions stored before 0003 were all served for learning: the new column fills them with true."""
    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0002")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO decisions (event_id, session_id, step, state, ranking, item_id, "
                    "action_index, propensity, explored, model_version, policy_revision, created_at, "
                    "transition_built) VALUES "
                    "('old', 's', 0, :state, '[]', 'item-0', 0, 1.0, :no, 1, 0, '2026-12-01 09:00:00', :no)"
                ),
                {"state": b"\x00" * 16, "no": False},
            )
        command.upgrade(config, "head")
        with engine.connect() as conn:
            assert conn.execute(select(Decision.event_id, Decision.learn)).all() == [("old", True)]
    finally:
        engine.dispose()
