"""The one place where domain errors become HTTP status codes."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service.api.schemas import ID_PATTERN
from service.api.serving_metrics import unavailable_reason
from service.errors import (
    ConflictError,
    InvalidInputError,
    NoModelError,
    NotFoundError,
    ServiceError,
    UnavailableError,
)
from service.metrics import DATABASE_ERRORS, UNAVAILABLE

log = logging.getLogger(__name__)

STATUS = {
    InvalidInputError: 422,
    NotFoundError: 404,
    ConflictError: 409,
    NoModelError: 503,
    UnavailableError: 503,
}
RETRY_AFTER_S = "5"


def _location(request: Request, field: str) -> str:
    """Where a request carried ``field``: its path, its query string, or (by default) its body."""
    if field in request.path_params:
        return "path"
    if field in request.query_params:
        return "query"
    return "body"


def _body(request: Request, exc: ServiceError) -> dict:
    detail = {"msg": exc.message, "type": type(exc).__name__}
    if exc.field is not None:
        detail["loc"] = [_location(request, exc.field), exc.field]
        detail["field"] = exc.field
    return {"detail": [detail]}


def _validation_detail(error: dict) -> dict:
    """One pydantic error as ``{loc, field, msg, type}``: ``field`` is the parameter's or body field's
    name (``loc`` says where it was); a body that is not JSON at all is the field ``body``, with the
    character offset in the message rather than in the field."""
    loc = [str(part) for part in error.get("loc", ())]
    kind = error.get("type")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "JSON decode error")
        offset = f" at character {loc[1]}" if len(loc) > 1 else ""
        msg = f"the request body is not valid JSON ({reason}{offset})"
        return {"loc": ["body"], "field": "body", "msg": msg, "type": kind}
    field = ".".join(loc[1:]) if loc[:1] in (["body"], ["path"], ["query"], ["header"]) else ".".join(loc)
    msg = error.get("msg")
    if kind == "string_pattern_mismatch" and (error.get("ctx") or {}).get("pattern") == ID_PATTERN:
        msg = "an id must not contain control characters (U+0000-U+001F, U+007F)"
    return {"loc": loc, "field": field or "body", "msg": msg, "type": kind}


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping of domain and database errors (never a 500 for a known cause)."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # The echoed input is left out: it may be huge or hold NaN, which JSON cannot carry.
        return JSONResponse({"detail": [_validation_detail(e) for e in exc.errors()]}, status_code=422)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        code = next((c for t, c in STATUS.items() if isinstance(exc, t)), 400)
        if code == 503:
            UNAVAILABLE.labels(unavailable_reason(exc)).inc()
        headers = {"Retry-After": RETRY_AFTER_S} if code == 503 and exc.retryable else None
        return JSONResponse(_body(request, exc), status_code=code, headers=headers)

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_away(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        DATABASE_ERRORS.labels("request").inc()
        UNAVAILABLE.labels("database").inc()
        return JSONResponse(
            {"detail": [{"msg": "the database is unavailable; retry shortly", "type": "UnavailableError"}]},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_S},
        )

    @app.exception_handler(DBAPIError)
    async def database_error(_request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return await database_away(_request, exc)
        raise exc
