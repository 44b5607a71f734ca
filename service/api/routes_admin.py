"""Admin API behind ``Authorization: Bearer <admin_token>``: retrain, jobs, models, activation, stats."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, status

from service.api.deps import SessionDep, StateDep, require_admin
from service.api.openapi import ADMIN, BODY, error
from service.api.schemas import ID_PATTERN, MAX_DB_ID, JobOut, ModelOut, RetrainRequest
from service.ingest.catalogue import load_catalogue, set_item_active
from service.serving.model_check import validate_checkpoint
from service.store import jobs, registry, shape
from service.store.stats import database_stats

# Path ids within what the database columns hold (INTEGER on both databases; item ids as the body's ids):
# past them a request is a 422, never a database error.
DbId = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="a positive database id (at most 2³¹−1)")]
ItemIdPath = Annotated[str, Path(min_length=1, max_length=255, pattern=ID_PATTERN)]

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=ADMIN)


@router.post("/retrain", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut, responses=BODY)
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


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: error("no such job")})
def get_job(job_id: DbId, session: SessionDep) -> Any:
    """Status, progress and loss components of one job."""
    return jobs.get_job(session, job_id)


@router.get("/models", response_model=list[ModelOut])
def list_models(session: SessionDep) -> Any:
    """All model versions, newest first."""
    return registry.list_versions(session)


@router.post(
    "/models/{version}/activate",
    response_model=ModelOut,
    responses={
        404: error("no such model version"),
        409: error("the version cannot serve (corrupt checkpoint, wrong shape, non-finite Q-values)"),
    },
)
def activate(version: DbId, state: StateDep, session: SessionDep) -> Any:
    """Make ``version`` active (rollback included); this replica serves it at once, others within seconds.

    The version is checked first (its checkpoint loads, fits the catalogue and the state width, and
    gives finite Q-values on a probe state): one that fails answers 409 with the reason, and the
    active version stays as it was.
    """
    checkpoint = registry.load_checkpoint(session, version)
    width = shape.serving_width(state.store.configured_state_dim, session)
    network = validate_checkpoint(checkpoint, version, load_catalogue(session).n_actions, width)
    row = registry.activate_version(session, version)
    session.commit()
    if state.store.publish(network, row.version):
        state.store.fallback = None  # the active version serves (again)
    return row


@router.post("/items/{item_id}/active", responses={404: error("no such item")})
def set_item(item_id: ItemIdPath, active: bool, session: SessionDep, state: StateDep) -> dict[str, Any]:
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
            "fallback": state.store.fallback,
        },
        "trainer": state.trainer.status() if state.trainer is not None else None,
    }
