"""Admin API behind ``Authorization: Bearer <admin_token>``: retrain, jobs, models, activation, stats."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, status

from service.api.deps import SessionDep, StateDep, require_admin
from service.api.schemas import JobOut, ModelOut, RetrainRequest
from service.ingest.catalogue import set_item_active
from service.store import jobs, registry
from service.store.stats import database_stats

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.post("/retrain", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def retrain(state: StateDep, session: SessionDep, body: RetrainRequest | None = None) -> Any:
    """Queue a retrain: reload demonstrations, pretrain, replay live data, save (and maybe activate).

    Every field has a default, so the body may be left out altogether.
    """
    params = (body or RetrainRequest()).model_dump()
    if params["steps"] is None:
        params["steps"] = state.settings.pretrain_steps
    job = jobs.enqueue_job(session, "retrain", params)
    session.commit()
    return job


@router.get("/jobs", response_model=list[JobOut])
def list_jobs(session: SessionDep) -> Any:
    """The newest jobs."""
    return jobs.list_jobs(session)


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: int, session: SessionDep) -> Any:
    """Status, progress and loss components of one job."""
    return jobs.get_job(session, job_id)


@router.get("/models", response_model=list[ModelOut])
def list_models(session: SessionDep) -> Any:
    """All model versions, newest first."""
    return registry.list_versions(session)


@router.post("/models/{version}/activate", response_model=ModelOut)
def activate(version: int, state: StateDep, session: SessionDep) -> Any:
    """Make ``version`` active (rollback included); this replica loads it at once, others within seconds."""
    row = registry.activate_version(session, version)
    session.commit()
    state.store.load_checkpoint(row.checkpoint, row.version)
    return row


@router.post("/items/{item_id}/active")
def set_item(item_id: str, active: bool, session: SessionDep, state: StateDep) -> dict[str, Any]:
    """Activate (``?active=true``) or deactivate an item; deactivated items are never recommended."""
    set_item_active(session, item_id, active)
    session.commit()
    state.poller.refresh()
    return {"item_id": item_id, "active": active}


@router.get("/stats")
def stats(state: StateDep, session: SessionDep) -> dict[str, Any]:
    """Buffer sizes, feedback counts and reward rate per model version."""
    policy = state.store.policy
    return {
        "database": database_stats(session),
        "serving": {
            "model_version": policy.model_version if policy else None,
            "policy_revision": policy.revision if policy else None,
            "last_load_error": state.store.last_error,
        },
        "trainer": state.trainer.status() if state.trainer is not None else None,
    }
