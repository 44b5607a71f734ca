"""Time series for the dashboard and the report: decisions, rewards and sessions in time buckets.

Every query is bounded: a window of at most :data:`MAX_WINDOW` split into at most :data:`MAX_BUCKETS`
equal buckets, and the bucket of a row is computed in SQL (one ``GROUP BY``, never rows into Python),
in an expression each database understands: seconds since the window's start, divided by the bucket
width and rounded down (SQLite: ``julianday``, whose ``CAST … AS INTEGER`` truncates, exact for the
non-negative offsets of rows inside the window; PostgreSQL: ``EXTRACT(EPOCH …)`` and ``FLOOR``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Float, Integer, case, cast, func, literal, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from service.errors import InvalidInputError
from service.store.models import Decision, Feedback, Item, LoggedInteraction, UTCDateTime

MAX_BUCKETS = 500
"""More points than a chart is wide gain nothing and cost a bigger ``GROUP BY`` answer."""
MAX_WINDOW = timedelta(days=31)
"""A month of decisions is the most one dashboard or report query scans."""
COVERAGE_WINDOW = timedelta(hours=1)
"""Catalogue coverage counts the distinct items served in the last hour (the issue's definition)."""


@dataclass(frozen=True)
class Window:
    """``[since, until)`` cut into ``buckets`` equal buckets (timezone-aware UTC datetimes)."""

    since: datetime
    until: datetime
    buckets: int

    @property
    def bucket_s(self) -> float:
        """The width of one bucket in seconds."""
        return (self.until - self.since).total_seconds() / self.buckets

    def starts(self) -> list[datetime]:
        """The start of every bucket, oldest first."""
        return [self.since + timedelta(seconds=i * self.bucket_s) for i in range(self.buckets)]


def make_window(since: datetime, until: datetime, buckets: int) -> Window:
    """A validated window; a bad one raises :class:`InvalidInputError` naming the field (→ 422)."""
    for name, value in (("since", since), ("until", until)):
        if value.tzinfo is None:
            raise InvalidInputError(f"{name} must carry a time zone (e.g. 2026-12-02T12:00:00Z)", field=name)
    if until <= since:
        raise InvalidInputError("until must be later than since", field="until")
    if until - since > MAX_WINDOW:
        raise InvalidInputError(f"the window may span at most {MAX_WINDOW.days} days", field="since")
    if not 1 <= buckets <= MAX_BUCKETS:
        raise InvalidInputError(f"buckets must be between 1 and {MAX_BUCKETS}", field="buckets")
    return Window(since, until, buckets)


def _bucket(session: Session, column: Any, window: Window) -> ColumnElement[Any]:
    """The bucket index of ``column`` (a timestamp inside the window) as a SQL expression."""
    width = literal(window.bucket_s, Float)
    if session.get_bind().dialect.name == "sqlite":
        # julianday reads SQLAlchemy's stored 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC) text; days → seconds.
        since = literal(window.since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"))
        seconds = (func.julianday(column) - func.julianday(since)) * 86400.0
        return cast(seconds / width, Integer)
    seconds = func.extract("epoch", column - literal(window.since, UTCDateTime()))
    return func.floor(seconds / width)


def _in_window(column: Any, window: Window) -> list[ColumnElement[bool]]:
    return [column >= window.since, column < window.until]


def decision_series(session: Session, window: Window) -> list[dict[str, Any]]:
    """Per bucket and model version: decisions, explored decisions, decisions with feedback and the sum
    of their rewards (a decision's reward is the sum of its feedback rows; decisions are bucketed by
    when they were served). Only non-empty (bucket, version) pairs are returned."""
    bucket = _bucket(session, Decision.created_at, window).label("bucket")
    rows = session.execute(
        select(
            bucket,
            Decision.model_version,
            func.count(func.distinct(Decision.event_id)).label("decisions"),
            func.count(func.distinct(case((Decision.explored, Decision.event_id)))).label("explored"),
            func.count(func.distinct(Feedback.event_id)).label("rewarded"),
            func.coalesce(func.sum(Feedback.reward), 0.0).label("reward_sum"),
        )
        .outerjoin(Feedback, Feedback.event_id == Decision.event_id)
        .where(*_in_window(Decision.created_at, window))
        .group_by(bucket, Decision.model_version)
    )
    return [
        {
            "bucket": int(r.bucket),
            "model_version": int(r.model_version),
            "decisions": int(r.decisions),
            "explored": int(r.explored),
            "rewarded": int(r.rewarded),
            "reward_sum": float(r.reward_sum),
        }
        for r in rows
        if 0 <= int(r.bucket) < window.buckets
    ]


def session_series(session: Session, window: Window) -> list[dict[str, Any]]:
    """Per bucket and model version: finished sessions and the sum of their returns.

    A session is a ``session_id`` whose feedback includes ``done: true``; its return is the sum of the
    rewards of all its decisions, it is bucketed by its first decision and counted for the lowest model
    version among its decisions (the one it started with while versions only grow). Only sessions that
    started inside the window count."""
    per_session = (
        select(
            Decision.session_id,
            func.min(Decision.created_at).label("started"),
            func.min(Decision.model_version).label("model_version"),
            func.sum(Feedback.reward).label("session_return"),
        )
        .join(Feedback, Feedback.event_id == Decision.event_id)
        .where(Decision.session_id.is_not(None), *_in_window(Decision.created_at, window))
        .group_by(Decision.session_id)
        .having(func.max(case((Feedback.done, 1), else_=0)) == 1)
        .subquery()
    )
    bucket = _bucket(session, per_session.c.started, window).label("bucket")
    rows = session.execute(
        select(
            bucket,
            per_session.c.model_version,
            func.count().label("sessions"),
            func.sum(per_session.c.session_return).label("return_sum"),
        ).group_by(bucket, per_session.c.model_version)
    )
    return [
        {
            "bucket": int(r.bucket),
            "model_version": int(r.model_version),
            "sessions": int(r.sessions),
            "return_sum": float(r.return_sum),
        }
        for r in rows
        if 0 <= int(r.bucket) < window.buckets
    ]


def logged_baseline(session: Session) -> dict[str, Any]:
    """The imported logs' (the logging policy's) mean reward per logged step and per session."""
    row = session.execute(
        select(
            func.count().label("steps"),
            func.sum(LoggedInteraction.reward).label("reward_sum"),
            func.count(func.distinct(LoggedInteraction.session_id)).label("sessions"),
        )
    ).one()
    steps, sessions = int(row.steps), int(row.sessions)
    total = float(row.reward_sum or 0.0)
    return {
        "steps": steps,
        "sessions": sessions,
        "reward_per_step": total / steps if steps else None,
        "return_per_session": total / sessions if sessions else None,
    }


def catalogue_coverage(session: Session, now: datetime) -> dict[str, Any]:
    """Distinct items served in the hour before ``now``, and the active catalogue's size."""
    served = session.scalar(
        select(func.count(func.distinct(Decision.item_id))).where(
            Decision.created_at >= now - COVERAGE_WINDOW, Decision.created_at <= now
        )
    )
    active = session.scalar(select(func.count()).select_from(Item).where(Item.active))
    return {"distinct_items_last_hour": int(served or 0), "active_items": int(active or 0)}


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, None for an empty bucket (a gap in the chart, not a zero)."""
    return numerator / denominator if denominator else None


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such a value becomes None."""
    return value if value is not None and math.isfinite(value) else None
