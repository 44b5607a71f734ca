"""FastAPI dependencies: the request's database session, the service state, admin authentication."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status
from sqlalchemy.orm import Session

from service.api.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    """The process state created by the lifespan (async: no threadpool hop for an attribute read)."""
    return request.app.state.service


def get_session(state: Annotated[ServiceState, Depends(get_state)]) -> Iterator[Session]:
    """One session per request, closed (and rolled back if uncommitted) afterwards."""
    with state.sessions() as session:
        yield session


def require_admin(
    state: Annotated[ServiceState, Depends(get_state)],
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """``Authorization: Bearer <admin_token>``; with no token configured the admin API is disabled."""
    token = state.settings.admin_token
    if token is None or not token.get_secret_value():
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the admin API is disabled: no admin token is configured"
        )
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        given.encode(), token.get_secret_value().encode()
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid admin bearer token is required",
            {"WWW-Authenticate": "Bearer"},
        )


SessionDep = Annotated[Session, Depends(get_session)]
StateDep = Annotated[ServiceState, Depends(get_state)]
