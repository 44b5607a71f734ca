"""The read-only dashboard: a static page (``/dashboard``) and its JSON data (``/dashboard/data``).

How a browser authenticates: the page and its scripts are static files with no data and no secret,
so serving them needs no token. The data endpoint needs ``Authorization: Bearer <token>`` with the
viewer token (``DQFD_VIEWER_TOKEN``) or the admin token. The person types the token once into the
page; it is kept in the tab's ``sessionStorage`` (gone when the tab closes, never sent to another
origin, never in a URL or a cookie, so no cross-site request can carry it: no CSRF). The page's
Content-Security-Policy allows scripts from this origin only, which keeps injected script away from
that storage. With neither token configured the dashboard is off: the page answers 403 saying so.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.api.dashboard_data import dashboard_data
from service.api.deps import SessionDep, StateDep
from service.api.state import ServiceState
from service.store.timeseries import MAX_BUCKETS, logged_baseline, make_window

STATIC = Path(__file__).resolve().parent / "static"
BASELINE_TTL_S = 60.0
"""The logs' baseline scans every logged row; it changes only on an import, so it is cached a minute."""
MAX_MINUTES = 31 * 24 * 60
SECURITY_HEADERS = {
    # Scripts and data from this origin only; uPlot sets inline styles on its elements.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
OFF_MESSAGE = (
    "The dashboard is off: no viewer or admin token is configured. Set DQFD_VIEWER_TOKEN (read-only) "
    "or DQFD_ADMIN_TOKEN and restart the service."
)

router = APIRouter(include_in_schema=False)


def _tokens(state: ServiceState) -> list[bytes]:
    found = (state.settings.viewer_token, state.settings.admin_token)
    return [t.get_secret_value().encode() for t in found if t is not None and t.get_secret_value()]


def require_viewer(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """``Authorization: Bearer <viewer or admin token>``; with neither configured the dashboard is off."""
    tokens = _tokens(state)
    if not tokens:
        raise HTTPException(status.HTTP_403_FORBIDDEN, OFF_MESSAGE)
    scheme, _, given = (authorization or "").partition(" ")
    # Compare with every token (no early exit), so the time taken says nothing about which matched.
    matches = [secrets.compare_digest(given.encode(), t) for t in tokens]
    if scheme.lower() != "bearer" or not any(matches):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid viewer (or admin) bearer token is required",
            {"WWW-Authenticate": "Bearer"},
        )


@router.get("/dashboard", response_model=None)
def page(state: StateDep) -> FileResponse | HTMLResponse:
    """The dashboard's page (static; its data comes from ``/dashboard/data`` with the token)."""
    if not _tokens(state):
        body = f"<!doctype html><title>Dashboard off</title><p>{OFF_MESSAGE}</p>"
        return HTMLResponse(body, status.HTTP_403_FORBIDDEN, headers=SECURITY_HEADERS)
    return FileResponse(STATIC / "dashboard.html", headers=SECURITY_HEADERS)


def _baseline(request: Request, session: SessionDep) -> dict[str, Any]:
    """The logs' baseline, cached on this app for :data:`BASELINE_TTL_S`."""
    cached = getattr(request.app.state, "dashboard_baseline", None)
    if cached is not None and time.monotonic() - cached[0] < BASELINE_TTL_S:
        return cached[1]
    value = logged_baseline(session)
    request.app.state.dashboard_baseline = (time.monotonic(), value)
    return value


@router.get("/dashboard/data", dependencies=[Depends(require_viewer)])
def data(
    request: Request,
    state: StateDep,
    session: SessionDep,
    minutes: Annotated[float, Query(gt=0, le=MAX_MINUTES, description="the window: the last N minutes")] = 30,
    buckets: Annotated[int, Query(ge=1, le=MAX_BUCKETS, description="points per chart")] = 60,
) -> dict[str, Any]:
    """The charts' numbers for the last ``minutes`` in ``buckets`` time buckets."""
    now = datetime.now(UTC)
    window = make_window(now - timedelta(minutes=minutes), now, buckets)
    history = state.trainer.history if state.trainer is not None else None
    result = dashboard_data(session, window, now, history, _baseline(request, session))
    policy = state.store.policy
    result["serving"] = {
        "model_version": policy.model_version if policy else None,
        "policy_revision": policy.revision if policy else None,
        "trainer_in_process": state.trainer is not None,
    }
    return result


def add_routes(app: FastAPI) -> None:
    """The page, its data and its static files (the page's script and the vendored uPlot)."""
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
