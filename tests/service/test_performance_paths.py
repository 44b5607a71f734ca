"""The fast paths: the group-commit writers behind /act and /feedback, and the streamed demonstration
load."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

import service.serving.decision_log as decision_log
from service.ingest.catalogue import load_catalogue
from service.learning.demos import iter_demonstrations, load_demonstrations
from service.serving.decision_log import DecisionWriter
from service.settings import Settings
from service.store.db import make_engine, make_session_factory
from service.store.models import Decision, Feedback
from tests.service.conftest import STATE_DIM, LiveServer, seed_database

STATE = [0.1, -0.2, 0.3, 0.0]


def _stored(url: str) -> dict[str, tuple[str | None, int]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Decision.event_id, Decision.session_id, Decision.step))
            return {event: (session, step) for event, session, step in rows}
    finally:
        engine.dispose()


def test_concurrent_act_calls_are_all_committed_with_session_steps(trained: Settings) -> None:
    """400 /act posts from 16 parallel clients on 8 sessions: every answered event id is in the
    database, each session's steps are 0..n-1 in order, and the writer shared its commits."""
    with (
        LiveServer(trained.model_copy(update={"role": "api"})) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):

        def act(i: int) -> tuple[int, str, str]:
            session = f"s{i % 8}"
            response = http.post("/act", json={"state": STATE, "session_id": session})
            return response.status_code, response.json().get("event_id", ""), session

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(act, range(400)))
        writer = server.app.state.service.decisions
        batches, rows = writer.batches, writer.rows
    assert {code for code, _, _ in results} == {200}
    stored = _stored(trained.database_url)
    assert len(stored) == 400 and rows == 400 and batches <= 400
    steps: dict[str, list[int]] = defaultdict(list)
    for _, event, session in results:
        assert stored[event][0] == session
        steps[session].append(stored[event][1])
    for session_steps in steps.values():
        assert sorted(session_steps) == list(range(len(session_steps)))


def test_concurrent_feedback_is_judged_as_if_sequential(trained: Settings) -> None:
    """160 /feedback posts (40 events × 4, identical and conflicting rewards, shuffled) from 16 parallel
    clients through the feedback writer: per event exactly one post is stored, every post of the stored
    value is 200 (``stored`` or ``duplicate``), every other one 409, and the database agrees."""
    with (
        LiveServer(trained.model_copy(update={"role": "api"})) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        events = [http.post("/act", json={"state": STATE}).json()["event_id"] for _ in range(40)]
        posts = [(event, reward) for event in events for reward in (1.0, 1.0, 0.0, 1.0)]
        random.Random(1).shuffle(posts)

        def send(post: tuple[str, float]) -> tuple[str, float, int, str | None]:
            response = http.post("/feedback", json={"event_id": post[0], "reward": post[1]})
            status = response.json().get("status") if response.status_code == 200 else None
            return post[0], post[1], response.status_code, status

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(send, posts))
        writer = server.app.state.service.feedback
        batches, rows = writer.batches, writer.rows
    engine = make_engine(trained.database_url)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(Feedback.event_id, Feedback.reward)).all())
    engine.dispose()
    assert len(stored) == 40 and rows == 160 and batches <= 160
    for event in events:
        answers = [(reward, code, status) for e, reward, code, status in results if e == event]
        assert [status for _, _, status in answers].count("stored") == 1
        assert next(reward for reward, _, status in answers if status == "stored") == stored[event]
        for reward, code, status in answers:
            assert (code, status in {"stored", "duplicate"}) == (
                (200, True) if reward == stored[event] else (409, False)
            )


def test_a_failed_batch_is_503_and_nothing_acknowledged_is_lost(
    trained: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = threading.Event()
    real_assign = decision_log.assign_steps

    def assign(conn, rows, writer=None):  # type: ignore[no-untyped-def]
        if failing.is_set():
            raise OperationalError("INSERT INTO decisions", {}, Exception("database went away"))
        real_assign(conn, rows, writer)

    monkeypatch.setattr(decision_log, "assign_steps", assign)
    with (
        LiveServer(trained.model_copy(update={"role": "api"})) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):

        def act(i: int) -> httpx.Response:
            return http.post("/act", json={"state": STATE, "session_id": f"s{i % 4}"})

        with ThreadPoolExecutor(max_workers=8) as pool:
            ok = list(pool.map(act, range(40)))
            failing.set()
            failed = list(pool.map(act, range(40)))
            failing.clear()
            again = list(pool.map(act, range(40)))
    assert {r.status_code for r in ok + again} == {200}
    assert {r.status_code for r in failed} == {503}
    assert all(r.headers.get("retry-after") for r in failed)
    stored = _stored(trained.database_url)
    acknowledged = {r.json()["event_id"] for r in ok + again}
    assert set(stored) == acknowledged  # every 2xx is stored, nothing of the failed batches is


def test_writer_stop_commits_what_is_queued(settings: Settings) -> None:
    from service.serving.choice import Choice, decision_row

    class Policy:
        model_version, revision = 1, 0

    engine = make_engine(settings.database_url)
    writer = DecisionWriter(engine, max_batch=16)
    writer.start()
    choice = Choice("item-0", 0, [], 1.0, False, None)
    rows = [decision_row(Policy(), STATE, "u", choice) for _ in range(50)]  # type: ignore[arg-type]

    async def write_all() -> None:
        await asyncio.gather(*(writer.write(row) for row in rows))

    asyncio.run(write_all())
    writer.stop()
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Decision)) == 50
        steps = sorted(conn.scalars(select(Decision.step)))
    engine.dispose()
    assert steps == list(range(50)) and writer.rows == 50 and writer.batches <= 50


def test_streamed_demonstrations_match_the_full_load(settings: Settings) -> None:
    seed_database(settings.database_url, n_sessions=30)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            catalogue = load_catalogue(session)
        full = load_demonstrations(engine, catalogue, STATE_DIM, chunk_rows=7)
        chunks = list(iter_demonstrations(engine, catalogue, STATE_DIM, chunk_rows=7))
    finally:
        engine.dispose()
    assert len(chunks) > 1
    np.testing.assert_array_equal(np.concatenate([c.states for c in chunks]), full.states)
    np.testing.assert_array_equal(np.concatenate([c.actions for c in chunks]), full.actions)
    np.testing.assert_array_equal(np.concatenate([c.rewards for c in chunks]), full.rewards)
    np.testing.assert_array_equal(np.concatenate([c.dones for c in chunks]), full.dones)
    # Same episode boundaries; every chunk holds whole episodes only.
    offsets = np.cumsum([0] + [int(c.episode_ids[-1]) + 1 for c in chunks[:-1]])
    merged = np.concatenate([c.episode_ids + o for c, o in zip(chunks, offsets, strict=True)])
    np.testing.assert_array_equal(merged, full.episode_ids)
    for chunk in chunks:
        assert chunk.episode_ids[0] == 0


def test_writer_rows_are_stored_like_orm_rows(settings: Settings) -> None:
    """The writer bypasses SQLAlchemy's statement building: its rows must read back, raw and through
    the ORM, exactly like rows written by ``store_decision`` (e.g. SQLite's DATETIME text format)."""
    from service.serving.choice import Choice, decision_row, store_decision

    class Policy:
        model_version, revision = 3, 7

    engine = make_engine(settings.database_url)
    writer = DecisionWriter(engine)
    writer.start()
    ranking = [{"item_id": "item-1", "score": 0.5}, {"item_id": "item-0", "score": 0.25}]
    mask = np.array([True, False, True, True, False])
    choice = Choice("item-1", 1, ranking, 0.75, True, mask)
    row = decision_row(Policy(), STATE, "same", choice)  # type: ignore[arg-type]
    asyncio.run(writer.write(row))
    writer.stop()
    with make_session_factory(engine)() as session:
        orm_event = store_decision(session, Policy(), STATE, "same", choice)  # type: ignore[arg-type]
    columns = ", ".join(decision_log.COLUMNS)
    with engine.connect() as conn:
        raw = {
            r[0]: r
            for r in conn.exec_driver_sql(f"SELECT {columns} FROM decisions WHERE session_id = 'same'")
        }
    with make_session_factory(engine)() as session:
        written, orm = session.get(Decision, row["event_id"]), session.get(Decision, orm_event)
        assert (written.step, orm.step) == (0, 1)
        for name in decision_log.COLUMNS:
            if name in {"event_id", "step", "created_at"}:
                continue
            assert getattr(written, name) == getattr(orm, name), name
        assert written.created_at <= orm.created_at
    engine.dispose()
    for a, b in zip(raw[row["event_id"]], raw[orm_event], strict=True):
        assert type(a) is type(b)
        if isinstance(a, str) and a[:2] == "20":  # the DATETIME text: same format, same length
            assert len(a) == len(b)


def test_long_catalogues_are_scored_off_the_event_loop(
    trained: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    import service.api.routes_serving as routes
    from service.api.app import create_app

    threads: list[str] = []
    real_choose = routes.choose

    def choose(*args):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return real_choose(*args)

    monkeypatch.setattr(routes, "choose", choose)
    with TestClient(create_app(trained.model_copy(update={"role": "api"}))) as client:
        loop_thread = client.portal.call(lambda: threading.current_thread().name)  # type: ignore[union-attr]
        assert client.post("/act", json={"state": STATE}).status_code == 200
        monkeypatch.setattr(routes, "INLINE_MAX_ACTIONS", 0)
        response = client.post("/act", json={"state": STATE})
        assert response.status_code == 200
    assert threads[0] == loop_thread and threads[1] != loop_thread
    assert response.json()["event_id"] in _stored(trained.database_url)
