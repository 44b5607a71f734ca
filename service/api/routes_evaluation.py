"""Admin API of off-policy evaluation and the promotion gate: ``POST /admin/evaluate`` (a job),
``GET /admin/evaluations`` and ``GET /admin/promotions``; :func:`models_out` adds the latest evaluation and
gate verdict (and whether its checkpoint was pruned) to ``GET /admin/models``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.deps import SessionDep, require_admin
from service.api.openapi import ADMIN, BODY, error
from service.api.schemas import JobOut, ModelOut
from service.api.schemas_evaluation import EvaluateRequest, EvaluationOut, PromotionOut
from service.errors import ModelInvalidError, NotFoundError
from service.learning.evaluation_job import KIND
from service.store import evaluations, jobs, registry, retention
from service.store.models import ModelEvaluation, ModelVersion

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=ADMIN)


def models_out(session: Session, rows: list[ModelVersion]) -> list[ModelOut]:
    """The versions with their latest evaluation and gate verdict."""
    versions = [row.version for row in rows]
    latest = evaluations.latest_evaluations(session, versions)
    verdicts = evaluations.latest_promotion_decisions(session, versions)
    pruned = retention.pruned_versions(session, versions)
    out = []
    for row in rows:
        model = ModelOut.model_validate(row)
        model.pruned = row.version in pruned
        evaluation, verdict = latest.get(row.version), verdicts.get(row.version)
        model.evaluation = EvaluationOut.model_validate(evaluation) if evaluation is not None else None
        model.gate = PromotionOut.model_validate(verdict) if verdict is not None else None
        out.append(model)
    return out


@router.post(
    "/evaluate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={
        **BODY,
        404: error("no such model version (version or baseline)"),
        409: error("the version or baseline was pruned by the checkpoint retention rule"),
    },
)
def evaluate(body: EvaluateRequest, session: SessionDep) -> Any:
    """Queue an off-policy evaluation of a stored version on the logged decisions in ``[since, until)``.

    The job (``GET /admin/jobs/{id}``, with progress) estimates the version's one-step value by IPS,
    SNIPS and DR, with 95% session-bootstrap intervals, against ``baseline`` (default: the active
    version) on the same decisions; the result is stored with the version (``GET /admin/models``,
    ``GET /admin/evaluations``). It runs on the trainer's job thread, after the jobs queued before it.
    """
    registry.get_version(session, body.version)
    if body.baseline is not None and session.get(ModelVersion, body.baseline) is None:
        raise NotFoundError(f"model version {body.baseline} does not exist", field="baseline")
    # A pruned checkpoint cannot be scored: say so now rather than in a failed job. Once queued, the job's
    # versions are kept until it ends (retention.versions_awaited_by_jobs).
    for field, version in (("version", body.version), ("baseline", body.baseline)):
        if version is not None and retention.pruned_versions(session, [version]):
            raise ModelInvalidError(
                f"model version {version} was pruned by the checkpoint retention rule (DQFD_KEEP_VERSIONS): "
                "it cannot be evaluated",
                field=field,
            )
    params = {
        "version": body.version,
        "since": body.since.isoformat() if body.since else None,
        "until": body.until.isoformat() if body.until else None,
        "baseline": body.baseline,
    }
    job = jobs.enqueue_job(session, KIND, params)
    session.commit()
    return job


@router.get("/evaluations", response_model=list[EvaluationOut])
def list_evaluations(
    session: SessionDep,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="only this version's")] = None,
) -> Any:
    """Stored evaluations, newest first (the admin's and the gate's), at most 200."""
    query = select(ModelEvaluation).order_by(ModelEvaluation.id.desc()).limit(200)
    if version is not None:
        query = query.where(ModelEvaluation.version == version)
    return list(session.scalars(query))


@router.get("/promotions", response_model=list[PromotionOut])
def list_promotions(session: SessionDep) -> Any:
    """The promotion gate's verdicts, newest first (at most 200)."""
    return evaluations.list_promotion_decisions(session)
