"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import StateDep
from service.api.openapi import READYZ
from service.store.db import database_problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses=READYZ)
def readyz(state: StateDep) -> JSONResponse:
    """Ready when a model is loaded and the database answers; otherwise 503 saying what is missing
    (a state-width disagreement names the two sources and the fix)."""
    policy = state.store.policy
    problems = []
    retryable = False  # Retry-After only when waiting can help (not for a state-width disagreement)
    if policy is None:
        problem = state.store.problem
        problems.append(problem or "no model loaded")
        retryable = problem is None
    database = database_problem(state.engine, state.settings.request_db_timeout_s)  # bounded wait
    if database is not None:
        problems.append(database)
        retryable = True
    # The learner's problems (stalled, diverged) are listed but do not fail readiness: serving goes on
    # with the last published weights, and taking replicas out of rotation would not help learning.
    learner = state.trainer.problems() if state.trainer is not None else []
    # Likewise a fallback: the active version cannot serve, an older valid one does (poller.py).
    fallback = state.store.fallback if policy is not None else None
    if fallback is not None:
        learner = [fallback, *learner]
    body = {
        "status": "ready" if not problems else "not ready",
        "model_version": policy.model_version if policy else None,
        "problems": problems + learner,
    }
    return JSONResponse(
        body, status_code=200 if not problems else 503, headers={"Retry-After": "5"} if retryable else None
    )
