"""Checking a model version before it serves: its checkpoint decodes, fits the catalogue and the state
width, and gives finite Q-values on probe states.

The admin activation, the poller (a replica's start and every newly active version) and the policy
store (every published network, online weights included) use the same checks, so a version that
answers 409 on activation is also one no replica serves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.errors import ModelInvalidError, ModelWidthError
from service.serving.feature_policy import FeatureModel, validate_feature_model
from service.serving.policy_store import decode_checkpoint
from service.store.shape import StateWidth

PROBE_SEED = 0
"""The seed of the random probe state (fixed: the same version passes or fails the same way everywhere)."""


def _short(exc: BaseException) -> str:
    """``TypeName: first sentence of the message`` (at most 200 characters): a reason fits on one line
    (torch's own advice on loading, which follows, does not apply to a service)."""
    lines = str(exc).strip().splitlines()
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def probe_states(state_dim: int) -> np.ndarray:
    """Two states of ``state_dim`` features: all zeros and a seeded uniform one in [-1, 1] (inside any
    input bound the API accepts)."""
    rng = np.random.default_rng(PROBE_SEED)
    return np.stack([np.zeros(state_dim), rng.uniform(-1.0, 1.0, state_dim)]).astype(np.float32)


def probe_problem(network: Any, model_version: int) -> str | None:
    """Why ``network`` cannot serve judging by its Q-values on the probe states; None: they are finite."""
    try:
        q = np.asarray(network.q_values(probe_states(int(network.state_dim)), None))
    except Exception as exc:  # a network whose layers do not chain
        return f"model version {model_version} fails on a probe state ({_short(exc)})"
    if q.shape != (2, int(network.n_actions)) or not np.isfinite(q).all():
        return (
            f"model version {model_version} gives non-finite Q-values (NaN or infinity) on a probe "
            "state: its weights are corrupt"
        )
    return None


def actions_problem(model_version: int, model_actions: int, catalogue_size: int) -> str | None:
    """Why a fixed-head model of ``model_actions`` outputs cannot serve a catalogue of ``catalogue_size``
    items, or None. Fewer is fine: action indices are append-only, so output ``i`` still names item ``i``
    and the items added since are left out (:meth:`Catalogue.prefix`). More cannot happen on the same
    database (items are never deleted): the model was trained on another catalogue."""
    if model_actions <= catalogue_size:
        return None
    return (
        f"model version {model_version} has {model_actions} actions but the catalogue has {catalogue_size} "
        "items (items are never removed, so it was trained on another catalogue)"
    )


def known_active_problem(model_version: int, model_actions: int, active: np.ndarray) -> str | None:
    """Why a model knowing the first ``model_actions`` items has nothing to serve (every one of them is
    deactivated), or None."""
    if active[:model_actions].any():
        return None
    return (
        f"model version {model_version} knows none of the active items (it was trained on the first "
        f"{model_actions} items, all deactivated now): activate one of them, or retrain"
    )


def validate_checkpoint(
    checkpoint: bytes,
    model_version: int,
    n_actions: int,
    width: StateWidth,
    active: np.ndarray | None = None,
) -> Any:
    """The NumPy Q-network of ``checkpoint`` if it can serve with a catalogue of ``n_actions`` items and
    ``width``; else :class:`~service.errors.ModelInvalidError` (a width disagreement:
    :class:`~service.errors.ModelWidthError`) with a one-line reason. With the catalogue's ``active``
    flags, a model that knows none of the active items is refused too (the admin activation).

    A width that is not known yet, or whose sources disagree among themselves (``width.problem``, which
    no model can fix), is not held against the model.
    """
    try:
        network = decode_checkpoint(checkpoint)
    except Exception as exc:  # torch raises many kinds on corrupt bytes
        raise ModelInvalidError(
            f"model version {model_version}'s checkpoint cannot be loaded ({_short(exc)})", field="version"
        ) from None
    if isinstance(network, FeatureModel):  # any catalogue: every item is scored by its features
        return validate_feature_model(network, model_version, width, active)
    problem = actions_problem(model_version, int(network.n_actions), n_actions)
    if problem is None and active is not None:
        problem = known_active_problem(model_version, int(network.n_actions), active)
    if problem is not None:
        raise ModelInvalidError(problem, field="version")
    if width.problem is None and width.dim is not None and network.state_dim != width.dim:
        raise ModelWidthError(
            f"model version {model_version} takes {network.state_dim} features but {width.origin}",
            network.state_dim,
            field="version",
        )
    problem = probe_problem(network, model_version)
    if problem is not None:
        raise ModelInvalidError(problem, field="version")
    return network
