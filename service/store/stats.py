"""Counts for /admin/stats and the CLI's ``status``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from service.store.models import (
    Decision,
    Feedback,
    Item,
    LiveTransition,
    LoggedInteraction,
    ModelVersion,
    TrainingJob,
)


def database_stats(session: Session) -> dict[str, Any]:
    """Table sizes, feedback counts and the reward rate per model version."""

    def count(model: Any) -> int:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)

    per_event = (
        select(Feedback.event_id, func.sum(Feedback.reward).label("reward"))
        .group_by(Feedback.event_id)
        .subquery()
    )
    not_learned = Decision.learn.is_(False)
    rows = session.execute(
        select(
            Decision.model_version,
            func.count().label("decisions"),
            func.count(per_event.c.event_id).label("with_feedback"),
            func.coalesce(func.sum(per_event.c.reward), 0.0).label("reward_sum"),
            func.sum(case((Decision.explored, 1), else_=0)).label("explored"),
            # "learn": false traffic (evaluation, QA) apart: its reward rate is the served policy's own
            func.sum(case((not_learned, 1), else_=0)).label("nl_decisions"),
            func.count(case((not_learned, per_event.c.event_id))).label("nl_with_feedback"),
            func.coalesce(func.sum(case((not_learned, per_event.c.reward))), 0.0).label("nl_reward_sum"),
        )
        .outerjoin(per_event, per_event.c.event_id == Decision.event_id)
        .group_by(Decision.model_version)
        .order_by(Decision.model_version)
    ).all()
    per_version = [
        {
            "model_version": r.model_version,
            "decisions": int(r.decisions),
            "with_feedback": int(r.with_feedback),
            "feedback_rate": int(r.with_feedback) / int(r.decisions) if r.decisions else 0.0,
            "reward_sum": float(r.reward_sum),
            # mean reward over the decisions that received feedback
            "reward_rate": float(r.reward_sum) / int(r.with_feedback) if r.with_feedback else None,
            "explored": int(r.explored or 0),
            "not_learned": {
                "decisions": int(r.nl_decisions or 0),
                "with_feedback": int(r.nl_with_feedback or 0),
                "reward_sum": float(r.nl_reward_sum),
                "reward_rate": float(r.nl_reward_sum) / int(r.nl_with_feedback)
                if r.nl_with_feedback
                else None,
            },
        }
        for r in rows
    ]
    active = session.scalar(select(ModelVersion.version).where(ModelVersion.is_active))
    return {
        "items": count(Item),
        "active_items": int(session.scalar(select(func.count()).where(Item.active)) or 0),
        "logged_interactions": count(LoggedInteraction),
        "decisions": count(Decision),
        "decisions_not_learned": int(session.scalar(select(func.count()).where(not_learned)) or 0),
        "feedback": count(Feedback),
        "events_with_feedback": int(
            session.scalar(select(func.count(func.distinct(Feedback.event_id)))) or 0
        ),
        "live_transitions": count(LiveTransition),
        "pending_decisions": int(
            session.scalar(select(func.count()).where(Decision.transition_built.is_(False))) or 0
        ),
        "model_versions": count(ModelVersion),
        "active_model_version": active,
        "jobs": count(TrainingJob),
        "per_model_version": per_version,
    }
