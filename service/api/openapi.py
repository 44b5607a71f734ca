"""The OpenAPI document: the error bodies every route can answer with, and the served document's
``POST /act`` state width and examples, which follow the deployment (the width is learned from the
imported logs or ``DQFD_STATE_DIM`` at run time, so a static schema could not say it).
"""

from __future__ import annotations

import copy
from itertools import compress, islice
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    """One problem with a request: ``field`` names the parameter or body field, ``loc`` says where it
    was (``path``, ``query``, ``header`` or ``body`` first); both are absent when no field is at fault
    (e.g. the database is unavailable)."""

    loc: list[str] | None = None
    field: str | None = None
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx the service's own handlers produce."""

    detail: list[ErrorDetail]


class MessageResponse(BaseModel):
    """The body of the framework's own refusals (the admin API's 401 and 403, a body that cannot be
    read at all): one message."""

    detail: str


class Readiness(BaseModel):
    """The body of ``GET /readyz`` (200 ready; 503 with the problems)."""

    status: str = Field(description="ready or not ready")
    model_version: int | None
    problems: list[str]


RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying; absent when waiting cannot help",
        "schema": {"type": "string"},
    }
}


def error(description: str, **extra: Any) -> dict[str, Any]:
    """One ``responses=`` entry with the :class:`ErrorResponse` body."""
    return {"model": ErrorResponse, "description": description, **extra}


BODY = {
    400: {"model": MessageResponse, "description": "the request body cannot be read (e.g. not UTF-8)"},
    413: error("the request body is over DQFD_MAX_BODY_BYTES"),
}
INVALID = {422: error("an invalid parameter or body field (the body names it)")}
UNAVAILABLE = {503: error("the database is unavailable (Retry-After)", headers=RETRY_AFTER)}
ADMIN = {
    401: {"model": MessageResponse, "description": "no valid admin bearer token"},
    403: {"model": MessageResponse, "description": "the admin API is disabled: no admin token configured"},
    **INVALID,
    **UNAVAILABLE,
}
ACT = {
    **BODY,
    **INVALID,
    409: error(
        "the catalogue conflicts with serving: no item is active, or every candidate was added after "
        "the served fixed-head model was trained (the body says what to do)"
    ),
    503: error(
        "no model yet or database unavailable (Retry-After); or the model's state width disagrees "
        "with the logs or DQFD_STATE_DIM (no Retry-After: the body says what to fix)",
        headers=RETRY_AFTER,
    ),
}
FEEDBACK = {
    404: error("unknown event_id"),
    409: error("a conflicting reward, or the event's transition was already learned from"),
    **BODY,
    **INVALID,
    **UNAVAILABLE,
}
READYZ = {
    200: {"model": Readiness, "description": "a model is loaded and the database answers"},
    503: {"model": Readiness, "description": "not ready: the problems say why", "headers": RETRY_AFTER},
}


def _act_schema(document: dict[str, Any], width: int, item_ids: list[str], n_active: int) -> None:
    """Say ``width`` in ``ActRequest.state`` and make its examples valid for this deployment (``item_ids``:
    two active items, ``n_active`` of them in all)."""
    act = document.get("components", {}).get("schemas", {}).get("ActRequest")
    if act is None:
        return
    state = act["properties"]["state"]
    state["minItems"] = state["maxItems"] = width
    vector = [round(0.1 * ((i % 7) - 3), 1) for i in range(width)]
    examples: list[dict[str, Any]] = [{"state": vector, "session_id": "user-42", "k": 1}]
    if item_ids:
        examples[0]["k"] = min(3, n_active)
        examples.append({"state": vector, "candidates": item_ids[:2], "explore": False})
    # evaluation traffic: greedy, stored and answerable, never learned from
    examples.append({"state": vector, "session_id": "qa-1", "explore": False, "learn": False})
    act["examples"] = examples


def install_openapi(app: FastAPI) -> None:
    """Serve an OpenAPI document whose ``/act`` state has the served width (minItems = maxItems) and
    examples with a state of that width and real, active item ids. Rebuilt when the width or the
    catalogue changes, cached otherwise."""
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "base" not in cache:
            cache["base"] = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
                servers=app.servers,
            )
        state = getattr(app.state, "service", None)
        store = state.store if state is not None else None
        policy = store.policy if store is not None else None
        width = policy.network.state_dim if policy is not None else (store.state_dim if store else None)
        catalogue = store.catalogue if store is not None else None
        if "served" not in cache or cache["width"] != width or cache["catalogue"] is not catalogue:
            document = copy.deepcopy(cache["base"])
            if width is not None:
                items: list[str] = []
                n_active = 0
                if catalogue is not None:
                    items = list(islice(compress(catalogue.item_ids, catalogue.active), 2))
                    n_active = int(catalogue.active.sum())
                _act_schema(document, int(width), items, n_active)
            cache.update(width=width, catalogue=catalogue, served=document)
        return cache["served"]

    app.openapi = openapi  # type: ignore[method-assign]
