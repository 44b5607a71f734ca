"""Counts and rows of the apprentice and shadow modes' decisions (migration 0006), for their reports.

Agreement: on an apprentice decision, the model's choice equals the served baseline item; on a decision
the model served with a baseline given, the served item equals it; on a shadowed decision, the shadow's
choice equals the served item. The rows for off-policy estimates are decisions whose reward is final
(their live transition is built: feedback, or the default reward once the window closed).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from service.store.models import Decision, LiveTransition


def _count(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def apprentice_counts(session: Session) -> dict[str, int]:
    """Decisions with a baseline item, how many served it, and how many agreed with the model."""
    agreed = _count(and_(Decision.apprentice.is_(True), Decision.model_item_id == Decision.baseline_item_id))
    agreed_served = _count(
        and_(Decision.apprentice.is_(False), Decision.item_id == Decision.baseline_item_id)
    )
    row = session.execute(
        select(
            func.count(),
            _count(Decision.apprentice.is_(True)),
            agreed,
            agreed_served,
            _count(Decision.baseline_propensity.is_not(None)),
        ).where(Decision.baseline_item_id.is_not(None))
    ).one()
    total, served_baseline, agree_apprentice, agree_model, with_propensity = (int(v) for v in row)
    return {
        "with_baseline": total,
        "served_baseline": served_baseline,
        "served_model": total - served_baseline,
        "agreed": agree_apprentice + agree_model,
        "with_baseline_propensity": with_propensity,
    }


def shadow_counts(session: Session) -> list[dict[str, Any]]:
    """Per shadow version: decisions scored, agreements with the served item, and how many carry its
    probability of the served item (all of them: it is logged with every shadowed decision)."""
    rows = session.execute(
        select(
            Decision.shadow_version,
            func.count(),
            _count(Decision.shadow_item_id == Decision.item_id),
            _count(Decision.shadow_propensity.is_not(None)),
        )
        .where(Decision.shadow_version.is_not(None))
        .group_by(Decision.shadow_version)
        .order_by(Decision.shadow_version.desc())
    ).all()
    return [
        {"version": int(v), "decisions": int(n), "agreed": int(a), "with_propensity": int(p)}
        for v, n, a, p in rows
    ]


def apprentice_rows(session: Session, limit: int) -> list[tuple[float, float, float, str | None]]:
    """The newest ``limit`` apprentice decisions with a known incumbent propensity and a final reward:
    (reward, baseline propensity, model's probability of the served item, session id)."""
    query = (
        select(
            LiveTransition.reward,
            Decision.baseline_propensity,
            Decision.model_propensity,
            Decision.session_id,
        )
        .join(LiveTransition, LiveTransition.event_id == Decision.event_id)
        .where(Decision.apprentice.is_(True), Decision.baseline_propensity.is_not(None))
        .order_by(Decision.created_at.desc())
        .limit(limit)
    )
    return [(float(r), float(b), float(m), s) for r, b, m, s in session.execute(query)]


def shadow_rows(session: Session, version: int, limit: int) -> list[tuple[float, float, float, str | None]]:
    """The newest ``limit`` decisions shadowed by ``version`` with a final reward: (reward, logged
    propensity of the served item, the shadow's probability of it, session id). Apprentice decisions
    without the incumbent's propensity are left out: their logged propensity (1) is not a probability."""
    query = (
        select(LiveTransition.reward, Decision.propensity, Decision.shadow_propensity, Decision.session_id)
        .join(LiveTransition, LiveTransition.event_id == Decision.event_id)
        .where(
            Decision.shadow_version == version,
            Decision.shadow_propensity.is_not(None),
            ~and_(Decision.apprentice.is_(True), Decision.baseline_propensity.is_(None)),
        )
        .order_by(Decision.created_at.desc())
        .limit(limit)
    )
    return [(float(r), float(p), float(q), s) for r, p, q, s in session.execute(query)]
