"""The dashboard's numbers: time buckets computed in SQL (hand-computed values on both databases), the
logs' baseline, coverage, the trainer's history, the activation history (migration 0004) and the data
endpoint's authentication."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import insert, select, text

from service.api.app import create_app
from service.errors import InvalidInputError
from service.learning.history import TrainingHistory
from service.settings import Settings
from service.store import migrate, registry
from service.store.db import make_engine, make_session_factory, session_scope
from service.store.features import encode_state
from service.store.models import Decision, Feedback, Item, LoggedInteraction, ModelActivation
from service.store.timeseries import (
    catalogue_coverage,
    decision_series,
    logged_baseline,
    make_window,
    session_series,
)
from tests.service.conftest import admin_headers

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def _decision(
    at_s: float, version: int, *, session: str | None = None, explored: bool = False, item: str = "item-0"
) -> dict:
    return {
        "event_id": uuid.uuid4().hex,
        "session_id": session,
        "step": 0,
        "state": encode_state([0.0]),
        "ranking": [],
        "item_id": item,
        "action_index": 0,
        "propensity": 1.0,
        "explored": explored,
        "model_version": version,
        "policy_revision": 0,
        "created_at": T0 + timedelta(seconds=at_s),
        "transition_built": False,
    }


def _feedback(event_id: str, reward: float, done: bool = False, key: str = "k") -> dict:
    return {"event_id": event_id, "dedup_key": key, "reward": reward, "done": done, "created_at": T0}


@pytest.fixture
def engine(database_url: str):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _insert(engine, decisions: list[dict], feedback: list[dict]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Decision), decisions)
        if feedback:
            conn.execute(insert(Feedback), feedback)


def test_decisions_and_rewards_are_bucketed_in_sql(engine) -> None:
    # Window [T0, T0 + 60 s) in 6 buckets of 10 s.
    d = [
        _decision(1.0, 1),  # bucket 0, reward 1
        _decision(5.5, 1, explored=True),  # bucket 0, reward 0
        _decision(12.25, 2),  # bucket 1, two feedback rows 0.5 + 1.5 = 2
        _decision(59.0, 2, explored=True),  # bucket 5, no feedback
        _decision(60.0, 2),  # at `until`: outside
        _decision(-1.0, 1),  # before `since`: outside
    ]
    f = [
        _feedback(d[0]["event_id"], 1.0),
        _feedback(d[1]["event_id"], 0.0),
        _feedback(d[2]["event_id"], 0.5, key="a"),
        _feedback(d[2]["event_id"], 1.5, key="b"),
        _feedback(d[4]["event_id"], 7.0),
        _feedback(d[5]["event_id"], 7.0),
    ]
    _insert(engine, d, f)
    window = make_window(T0, T0 + timedelta(seconds=60), 6)
    assert window.bucket_s == 10.0
    with make_session_factory(engine)() as session:
        rows = sorted(decision_series(session, window), key=lambda r: (r["bucket"], r["model_version"]))
    assert rows == [
        {"bucket": 0, "model_version": 1, "decisions": 2, "explored": 1, "rewarded": 2, "reward_sum": 1.0},
        {"bucket": 1, "model_version": 2, "decisions": 1, "explored": 0, "rewarded": 1, "reward_sum": 2.0},
        {"bucket": 5, "model_version": 2, "decisions": 1, "explored": 1, "rewarded": 0, "reward_sum": 0.0},
    ]


def test_finished_sessions_count_for_their_first_version(engine) -> None:
    a = [_decision(1.0, 1, session="a"), _decision(2.0, 2, session="a"), _decision(3.0, 2, session="a")]
    b = [_decision(31.0, 2, session="b"), _decision(32.0, 2, session="b")]
    c = [_decision(33.0, 2, session="c")]  # no done: still running, left out
    f = [
        _feedback(a[0]["event_id"], 1.0),
        _feedback(a[1]["event_id"], 0.0),
        _feedback(a[2]["event_id"], 1.0, done=True),  # return 2, version 1, bucket 0
        _feedback(b[0]["event_id"], 1.0),
        _feedback(b[1]["event_id"], 1.0, done=True),  # return 2, version 2, bucket 1
        _feedback(c[0]["event_id"], 5.0),
    ]
    _insert(engine, a + b + c, f)
    window = make_window(T0, T0 + timedelta(seconds=60), 2)
    with make_session_factory(engine)() as session:
        rows = sorted(session_series(session, window), key=lambda r: r["bucket"])
    assert rows == [
        {"bucket": 0, "model_version": 1, "sessions": 1, "return_sum": 2.0},
        {"bucket": 1, "model_version": 2, "sessions": 1, "return_sum": 2.0},
    ]


def test_baseline_and_coverage(engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(LoggedInteraction),
            [
                {
                    "session_id": s,
                    "step": i,
                    "state": encode_state([0.0]),
                    "item_id": "item-0",
                    "reward": r,
                    "done": False,
                }
                for s, i, r in [("x", 0, 1.0), ("x", 1, 0.0), ("x", 2, 1.0), ("y", 0, 1.0)]
            ],
        )
        conn.execute(
            insert(Item), [{"action_index": i, "item_id": f"item-{i}", "active": i != 2} for i in range(4)]
        )
    now = T0 + timedelta(hours=2)
    recent = [
        _decision(7200 - 60, 1, item="item-0"),
        _decision(7200 - 30, 1, item="item-1"),
        _decision(7200 - 20, 1, item="item-1"),
        _decision(7200 - 4000, 1, item="item-3"),
    ]
    _insert(engine, recent, [])
    with make_session_factory(engine)() as session:
        assert logged_baseline(session) == {
            "steps": 4,
            "sessions": 2,
            "reward_per_step": 0.75,
            "return_per_session": 1.5,
        }
        assert catalogue_coverage(session, now) == {"distinct_items_last_hour": 2, "active_items": 3}


@pytest.mark.parametrize(
    ("since", "until", "buckets", "field"),
    [
        (T0, T0, 5, "until"),
        (T0, T0 + timedelta(days=32), 5, "since"),
        (T0, T0 + timedelta(hours=1), 0, "buckets"),
        (T0, T0 + timedelta(hours=1), 501, "buckets"),
        (T0.replace(tzinfo=None), T0 + timedelta(hours=1), 5, "since"),
    ],
)
def test_windows_are_bounded(since: datetime, until: datetime, buckets: int, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        make_window(since, until, buckets)
    assert caught.value.field == field


def test_training_history_rates_and_bounds() -> None:
    history = TrainingHistory(max_points=3, min_interval_s=1.0)
    history.record(0, {}, 0, now=100.0)
    history.record(10, {"loss": 2.0}, 10, now=100.5)  # kept in the counts, no new point
    history.record(10, {"loss": 1.0}, 10, now=102.0)
    history.record(5, {"loss": 0.5, "j_e": 0.1}, 5, now=104.0)
    assert history.series() == {
        "time": [100.0, 102.0, 104.0],
        "updates_total": [0, 20, 25],
        "updates_per_s": [None, 10.0, 2.5],
        "transitions_total": [0, 20, 25],
        "losses": {"j_e": [None, None, 0.1], "loss": [None, 1.0, 0.5]},
    }
    history.record(1, {}, 0, now=106.0)  # the oldest point falls out
    assert history.series()["time"] == [102.0, 104.0, 106.0]
    assert history.series(since=104.0)["updates_per_s"] == [None, 0.5]


def test_activations_are_recorded_with_their_reason(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        assert client.post("/admin/models/1/activate", headers=admin_headers()).status_code == 200
    engine = make_engine(trained.database_url)
    try:
        with make_session_factory(engine)() as session:
            rows = session.execute(
                select(ModelActivation.version, ModelActivation.reason).order_by(ModelActivation.id)
            ).all()
            assert [tuple(r) for r in rows] == [(1, "pretrain"), (1, "manual")]
            assert [a.reason for a in registry.list_activations(session)] == ["manual", "pretrain"]
    finally:
        engine.dispose()


def test_migration_0004_backfills_the_latest_activations(database_url: str) -> None:
    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0003")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            for version, activated in [(1, "2026-12-01 10:00:00"), (2, None), (3, "2026-12-01 11:00:00")]:
                conn.execute(
                    text(
                        "INSERT INTO model_versions (version, created_at, source, n_updates, state_dim, "
                        "n_actions, config, metrics, checkpoint, is_active, activated_at) VALUES "
                        "(:v, '2026-12-01 09:00:00', 'pretrain', 0, 4, 5, '{}', '{}', :c, :a, :t)"
                    ),
                    {"v": version, "c": b"x", "a": version == 3, "t": activated},
                )
        command.upgrade(config, "head")
        with session_scope(make_session_factory(engine)) as session:
            rows = session.execute(
                select(
                    ModelActivation.version, ModelActivation.activated_at, ModelActivation.reason
                ).order_by(ModelActivation.version)
            ).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [
        (1, datetime(2026, 12, 1, 10, tzinfo=UTC), "backfill"),
        (3, datetime(2026, 12, 1, 11, tzinfo=UTC), "backfill"),
    ]


def test_data_endpoint_needs_a_viewer_or_admin_token(trained: Settings) -> None:
    off = trained.model_copy(update={"admin_token": None, "viewer_token": None})
    with TestClient(create_app(off)) as client:
        page = client.get("/dashboard")
        assert page.status_code == 403 and "DQFD_VIEWER_TOKEN" in page.text
        data = client.get("/dashboard/data", headers=admin_headers())
        assert data.status_code == 403 and "off" in data.json()["detail"]
    viewer = trained.model_copy(update={"viewer_token": SecretStr("look-only")})
    with TestClient(create_app(viewer)) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200 and "uPlot.iife.min.js" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/dashboard/static/vendor/uplot/uPlot.iife.min.js").status_code == 200
        assert client.get("/dashboard/data").status_code == 401
        assert client.get("/dashboard/data", headers={"Authorization": "Bearer nope"}).status_code == 401
        for token in ("look-only", admin_headers()["Authorization"].split()[1]):
            response = client.get("/dashboard/data", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200
            assert response.json()["models"][0]["off_policy_estimate"] is None
        # The viewer token opens no admin route.
        assert client.get("/admin/models", headers={"Authorization": "Bearer look-only"}).status_code == 401
        bad = client.get("/dashboard/data", params={"buckets": 0}, headers=admin_headers())
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "buckets"
