"""The feedback group-commit writer: batches judged in queue order exactly like one-at-a-time posts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from service.errors import ConflictError, NotFoundError
from service.feedback.feedback_log import FeedbackPost, FeedbackWriter
from service.feedback.recording import Aggregation, FeedbackResult, record_feedback
from service.settings import Settings
from service.store.db import make_engine
from service.store.models import Feedback, utcnow
from tests.service.conftest import STATE, insert_decisions

WINDOW_S = 600.0


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


def _stored(engine: Engine, event: str) -> list[tuple[str, float, bool]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Feedback.dedup_key, Feedback.reward, Feedback.done)
            .where(Feedback.event_id == event)
            .order_by(Feedback.id)
        )
        return [(key, reward, done) for key, reward, done in rows]


def _writer(engine: Engine, aggregation: Aggregation = "reject") -> FeedbackWriter:
    return FeedbackWriter(engine, aggregation, WINDOW_S)


def test_reject_same_event_twice_in_one_batch(engine: Engine) -> None:
    same, different = insert_decisions(engine, 2)
    outcomes = _writer(engine).commit_batch(
        [
            FeedbackPost(same, 1.0, True),
            FeedbackPost(different, 1.0),
            FeedbackPost(same, 1.0, True),  # identical re-send: sees the first, stores nothing
            FeedbackPost(different, 0.5),  # a different second reward
        ]
    )
    assert outcomes[:3] == [
        FeedbackResult(same, "stored", 1.0, True),
        FeedbackResult(different, "stored", 1.0, False),
        FeedbackResult(same, "duplicate", 1.0, True),
    ]
    assert isinstance(outcomes[3], ConflictError) and outcomes[3].field == "reward"
    assert "already has reward 1.0" in outcomes[3].message
    assert _stored(engine, same) == [("single", 1.0, True)]
    assert _stored(engine, different) == [("single", 1.0, False)]


def test_sum_and_first_within_one_batch(engine: Engine) -> None:
    summed, first = insert_decisions(engine, 2)
    outcomes = _writer(engine, "sum").commit_batch(
        [
            FeedbackPost(summed, 1.0),
            FeedbackPost(summed, 2.0),
            FeedbackPost(summed, 2.0),  # the same value again: a duplicate of the second
            FeedbackPost(summed, 2.0, feedback_id="k1"),  # a distinct feedback of the same value
            FeedbackPost(summed, 0.25, True, feedback_id="k2"),
        ]
    )
    assert outcomes == [
        FeedbackResult(summed, "stored", 1.0, False),
        FeedbackResult(summed, "stored", 3.0, False),
        FeedbackResult(summed, "duplicate", 3.0, False),
        FeedbackResult(summed, "stored", 5.0, False),
        FeedbackResult(summed, "stored", 5.25, True),
    ]
    assert _stored(engine, summed) == [
        ("value:1.0:0", 1.0, False),
        ("value:2.0:0", 2.0, False),
        ("id:k1", 2.0, False),
        ("id:k2", 0.25, True),
    ]
    kept = _writer(engine, "first").commit_batch([FeedbackPost(first, 1.0), FeedbackPost(first, 2.0)])
    assert kept == [FeedbackResult(first, "stored", 1.0, False), FeedbackResult(first, "ignored", 1.0, False)]
    assert _stored(engine, first) == [("single", 1.0, False)]


def test_unknown_late_and_learned_events_fail_alone(engine: Engine) -> None:
    (good,) = insert_decisions(engine, 1)
    (late,) = insert_decisions(engine, 1, created_at=utcnow() - timedelta(seconds=WINDOW_S + 60))
    (learned,) = insert_decisions(engine, 1, built=True)
    outcomes = _writer(engine).commit_batch(
        [
            FeedbackPost("missing", 1.0),
            FeedbackPost(late, 1.0),
            FeedbackPost(good, 1.0),
            FeedbackPost(learned, 1.0),
        ]
    )
    assert isinstance(outcomes[0], NotFoundError) and outcomes[0].field == "event_id"
    assert isinstance(outcomes[1], ConflictError) and "window of 600 s" in outcomes[1].message
    assert outcomes[2] == FeedbackResult(good, "stored", 1.0, False)
    assert isinstance(outcomes[3], ConflictError) and "already learned" in outcomes[3].message
    assert _stored(engine, good) == [("single", 1.0, False)]
    assert _stored(engine, late) == [] and _stored(engine, learned) == []


@pytest.mark.parametrize("aggregation", ["reject", "first", "sum"])
def test_a_batch_answers_as_record_feedback_does_one_post_at_a_time(
    engine: Engine, aggregation: Aggregation
) -> None:
    """The same posts on two copies of the events: one batch vs. record_feedback, post by post."""
    plan = [(0, 1.0, False, None), (1, 0.5, True, None), (0, 1.0, False, None), (0, 2.0, False, None)]
    plan += [(1, 0.5, True, "a"), (2, 1.0, False, None), (0, 2.0, False, "a"), (1, 3.0, False, None)]

    batch_events = insert_decisions(engine, 3)
    batch = _writer(engine, aggregation).commit_batch(
        [FeedbackPost(batch_events[i], r, d, f) for i, r, d, f in plan]
    )
    single_events = insert_decisions(engine, 3)
    singles: list[FeedbackResult | Exception] = []
    for i, reward, done, feedback_id in plan:
        with Session(engine) as session:
            try:
                singles.append(
                    record_feedback(
                        session,
                        single_events[i],
                        reward,
                        done,
                        aggregation=aggregation,
                        reward_window_s=WINDOW_S,
                        feedback_id=feedback_id,
                    )
                )
            except (NotFoundError, ConflictError) as exc:
                singles.append(exc)

    def same_shape(value: FeedbackResult | Exception, event: str) -> Any:
        if isinstance(value, Exception):
            return type(value).__name__, str(value).replace(event, "E"), getattr(value, "field", None)
        return value.status, value.reward, value.done

    assert [same_shape(v, batch_events[p[0]]) for v, p in zip(batch, plan, strict=True)] == [
        same_shape(v, single_events[p[0]]) for v, p in zip(singles, plan, strict=True)
    ]
    for b, s in zip(batch_events, single_events, strict=True):
        assert _stored(engine, b) == _stored(engine, s)


def test_a_lost_unique_race_is_rejudged_post_by_post(engine: Engine) -> None:
    """Another process stores the same (event_id, dedup_key) between the batch's reads and its insert:
    the batch is rolled back and re-judged with record_feedback; nothing is lost or stored twice."""
    raced_same, raced_different, untouched = insert_decisions(engine, 3)
    writer = _writer(engine)
    real_judge = writer.judge_batch

    def judge_then_race(conn: Any, items: list[FeedbackPost], now: datetime) -> Any:
        judged = real_judge(conn, items, now)
        if writer.fallbacks == 0:  # another replica commits its rows meanwhile
            with engine.begin() as other:
                other.execute(
                    insert(Feedback),
                    [
                        {"event_id": raced_same, "dedup_key": "single", "reward": 1.0, "done": False},
                        {"event_id": raced_different, "dedup_key": "single", "reward": 0.0, "done": True},
                    ],
                )
        return judged

    writer.judge_batch = judge_then_race  # type: ignore[method-assign]
    outcomes = writer.commit_batch(
        [FeedbackPost(raced_same, 1.0), FeedbackPost(raced_different, 1.0), FeedbackPost(untouched, 2.0)]
    )
    assert writer.fallbacks == 1
    assert outcomes[0] == FeedbackResult(raced_same, "duplicate", 1.0, False)
    assert isinstance(outcomes[1], ConflictError) and outcomes[1].field == "reward"
    assert outcomes[2] == FeedbackResult(untouched, "stored", 2.0, False)
    assert _stored(engine, raced_same) == [("single", 1.0, False)]
    assert _stored(engine, raced_different) == [("single", 0.0, True)]
    assert _stored(engine, untouched) == [("single", 2.0, False)]


def test_the_writer_shares_commits_and_survives_cancelled_requests(engine: Engine) -> None:
    events = insert_decisions(engine, 50)
    writer = _writer(engine)
    gate = threading.Event()
    real_commit = writer.commit_batch

    def gated(items: list[FeedbackPost]) -> list[FeedbackResult | Exception]:
        gate.wait(30)  # hold the first batch until every request is queued
        return real_commit(items)

    writer.commit_batch = gated  # type: ignore[method-assign]
    writer.start()

    async def post_all() -> list[FeedbackResult | BaseException]:
        tasks = [asyncio.create_task(writer.write(FeedbackPost(e, 1.0))) for e in events]
        tasks += [asyncio.create_task(writer.write(FeedbackPost(e, 1.0))) for e in events[:10]]
        cancelled = asyncio.create_task(writer.write(FeedbackPost(events[-1], 5.0, True)))
        await asyncio.sleep(0)  # every task has queued its post
        cancelled.cancel()  # the client went away: its post is judged all the same
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(post_all())
        # The writer goes on after settling a cancelled request.
        again = asyncio.run(writer.write(FeedbackPost(events[0], 1.0)))
    finally:
        writer.stop()
    assert results[:50] == [FeedbackResult(e, "stored", 1.0, False) for e in events]
    assert results[50:] == [FeedbackResult(e, "duplicate", 1.0, False) for e in events[:10]]
    assert again == FeedbackResult(events[0], "duplicate", 1.0, False)
    assert writer.rows == 62 and writer.batches <= 3 < 61  # one commit for many requests
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Feedback)) == 50
    assert _stored(engine, events[-1]) == [
        ("single", 1.0, False)
    ]  # the cancelled post came second: a 409 nobody reads


def test_a_database_error_fails_the_whole_batch_and_the_writer_goes_on(engine: Engine) -> None:
    events = insert_decisions(engine, 4)
    writer = _writer(engine)
    failing = threading.Event()
    real_judge = writer.judge_batch

    def judge(conn: Any, items: list[FeedbackPost], now: datetime) -> Any:
        if failing.is_set():
            raise OperationalError("SELECT decisions", {}, Exception("database went away"))
        return real_judge(conn, items, now)

    writer.judge_batch = judge  # type: ignore[method-assign]
    writer.start()

    async def post(rewards: list[float]) -> list[FeedbackResult | BaseException]:
        return await asyncio.gather(
            *(writer.write(FeedbackPost(e, r)) for e, r in zip(events, rewards, strict=True)),
            return_exceptions=True,
        )

    try:
        failing.set()
        failed = asyncio.run(post([1.0, 1.0, 1.0, 1.0]))
        failing.clear()
        ok = asyncio.run(post([2.0, 2.0, 2.0, 2.0]))
    finally:
        writer.stop()
    assert all(isinstance(r, OperationalError) for r in failed)
    assert ok == [FeedbackResult(e, "stored", 2.0, False) for e in events]
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Feedback)) == 4


def test_a_failed_batch_is_503_with_retry_after(trained: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.api.app import create_app

    def broken(self: FeedbackWriter, conn: Any, items: list[FeedbackPost], now: datetime) -> Any:
        raise OperationalError("SELECT decisions", {}, Exception("database went away"))

    with TestClient(create_app(trained.model_copy(update={"role": "api"}))) as client:
        event = client.post("/act", json={"state": STATE}).json()["event_id"]
        monkeypatch.setattr(FeedbackWriter, "judge_batch", broken)
        response = client.post("/feedback", json={"event_id": event, "reward": 1.0})
        assert response.status_code == 503 and response.headers["retry-after"]
        monkeypatch.undo()
        assert client.post("/feedback", json={"event_id": event, "reward": 1.0}).json()["status"] == "stored"


def test_writer_rows_are_stored_like_record_feedback_rows(engine: Engine) -> None:
    """The writer bypasses SQLAlchemy's statement building: its rows must read back, raw and through
    the ORM, like rows written by record_feedback (e.g. SQLite's DATETIME text and 0/1 booleans)."""
    batch_event, single_event = insert_decisions(engine, 2)
    _writer(engine).commit_batch([FeedbackPost(batch_event, 0.75, True)])
    with Session(engine) as session:
        record_feedback(session, single_event, 0.75, True, aggregation="reject", reward_window_s=WINDOW_S)
    with Session(engine) as session:
        written = session.scalars(select(Feedback).where(Feedback.event_id == batch_event)).one()
        single = session.scalars(select(Feedback).where(Feedback.event_id == single_event)).one()
        for name in ("dedup_key", "reward", "done"):
            assert getattr(written, name) == getattr(single, name), name
        assert written.created_at <= single.created_at
    with engine.connect() as conn:
        raw = {
            row[0]: row[1:]
            for row in conn.exec_driver_sql(
                "SELECT event_id, dedup_key, reward, done, created_at FROM feedback"
            )
        }
    for a, b in zip(raw[batch_event], raw[single_event], strict=True):
        assert type(a) is type(b)
        if isinstance(a, str) and a[:2] == "20":  # the DATETIME text: same format, same length
            assert len(a) == len(b)
