"""Admin API of apprentice and shadow modes (docs/service.md, "Apprentice mode", "Shadow mode"):
``GET``/``POST /admin/apprentice`` and ``GET``/``POST /admin/shadow``.

A switch is stored in the database (:mod:`service.store.modes`): this replica follows it at once, the
others on their next model poll (``DQFD_MODEL_POLL_S``), as with an activation.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import SessionDep, StateDep, require_admin
from service.api.openapi import ADMIN, BODY, error
from service.api.schemas import MAX_DB_ID, StrictBool
from service.api.state import ServiceState
from service.ingest.catalogue import load_catalogue
from service.learning import live_demos
from service.learning.apprentice_gate import last_verdict
from service.learning.mode_value import estimate
from service.serving.model_check import validate_checkpoint
from service.store import mode_stats, registry, shape
from service.store.modes import set_apprentice, set_shadow_version

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=ADMIN)

# The newest decisions a report's estimate reads: bounds the time of a GET (~100 bytes a decision).
REPORT_MAX_DECISIONS = 20_000


class ApprenticeRequest(BaseModel):
    """Body of ``POST /admin/apprentice``."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool = Field(description="true: serve the requests' baseline_item; false: the model's")


class ShadowRequest(BaseModel):
    """Body of ``POST /admin/shadow``."""

    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, Field(strict=True, ge=1, le=MAX_DB_ID)] | None = Field(
        description="the stored model version to score beside the served one; null stops shadowing"
    )


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def apprentice_report(state: ServiceState, session: SessionDep) -> dict[str, Any]:
    """Whether apprentice mode is on, why, the agreement rate, the live demonstrations and the model's
    estimated value against the incumbent's."""
    modes = state.poller.modes
    counts = mode_stats.apprentice_counts(session)
    agent = getattr(getattr(state.trainer, "online_loop", None), "agent", None)
    demos = None
    if agent is not None:
        tally = live_demos.tally(agent)
        demos = {"added": tally.added, "dropped": tally.dropped, "limit": tally.limit}
    rows = mode_stats.apprentice_rows(session, REPORT_MAX_DECISIONS)
    model = estimate(rows, state.settings.promotion_min_ess)
    if not rows:
        model["reason"] = (
            "no apprentice decision with baseline_propensity and a final reward yet: the model's value "
            "against the incumbent needs the incumbent's propensity (send baseline_propensity on /act)"
        )
    return {
        "enabled": modes.apprentice_on(state.settings.mode),
        "switch": modes.apprentice,
        "reason": modes.apprentice_reason,
        "gate": last_verdict(session),  # the promotion gate's last verdict on switching (None: never)
        "mode_setting": state.settings.mode,
        "decisions": counts,
        "agreement_rate": _rate(counts["agreed"], counts["with_baseline"]),
        "live_demonstrations": demos,
        "model_vs_incumbent": model,
    }


def shadow_report(state: ServiceState, session: SessionDep) -> dict[str, Any]:
    """The shadow version, whether it is loaded, and per shadowed version its agreement rate, how many of
    its decisions carry its probability of the served item, and its estimated value."""
    modes = state.poller.modes
    versions = mode_stats.shadow_counts(session)
    for entry in versions:
        entry["agreement_rate"] = _rate(entry["agreed"], entry["decisions"])
        rows = mode_stats.shadow_rows(session, entry["version"], REPORT_MAX_DECISIONS)
        entry["estimate"] = estimate(rows, state.settings.promotion_min_ess)
    loaded = modes.shadow
    return {
        "version": modes.shadow_version,
        "loaded": loaded is not None and loaded.model_version == modes.shadow_version,
        "error": modes.shadow_error,
        "versions": versions,
    }


@router.get("/apprentice")
def get_apprentice(state: StateDep, session: SessionDep) -> dict[str, Any]:
    """Apprentice mode: on or off, agreement with the incumbent, live demonstrations, model vs incumbent."""
    return apprentice_report(state, session)


@router.post("/apprentice", responses=BODY)
def post_apprentice(body: ApprenticeRequest, state: StateDep, session: SessionDep) -> dict[str, Any]:
    """Switch apprentice mode on (serve the requests' baseline_item) or off (serve the model) for every
    replica; stored, so it outlives restarts and wins over ``DQFD_MODE``."""
    set_apprentice(session, body.enabled, "admin")
    session.commit()
    state.poller.modes.sync(session, state.store)
    return apprentice_report(state, session)


@router.get("/shadow")
def get_shadow(state: StateDep, session: SessionDep) -> dict[str, Any]:
    """Shadow mode: the version scored beside the served one and what its scoring logged."""
    return shadow_report(state, session)


@router.post(
    "/shadow",
    responses={
        **BODY,
        404: error("no such model version"),
        409: error("the version cannot serve (corrupt checkpoint, wrong shape, non-finite Q-values)"),
    },
)
def post_shadow(body: ShadowRequest, state: StateDep, session: SessionDep) -> dict[str, Any]:
    """Score a stored version on live traffic beside the served one (its choice and its probability of
    the served item are logged with each decision, nothing of it is served); ``null`` stops. The version
    is checked first, as an activation checks it (404 / 409 with the reason)."""
    if body.version is not None:
        width = shape.serving_width(state.store.configured_state_dim, session)
        n_actions = load_catalogue(session).n_actions
        validate_checkpoint(registry.load_checkpoint(session, body.version), body.version, n_actions, width)
    set_shadow_version(session, body.version)
    session.commit()
    state.poller.modes.sync(session, state.store)
    return shadow_report(state, session)


def mode_summary(state: ServiceState, session: SessionDep) -> dict[str, Any]:
    """The modes' lines of ``GET /admin/stats``: on/off, agreement rates (counts only, no estimate)."""
    modes = state.poller.modes
    counts = mode_stats.apprentice_counts(session)
    shadows = mode_stats.shadow_counts(session)
    current = next((s for s in shadows if s["version"] == modes.shadow_version), None)
    return {
        "apprentice": modes.apprentice_on(state.settings.mode),
        "apprentice_agreement_rate": _rate(counts["agreed"], counts["with_baseline"]),
        "decisions_with_baseline": counts["with_baseline"],
        "shadow_version": modes.shadow_version,
        "shadow_loaded": modes.shadow is not None,
        "shadow_agreement_rate": None if current is None else _rate(current["agreed"], current["decisions"]),
        "shadow_decisions": 0 if current is None else current["decisions"],
    }
