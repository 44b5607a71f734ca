"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
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
    try:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        problems.append(f"database unavailable: {type(exc).__name__}")
        retryable = True
    body = {
        "status": "ready" if not problems else "not ready",
        "model_version": policy.model_version if policy else None,
        "problems": problems,
    }
    return JSONResponse(
        body, status_code=200 if not problems else 503, headers={"Retry-After": "5"} if retryable else None
    )
