"""What ``/act`` adds to a decision in apprentice and shadow modes (docs/service.md, "Apprentice mode",
"Shadow mode").

Apprentice mode: the request carries the incumbent recommender's choice (``baseline_item``); the service
serves it and logs what the model would have served, and the model's probability of the served item. A
served baseline item's propensity is the incumbent's (``baseline_propensity``) when the client sends it,
else 1: from the service's side the choice was given, and the incumbent's own probability is unknown.

Shadow mode: a second, stored version is scored on the same state and allowed items; its choice and its
probability of the *served* item, π_shadow(served | state), are logged, and nothing of it is served.

Probabilities are those of the policy as it would serve this request: the request's exploration (ε-greedy
or softmax, with its ε or temperature) over the request's allowed items, exactly as
:func:`service.serving.choice.choose` draws.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from service.errors import InvalidInputError
from service.serving.choice import Choice, softmax_probabilities
from service.serving.feature_policy import FeatureNetwork
from service.serving.policy_store import ServingPolicy
from service.serving.shadow import Modes

_rng_local = threading.local()


def _rng() -> np.random.Generator:
    # numpy Generators are not thread-safe; the threadpool gets one per thread.
    rng = getattr(_rng_local, "rng", None)
    if rng is None:
        rng = _rng_local.rng = np.random.default_rng()
    return rng


def policy_distribution(
    policy: ServingPolicy,
    vector: np.ndarray,
    mask: np.ndarray | None,
    exploration: str,
    epsilon: float,
    temperature: float,
    greedy: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The allowed action indices and the policy's probability of each, for one state.

    ``mask`` None allows every action (as :class:`Choice` stores it). ``greedy`` (an action index) is the
    ε-greedy policy's greedy action when the caller knows it (the served model's first-ranked item, so the
    tie-break is :func:`choose`'s); by default the first action of highest Q-value.
    """
    if isinstance(policy.network, FeatureNetwork):  # over the set choose() scores, not all n items
        from service.serving.feature_choice import feature_distribution  # (it imports choice)

        return feature_distribution(policy, vector, mask, exploration, epsilon, temperature, greedy)
    q = policy.q_values(vector[None, :], None if mask is None else mask[None, :])[0]
    allowed = np.arange(q.shape[0]) if mask is None else np.flatnonzero(mask)
    allowed_q = q[allowed]
    if exploration == "softmax":
        return allowed, softmax_probabilities(allowed_q, temperature)
    position = int(np.argmax(allowed_q)) if greedy is None else int(np.searchsorted(allowed, greedy))
    probs = np.full(allowed.shape[0], epsilon / allowed.shape[0])
    probs[position] += 1.0 - epsilon
    return allowed, probs


def shadow_fits(shadow: ServingPolicy, policy: ServingPolicy) -> bool:
    """Whether the shadow knows the same items as the served policy (the request's mask fits both)."""
    return shadow.catalogue.n_actions == policy.catalogue.n_actions


def baseline_index(policy: ServingPolicy, baseline_item: str, mask: np.ndarray | None) -> int:
    """The action index of the incumbent's choice; 422 (field ``baseline_item``) unless it is a known,
    active item the request allows (within ``candidates``, not in ``exclude``)."""
    index = int(policy.catalogue.indices([baseline_item], "baseline_item", require_active=True)[0])
    if mask is not None and not mask[index]:
        raise InvalidInputError(
            f"baseline_item {baseline_item!r} is not allowed by this request (it must be among the "
            "candidates and not excluded)",
            field="baseline_item",
        )
    return index


def apply_modes(
    row: dict[str, Any],
    choice: Choice,
    policy: ServingPolicy,
    modes: Modes,
    state: list[float],
    baseline: tuple[str | None, float | None],
    apprentice: bool,
    exploration: tuple[str, float, float],
) -> None:
    """Fill ``row`` (a decision row of ``choice``) for apprentice and shadow modes, in place.

    ``baseline`` is the request's (``baseline_item``, ``baseline_propensity``); ``apprentice`` whether
    this replica serves the baseline (a request without one is served by the model); ``exploration`` the
    request's (mode, ε, temperature). An apprentice decision is served the baseline item with propensity
    ``baseline_propensity`` or 1, ``explored`` false, and keeps the model's ranking.
    """
    baseline_item, baseline_propensity = baseline
    mode, epsilon, temperature = exploration
    vector = np.asarray(state, dtype=np.float32)
    if baseline_propensity is not None and baseline_item is None:
        raise InvalidInputError("baseline_propensity needs baseline_item", field="baseline_propensity")
    if baseline_item is not None:
        index = baseline_index(policy, baseline_item, choice.mask)
        row["baseline_item_id"] = baseline_item
        row["baseline_propensity"] = baseline_propensity
        if apprentice:
            greedy = policy.catalogue.index[choice.ranking[0]["item_id"]]
            allowed, probs = policy_distribution(
                policy, vector, choice.mask, mode, epsilon, temperature, greedy
            )
            row["model_item_id"] = choice.item_id
            row["model_propensity"] = float(probs[np.searchsorted(allowed, index)])
            row["item_id"], row["action_index"] = baseline_item, index
            row["propensity"] = 1.0 if baseline_propensity is None else baseline_propensity
            row["explored"], row["apprentice"] = False, True
    shadow = modes.shadow
    # A shadow trained on another catalogue size scores other items than the served model: left out.
    if shadow is not None and shadow.network.state_dim == vector.shape[0] and shadow_fits(shadow, policy):
        allowed, probs = policy_distribution(shadow, vector, choice.mask, mode, epsilon, temperature)
        drawn = _draw(probs)
        row["shadow_version"] = shadow.model_version
        row["shadow_item_id"] = shadow.catalogue.item_ids[int(allowed[drawn])]
        row["shadow_propensity"] = float(probs[np.searchsorted(allowed, row["action_index"])])


def _draw(probs: np.ndarray) -> int:
    """An index drawn from ``probs`` by inverse CDF; an index of probability 0 is never drawn."""
    cdf = np.cumsum(probs)
    index = min(int(np.searchsorted(cdf, _rng().random() * cdf[-1], side="right")), probs.shape[0] - 1)
    while probs[index] <= 0.0:
        index -= 1
    return index
