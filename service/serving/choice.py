"""Choosing an action for a request (pure NumPy) and logging the decision."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from service.errors import ConflictError, InvalidInputError
from service.serving.feature_policy import FeatureNetwork
from service.serving.policy_store import ServingPolicy
from service.store.features import encode_mask, encode_state
from service.store.models import Decision, utcnow

_rng_local = threading.local()

# uuid.uuid4().hex without the UUID object: the version (4) and variant (RFC 4122) bits set on 16 random
# bytes, as uuid.UUID(bytes=..., version=4) sets them.
_UUID4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID4_SET = (0x8000 << 48) | (4 << 76)


def new_event_id() -> str:
    """A random event id: the 32 hex digits of a version-4 UUID."""
    return f"{int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET:032x}"


def _rng() -> np.random.Generator:
    # numpy Generators are not thread-safe; the threadpool gets one per thread.
    rng = getattr(_rng_local, "rng", None)
    if rng is None:
        rng = _rng_local.rng = np.random.default_rng()
    return rng


@dataclass(frozen=True)
class Choice:
    """The outcome of one decision before it is stored."""

    item_id: str
    action_index: int
    ranking: list[dict[str, float | str]]
    propensity: float
    explored: bool
    mask: np.ndarray | None


def allowed_mask(
    policy: ServingPolicy, candidates: list[str] | None, exclude: list[str] | None
) -> tuple[np.ndarray, bool]:
    """Allowed actions (active ∩ candidates ∖ exclude) and whether the request narrowed them.

    The policy's catalogue holds the items its model knows (:meth:`Catalogue.prefix`): candidates added
    to the catalogue after a fixed-head model was trained are left out of the ranking, and a request
    naming only such candidates is a 409 (field ``candidates``); excluding them changes nothing.
    """
    catalogue = policy.catalogue
    if candidates is not None:
        candidates, newer = catalogue.split_newer(candidates)
        if newer and not candidates:
            raise ConflictError(
                f"the served model version {policy.model_version} knows none of the candidates: "
                f"{newer[:10]} were added to the catalogue after it was trained (it ranks the first "
                f"{catalogue.n_actions} items; a retrain serves the others)",
                field="candidates",
            )
    elif not (catalogue.full or catalogue).active.any():
        raise ConflictError(
            "no item of the catalogue is active: activate items (python -m service import --items, or "
            "the items' active flag) before asking for recommendations",
            field="candidates",
        )
    elif not catalogue.active.any():
        raise ConflictError(
            f"the served model version {policy.model_version} knows none of the active items (it was "
            f"trained on the first {catalogue.n_actions} items, all deactivated now): activate one of "
            "them, or retrain",
            field="candidates",
        )
    if exclude:
        exclude = catalogue.split_newer(exclude)[0]
    if candidates is not None:
        mask = np.zeros(catalogue.n_actions, dtype=bool)
        mask[catalogue.indices(candidates, "candidates", require_active=True)] = True
    else:
        mask = catalogue.active.copy()
    if exclude:
        mask[catalogue.indices(exclude, "exclude", require_active=False)] = False
    if not mask.any():
        raise InvalidInputError("no allowed item is left after the exclusions", field="exclude")
    narrowed = candidates is not None or bool(exclude) or not catalogue.all_active
    return mask, narrowed


def softmax_probabilities(q: np.ndarray, temperature: float) -> np.ndarray:
    """``exp(q / temperature)`` normalised, in float64. The maximum is subtracted before dividing, so no
    temperature, however small, overflows: every exponent is ≤ 0 and the best item's is exactly 0."""
    z = np.asarray(q, dtype=np.float64)
    weights = np.exp((z - z.max()) / temperature)
    return weights / weights.sum()


def softmax_draw(q: np.ndarray, temperature: float, uniform: float) -> tuple[int, float]:
    """An index drawn from :func:`softmax_probabilities` by inverse CDF with one uniform number in [0, 1),
    and its probability. An item of probability 0 (underflow at a tiny temperature) is never drawn."""
    probs = softmax_probabilities(q, temperature)
    cdf = np.cumsum(probs)
    index = min(int(np.searchsorted(cdf, uniform * cdf[-1], side="right")), probs.shape[0] - 1)
    while probs[index] <= 0.0:  # round-off at the top of the CDF: step back to an item that can be drawn
        index -= 1
    return index, float(probs[index])


def choose(
    policy: ServingPolicy,
    state: list[float],
    state_dim: int,
    candidates: list[str] | None,
    exclude: list[str] | None,
    k: int,
    epsilon: float,
    max_abs_state: float | None = None,
    exploration: str = "epsilon",
    temperature: float = 1.0,
) -> Choice:
    """An exploring choice over the allowed items with the ranking of the top-k by Q-value.

    ``exploration`` "epsilon": ε-greedy, the greedy item with probability 1 − ε + ε/n, each other allowed
    item with ε/n (n allowed items); ties are broken deterministically, so the greedy item is a function
    of the state and the allowed set and that propensity is exact. "softmax": Boltzmann over the allowed
    items' Q-values, ``p_a ∝ exp(Q_a / temperature)``, propensity ``p_a`` of the served item. ``epsilon``
    0 with "epsilon" is greedy (propensity 1). The propensity is always the probability of the served
    item under the policy that drew it, with the candidates and exclusions applied.

    A request that narrows nothing (no candidates, no exclusions, every item active) skips the mask:
    its allowed items are all actions, and the result is the one the masked path would give.
    A state value past ``max_abs_state`` (DQFD_MAX_ABS_STATE) is refused before it is stored or learned from.
    A feature-network policy chooses by retrieval, then exact scoring (service.serving.feature_choice).
    """
    if len(state) != state_dim:
        raise InvalidInputError(
            f"state must have {state_dim} values (the served model's state width), got {len(state)}",
            field="state",
        )
    if max_abs_state is not None:
        # On the request's float64 values: float32 rounding must not move a value across the bound.
        worst = max(map(abs, state), default=0.0)
        if worst > max_abs_state:
            raise InvalidInputError(
                f"state values must be within ±{max_abs_state:g} (DQFD_MAX_ABS_STATE), got |value| {worst:g}",
                field="state",
            )
    vector = np.asarray(state, dtype=np.float32)
    if not np.isfinite(vector).all():
        raise InvalidInputError("state must contain only finite numbers", field="state")
    catalogue = policy.catalogue
    n_actions = catalogue.n_actions
    if k > n_actions:
        full = catalogue.full
        known = "" if full is None else f" (the items the served model knows of {full.n_actions})"
        raise InvalidInputError(f"k must be at most the catalogue size {n_actions}{known}", field="k")
    if isinstance(policy.network, FeatureNetwork):  # retrieval, then exact scoring
        from service.serving.feature_choice import choose_by_features  # (it imports this module)

        return choose_by_features(policy, vector, candidates, exclude, k, epsilon, exploration, temperature)
    if candidates is None and not exclude and catalogue.all_active:
        mask = allowed = None
        q = policy.q_values(vector[None, :], None)[0]
        n_allowed = n_actions
        allowed_q = q
    else:
        mask, narrowed = allowed_mask(policy, candidates, exclude)
        q = policy.q_values(vector[None, :], mask[None, :])[0]
        allowed = np.flatnonzero(mask)
        n_allowed = len(allowed)
        allowed_q = q[allowed]
        if not narrowed:
            mask = None
    top = min(k, n_allowed)
    # argpartition, then a stable sort of the top-k only: O(n) for the long catalogues.
    negated = -allowed_q
    if top >= n_allowed:
        order = negated.argsort(kind="stable")[:top]
    else:
        part = negated.argpartition(top - 1)[:top]
        order = part[negated[part].argsort(kind="stable")]
    ranked = (order if allowed is None else allowed[order]).tolist()
    greedy = ranked[0]
    rng = _rng()
    if exploration == "softmax":
        drawn, propensity = softmax_draw(allowed_q, temperature, rng.random())
        action = drawn if allowed is None else int(allowed[drawn])
        explored = action != greedy
    else:
        explored = epsilon > 0 and rng.random() < epsilon
        if explored:
            drawn = int(rng.integers(n_allowed))
            action = drawn if allowed is None else int(allowed[drawn])
        else:
            action = greedy
        propensity = epsilon / n_allowed + (1.0 - epsilon if action == greedy else 0.0)
    item_ids = catalogue.item_ids
    scores = q[ranked].tolist()
    ranking: list[dict[str, float | str]] = [
        {"item_id": item_ids[i], "score": score} for i, score in zip(ranked, scores, strict=True)
    ]
    return Choice(item_ids[action], action, ranking, float(propensity), bool(explored), mask)


# A decision row's apprentice and shadow columns when neither mode applies (service.serving.apprentice).
NO_MODES: dict[str, Any] = {
    "baseline_item_id": None,
    "baseline_propensity": None,
    "apprentice": False,
    "model_item_id": None,
    "model_propensity": None,
    "shadow_version": None,
    "shadow_item_id": None,
    "shadow_propensity": None,
}


def decision_row(
    policy: ServingPolicy, state: list[float], session_id: str | None, choice: Choice, learn: bool = True
) -> dict[str, Any]:
    """The ``decisions`` row of one choice, with a new event id (``step`` is set when it is written).

    A decision not to learn from (``learn`` false: evaluation traffic) is stored as already handled by
    the transition builder, which therefore never reads it; its feedback is still accepted.
    """
    return {
        "event_id": new_event_id(),
        "session_id": session_id,
        "step": 0,
        "state": encode_state(state),
        "allowed_mask": encode_mask(choice.mask),
        "ranking": choice.ranking,
        "item_id": choice.item_id,
        "action_index": choice.action_index,
        "propensity": choice.propensity,
        "explored": choice.explored,
        "model_version": policy.model_version,
        "policy_revision": policy.revision,
        "created_at": utcnow(),
        "transition_built": not learn,
        "learn": learn,
        **NO_MODES,
    }


def store_decision(
    session: Session, policy: ServingPolicy, state: list[float], session_id: str | None, choice: Choice
) -> str:
    """Persist the decision in ``session`` and commit; returns its event id.

    The API writes through :class:`service.serving.decision_log.DecisionWriter` (group commit) instead.
    """
    row = decision_row(policy, state, session_id, choice)
    if session_id is not None:
        last = session.scalar(select(func.max(Decision.step)).where(Decision.session_id == session_id))
        row["step"] = 0 if last is None else last + 1
    session.execute(insert(Decision).values(**row))
    session.commit()
    return row["event_id"]
