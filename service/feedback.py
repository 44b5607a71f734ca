"""Recording rewards for served decisions: idempotent, aggregated, bounded by the reward window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import ConflictError, NotFoundError
from service.models import Decision, Feedback, utcnow

Aggregation = Literal["reject", "first", "sum"]


@dataclass(frozen=True)
class FeedbackResult:
    """What happened to a feedback post: ``stored``, ``duplicate`` (already stored) or ``ignored``."""

    event_id: str
    status: str
    reward: float
    done: bool


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _dedup_key(aggregation: Aggregation, reward: float, done: bool, feedback_id: str | None) -> str:
    # "reject" and "first" allow one row per decision; "sum" one per distinct feedback.
    if aggregation != "sum":
        return "single"
    return f"id:{feedback_id}" if feedback_id else f"value:{reward!r}:{int(done)}"


def record_feedback(
    session: Session,
    event_id: str,
    reward: float,
    done: bool,
    *,
    aggregation: Aggregation,
    reward_window_s: float,
    feedback_id: str | None = None,
    now: datetime | None = None,
) -> FeedbackResult:
    """Store one reward for ``event_id``; returns only after the row is committed.

    Re-sending identical feedback is a no-op. A different second reward is a Conflict under
    ``reject``, kept out under ``first`` and added under ``sum``. Feedback after the reward window
    (or after the decision became a transition) is a Conflict. Core statements on a few columns:
    this is the hottest write path after /act.
    """
    key = _dedup_key(aggregation, reward, done, feedback_id)
    for attempt in range(2):
        decision = session.execute(
            select(Decision.created_at, Decision.transition_built).where(Decision.event_id == event_id)
        ).first()
        if decision is None:
            raise NotFoundError(f"unknown event_id {event_id!r}", field="event_id")
        rows = session.execute(
            select(Feedback.dedup_key, Feedback.reward, Feedback.done).where(Feedback.event_id == event_id)
        ).all()
        same = next((r for r in rows if r.dedup_key == key), None)
        if same is not None:
            if same.reward == reward and same.done == done:
                return FeedbackResult(
                    event_id, "duplicate", float(sum(r.reward for r in rows)), any(r.done for r in rows)
                )
            if aggregation == "first":
                return FeedbackResult(event_id, "ignored", same.reward, same.done)
            raise ConflictError(
                f"event {event_id} already has reward {same.reward} (done={same.done})", field="reward"
            )
        now = now or utcnow()
        if now > as_utc(decision.created_at) + timedelta(seconds=reward_window_s):
            raise ConflictError(
                f"the reward window of {reward_window_s:g} s for this event has closed", "event_id"
            )
        if decision.transition_built:
            raise ConflictError("this event's transition was already learned from", field="event_id")
        try:
            session.execute(
                insert(Feedback).values(
                    event_id=event_id, dedup_key=key, reward=reward, done=done, created_at=now
                )
            )
            session.commit()
        except IntegrityError:
            # A parallel post of this event won the unique (event_id, dedup_key) race: re-judge.
            session.rollback()
            if attempt == 1:
                raise
            continue
        total = float(sum(r.reward for r in rows)) + reward
        return FeedbackResult(event_id, "stored", total, done or any(r.done for r in rows))
    raise AssertionError("unreachable")
