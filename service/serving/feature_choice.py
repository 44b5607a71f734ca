"""Choosing an item with a feature-network policy (issue 15): retrieval, exact scoring, exploration.

:func:`service.serving.choice.choose` hands a request here when the served policy is a feature network
(:class:`~service.serving.feature_policy.FeatureNetwork`); the request's checks (state width, bounds, k)
are already done. The allowed set is the fixed-head one: active ∩ candidates ∖ exclude.

- With ``candidates`` (Personalizer-style "rank these"), every allowed candidate is scored exactly.
- Without, the top R allowed items by ⟨u, v_a⟩ are retrieved (R = max(100, 10·k),
  :data:`agent.item_inference.RETRIEVE_MIN` and ``RETRIEVE_PER_K``) and scored exactly; the ranking is
  their top k by exact Q. When R covers the allowed set, that is every allowed item.

Propensities (docs/service.md, "Item features"):

- ε-greedy stays exact: the greedy item (the best exactly scored item) is a deterministic function of the
  state and the allowed set, and exploration draws uniformly from *all* allowed items, so the served item
  has probability 1 − ε + ε/n (greedy) or ε/n (any other), n the number of allowed items.
- softmax draws from exp(Q/T) over the scored set (the candidates, or the R retrieved items): the
  propensity is the served item's probability under that policy, and an allowed item outside the
  retrieved set has probability 0 (off-policy estimates of a target that picks it have no support there).

:func:`feature_distribution` gives apprentice and shadow mode the same probabilities without scoring
every item of the catalogue.
"""

from __future__ import annotations

import numpy as np

from service.serving.choice import Choice, _rng, allowed_mask, softmax_draw, softmax_probabilities
from service.serving.feature_policy import FeatureNetwork
from service.serving.policy_store import ServingPolicy


def choose_by_features(
    policy: ServingPolicy,
    vector: np.ndarray,
    candidates: list[str] | None,
    exclude: list[str] | None,
    k: int,
    epsilon: float,
    exploration: str,
    temperature: float,
) -> Choice:
    """An exploring choice of a feature-network policy for the checked state ``vector`` (see the module
    docstring for the allowed set, the scored set and the propensities)."""
    network: FeatureNetwork = policy.network
    scorer = network.scorer
    catalogue = policy.catalogue
    if candidates is None and not exclude and catalogue.all_active:
        mask, narrowed, n_allowed = None, False, catalogue.n_actions
    else:
        mask, narrowed = allowed_mask(policy, candidates, exclude)
        n_allowed = int(np.count_nonzero(mask))
    u = scorer.network.state_vectors(vector)[0]
    if candidates is not None:
        pool = np.flatnonzero(mask)
    else:
        pool = scorer.retrieve(u, network.retrieve_count(k), mask)
        pool.sort()  # ties break towards the lower index, as the fixed-head ranking's stable sort does
    q = scorer.exact(u, pool)
    order = np.argsort(-q, kind="stable")[: min(k, pool.size)]
    greedy = int(pool[order[0]])
    rng = _rng()
    if exploration == "softmax":
        drawn, propensity = softmax_draw(q, temperature, rng.random())
        action = int(pool[drawn])
        explored = action != greedy
    else:
        explored = epsilon > 0 and rng.random() < epsilon
        if not explored:
            action = greedy
        elif mask is None:
            action = int(rng.integers(n_allowed))
        else:
            action = int(np.flatnonzero(mask)[rng.integers(n_allowed)])
        propensity = epsilon / n_allowed + (1.0 - epsilon if action == greedy else 0.0)
    item_ids = catalogue.item_ids
    ranking: list[dict[str, float | str]] = [
        {"item_id": item_ids[int(pool[i])], "score": float(q[i])} for i in order
    ]
    return Choice(
        item_ids[action], action, ranking, float(propensity), bool(explored), mask if narrowed else None
    )


def feature_distribution(
    policy: ServingPolicy,
    vector: np.ndarray,
    mask: np.ndarray | None,
    exploration: str,
    epsilon: float,
    temperature: float,
    greedy: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`service.serving.apprentice.policy_distribution` for a feature policy: the allowed items and
    each one's probability, without exact scores of the whole catalogue (O(n) per request).

    ε-greedy with ``greedy`` known (the served choice's first item) needs no scores at all; otherwise the
    greedy item and the softmax run over the allowed items retrieved for k ≤ 10 (R = 100: every allowed
    item when there are at most 100, e.g. a candidate list), the set :func:`choose_by_features` scores
    for such a k. Items outside it have probability 0 under softmax.
    """
    n = policy.catalogue.n_actions
    allowed = np.arange(n) if mask is None else np.flatnonzero(mask)
    if exploration != "softmax" and greedy is not None:
        probs = np.full(allowed.shape[0], epsilon / allowed.shape[0])
        probs[int(np.searchsorted(allowed, greedy))] += 1.0 - epsilon
        return allowed, probs
    network: FeatureNetwork = policy.network
    scorer = network.scorer
    u = scorer.network.state_vectors(vector)[0]
    pool = scorer.retrieve(u, network.retrieve_count(1), mask)
    pool.sort()
    q = scorer.exact(u, pool)
    positions = np.searchsorted(allowed, pool)
    if exploration == "softmax":
        probs = np.zeros(allowed.shape[0])
        probs[positions] = softmax_probabilities(q, temperature)
        return allowed, probs
    probs = np.full(allowed.shape[0], epsilon / allowed.shape[0])
    probs[positions[int(np.argmax(q))]] += 1.0 - epsilon
    return allowed, probs
