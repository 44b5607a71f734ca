"""Recording rewards for served decisions: idempotent, aggregated, bounded by the reward window.

:func:`judge` is the one verdict on a post; :func:`record_feedback` applies it to one request in its
own session, :class:`service.feedback.feedback_log.FeedbackWriter` (behind ``/feedback``) to a batch of queued
requests in one transaction. Both therefore answer a post identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple, Protocol

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import ConflictError, NotFoundError
from service.store.models import Decision, Feedback, utcnow

Aggregation = Literal["reject", "first", "sum"]


@dataclass(frozen=True)
class FeedbackResult:
    """What happened to a feedback post: ``stored``, ``duplicate`` (already stored) or ``ignored``."""

    event_id: str
    status: str
    reward: float
    done: bool


class DecisionFacts(Protocol):
    """The columns of a decision the verdict needs (a result row or any object with them)."""

    created_at: datetime
    transition_built: bool
    learn: bool


class StoredFeedback(Protocol):
    """The columns of a stored feedback row the verdict needs (a result row or a FeedbackRow)."""

    dedup_key: str
    reward: float
    done: bool


class FeedbackRow(NamedTuple):
    """A feedback row judged in memory but not yet committed (a batch's earlier post)."""

    dedup_key: str
    reward: float
    done: bool


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def unknown_event(event_id: str) -> NotFoundError:
    """The 404 of a post whose decision does not exist."""
    return NotFoundError(f"unknown event_id {event_id!r}", field="event_id")


def dedup_key(aggregation: Aggregation, reward: float, done: bool, feedback_id: str | None) -> str:
    """The row's key, unique per event: "reject" and "first" allow one row per decision, "sum" one
    per distinct feedback (its ``feedback_id``, else its value)."""
    if aggregation != "sum":
        return "single"
    return f"id:{feedback_id}" if feedback_id else f"value:{reward!r}:{int(done)}"


def judge(
    event_id: str,
    reward: float,
    done: bool,
    key: str,
    decision: DecisionFacts | None,
    rows: Sequence[StoredFeedback],
    *,
    aggregation: Aggregation,
    reward_window_s: float,
    now: datetime,
) -> FeedbackResult | None:
    """The verdict on one post, given its decision and the event's stored feedback ``rows``.

    Returns the final answer when nothing is to be stored (``duplicate``, ``ignored``), None when the
    post is to be stored (then :func:`stored_result` is its answer), and raises NotFound (unknown
    event) or Conflict (a different second reward under ``reject``, the reward window closed, or the
    decision already became a transition).
    """
    if decision is None:
        raise unknown_event(event_id)
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
    if now > as_utc(decision.created_at) + timedelta(seconds=reward_window_s):
        raise ConflictError(
            f"the reward window of {reward_window_s:g} s for this event has closed", "event_id"
        )
    # A decision not to learn from is stored as built (never pending) but has no transition: its feedback
    # is kept, within the window, as any other.
    if decision.transition_built and decision.learn:
        raise ConflictError("this event's transition was already learned from", field="event_id")
    return None


def stored_result(event_id: str, rows: Sequence[StoredFeedback], reward: float, done: bool) -> FeedbackResult:
    """The answer to a stored post: the event's total reward and done, this post included."""
    total = float(sum(r.reward for r in rows)) + reward
    return FeedbackResult(event_id, "stored", total, done or any(r.done for r in rows))


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
    (or after the decision became a transition) is a Conflict. The single-request path: the API
    batches posts through :class:`service.feedback.feedback_log.FeedbackWriter`, which falls back to this one
    post at a time when a batch loses a unique-key race.
    """
    key = dedup_key(aggregation, reward, done, feedback_id)
    now = now or utcnow()
    for attempt in range(2):
        decision = session.execute(
            select(Decision.created_at, Decision.transition_built, Decision.learn).where(
                Decision.event_id == event_id
            )
        ).first()
        if decision is None:
            raise unknown_event(event_id)
        rows = session.execute(
            select(Feedback.dedup_key, Feedback.reward, Feedback.done)
            .where(Feedback.event_id == event_id)
            .order_by(Feedback.id)  # a deterministic sum, the same as the batch path's
        ).all()
        verdict = judge(
            event_id,
            reward,
            done,
            key,
            decision,
            rows,
            aggregation=aggregation,
            reward_window_s=reward_window_s,
            now=now,
        )
        if verdict is not None:
            return verdict
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
        return stored_result(event_id, rows, reward, done)
    raise AssertionError("unreachable")
