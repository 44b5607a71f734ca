"""Off-policy evaluations of model versions and the promotion gate's verdicts (migration 0005).

Written by :mod:`service.learning.evaluation` and :mod:`service.learning.promotion`; read by
``GET /admin/models`` and the dashboard.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.store.models import ModelEvaluation, PromotionDecision, utcnow


def finite(value: float | None) -> float | None:
    """``value`` as a float, or None when missing or not finite (JSON and PostgreSQL refuse NaN/inf)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def add_evaluation(session: Session, **fields: Any) -> ModelEvaluation:
    """Store one evaluation (the :class:`ModelEvaluation` columns as keywords; committed by the caller)."""
    row = ModelEvaluation(created_at=utcnow(), **fields)
    session.add(row)
    session.flush()
    return row


def add_promotion_decision(
    session: Session,
    version: int,
    passed: bool,
    reason: str,
    active_version: int | None,
    margin: float | None,
    evaluation_id: int | None,
) -> PromotionDecision:
    """Record the gate's verdict on ``version`` (committed by the caller)."""
    row = PromotionDecision(
        version=version,
        decided_at=utcnow(),
        passed=passed,
        reason=reason,
        active_version=active_version,
        margin=margin,
        evaluation_id=evaluation_id,
    )
    session.add(row)
    session.flush()
    return row


def latest_evaluations(session: Session, versions: list[int] | None = None) -> dict[int, ModelEvaluation]:
    """The newest evaluation of each version (of ``versions``, or of all) by version number."""
    query = select(ModelEvaluation).order_by(ModelEvaluation.id)
    if versions is not None:
        query = query.where(ModelEvaluation.version.in_(versions))
    return {row.version: row for row in session.scalars(query)}  # ascending ids: the newest wins


def latest_promotion_decisions(
    session: Session, versions: list[int] | None = None
) -> dict[int, PromotionDecision]:
    """The newest gate verdict on each version (of ``versions``, or of all) by version number."""
    query = select(PromotionDecision).order_by(PromotionDecision.id)
    if versions is not None:
        query = query.where(PromotionDecision.version.in_(versions))
    return {row.version: row for row in session.scalars(query)}


def list_promotion_decisions(session: Session, limit: int = 200) -> list[PromotionDecision]:
    """The newest ``limit`` gate verdicts, newest first."""
    return list(session.scalars(select(PromotionDecision).order_by(PromotionDecision.id.desc()).limit(limit)))


def evaluation_dict(row: ModelEvaluation) -> dict[str, Any]:
    """An evaluation as JSON-able data (the API's and the dashboard's shape)."""
    return {
        "id": row.id,
        "created_at": row.created_at.isoformat(),
        "purpose": row.purpose,
        "job_id": row.job_id,
        "since": row.since.isoformat() if row.since else None,
        "until": row.until.isoformat() if row.until else None,
        "estimator": row.estimator,
        "value": row.value,
        "lower": row.lower,
        "upper": row.upper,
        "ess": row.ess,
        "n_decisions": row.n_decisions,
        "n_sessions": row.n_sessions,
        "estimates": row.estimates,
        "warnings": row.warnings,
        "baseline_version": row.baseline_version,
        "baseline_value": row.baseline_value,
        "baseline_lower": row.baseline_lower,
        "baseline_upper": row.baseline_upper,
        "diff_value": row.diff_value,
        "diff_lower": row.diff_lower,
        "diff_upper": row.diff_upper,
        "details": row.details,
    }


def promotion_dict(row: PromotionDecision) -> dict[str, Any]:
    """A gate verdict as JSON-able data."""
    return {
        "id": row.id,
        "version": row.version,
        "decided_at": row.decided_at.isoformat(),
        "passed": row.passed,
        "reason": row.reason,
        "active_version": row.active_version,
        "margin": row.margin,
        "evaluation_id": row.evaluation_id,
    }
