"""Admin API behind ``Authorization: Bearer <admin_token>``: retrain, jobs, models, activation, saving the
online weights, stats."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, status

from service.api.deps import SessionDep, StateDep, require_admin
from service.api.openapi import ADMIN, BODY, RETRY_AFTER, error
from service.api.routes_evaluation import models_out
from service.api.routes_modes import mode_summary
from service.api.schemas import ID_PATTERN, MAX_DB_ID, JobOut, ModelOut, RetrainRequest
from service.errors import ConflictError
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
    """All model versions, newest first, each with its latest off-policy evaluation and promotion-gate
    verdict (``evaluation`` and ``gate``; None when there is none)."""
    return models_out(session, registry.list_versions(session))


@router.post(
    "/models/{version}/activate",
    response_model=ModelOut,
    responses={
        404: error("no such model version"),
        409: error(
            "the version cannot serve (corrupt checkpoint, wrong shape, non-finite Q-values, none of the "
            "active items known) or its checkpoint was pruned (DQFD_KEEP_VERSIONS)"
        ),
    },
)
def activate(version: DbId, state: StateDep, session: SessionDep) -> Any:
    """Make ``version`` active (rollback included); this replica serves it at once, others within seconds.

    The version is checked first (its checkpoint is still stored, loads, has no more actions than the
    catalogue has items and knows at least one active item, fits the state width, and gives finite
    Q-values on a probe state): one that fails answers 409 with the reason, and the active version
    stays as it was. A version trained before the catalogue grew serves the items it knows.
    """
    checkpoint = registry.load_checkpoint(session, version)  # a pruned version: 409
    width = shape.serving_width(state.store.configured_state_dim, session)
    catalogue = load_catalogue(session)
    network = validate_checkpoint(checkpoint, version, catalogue.n_actions, width, catalogue.active)
    row = registry.activate_version(session, version)
    session.commit()
    if state.store.publish(network, row.version):
        state.store.fallback = None  # the active version serves (again)
    return row


@router.post(
    "/save",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelOut,
    responses={
        409: error("this process runs no trainer (DQFD_ROLE=api), or the trainer diverged"),
        503: error(
            "no model yet, the trainer is busy or stopping, a retrained version is being adopted, or the "
            "database is unavailable (Retry-After)",
            headers=RETRY_AFTER,
        ),
    },
)
def save(state: StateDep, session: SessionDep) -> Any:
    """Save the trainer's current online weights as a new model version now, and return it.

    The version is saved exactly as the periodic online save (every DQFD_SAVE_EVERY_UPDATES updates)
    saves one: source ``online``, its parent the version the trainer continued from, and active (these
    are the weights this replica already serves; the trainer follows the active version, so an inactive
    save would be dropped on its next iteration). With the promotion gate on (DQFD_PROMOTION_GATE) the
    gate judges it first: ``gate`` says whether it passed, and a version held back is stored inactive
    while the trainer keeps learning from it. Only the process that runs the trainer can answer:
    role ``all`` (a ``worker`` saves on its schedule and when it stops).
    """
    if state.trainer is None:
        raise ConflictError(
            f"this process runs no trainer (DQFD_ROLE={state.settings.role}): the worker saves every "
            "DQFD_SAVE_EVERY_UPDATES updates and when it stops"
        )
    version = state.trainer.save_now()
    return models_out(session, [registry.get_version(session, version)])[0]


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
        "modes": mode_summary(state, session),  # apprentice and shadow modes (routes_modes)
    }
