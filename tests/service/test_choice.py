"""``choose`` against a plain reference: the fast paths (no mask when a request narrows nothing, top-k
without per-item NumPy scalars) must give exactly the reference's choice, ranking, scores and
propensity, with the same random draws."""

from __future__ import annotations

import numpy as np
import pytest

import service.serving.choice as serving
from agent.inference import NumpyQNetwork
from service.errors import InvalidInputError
from service.ingest.catalogue import Catalogue
from service.serving.choice import Choice, choose
from service.serving.policy_store import ServingPolicy

STATE_DIM = 5


def reference_choose(
    policy: ServingPolicy,
    state: list[float],
    state_dim: int,
    candidates: list[str] | None,
    exclude: list[str] | None,
    k: int,
    epsilon: float,
) -> Choice:
    """The straightforward masked version (the implementation before the fast paths)."""
    if len(state) != state_dim:
        raise InvalidInputError("state", field="state")
    vector = np.asarray(state, dtype=np.float32)
    if not np.isfinite(vector).all():
        raise InvalidInputError("state", field="state")
    catalogue = policy.catalogue
    if k > catalogue.n_actions:
        raise InvalidInputError("k", field="k")
    if candidates is not None:
        mask = np.zeros(catalogue.n_actions, dtype=bool)
        mask[catalogue.indices(candidates, "candidates", require_active=True)] = True
    else:
        mask = catalogue.active.copy()
    if exclude:
        mask[catalogue.indices(exclude, "exclude", require_active=False)] = False
    if not mask.any():
        raise InvalidInputError("none left", field="exclude")
    narrowed = candidates is not None or bool(exclude) or not catalogue.active.all()
    q = policy.q_values(vector[None, :], mask[None, :])[0]
    n_allowed = int(mask.sum())
    allowed = np.flatnonzero(mask)
    top = min(k, n_allowed)
    allowed_q = q[allowed]
    if top >= len(allowed):
        order = np.argsort(-allowed_q, kind="stable")[:top]
    else:
        part = np.argpartition(-allowed_q, top - 1)[:top]
        order = part[np.argsort(-allowed_q[part], kind="stable")]
    ranked = allowed[order]
    greedy = int(ranked[0])
    rng = serving._rng()
    explored = epsilon > 0 and rng.random() < epsilon
    action = int(allowed[rng.integers(n_allowed)]) if explored else greedy
    propensity = epsilon / n_allowed + (1.0 - epsilon if action == greedy else 0.0)
    ranking = [{"item_id": catalogue.item_ids[i], "score": float(q[i])} for i in ranked]
    return Choice(
        catalogue.item_ids[action],
        action,
        ranking,
        float(propensity),
        bool(explored),
        mask if narrowed else None,
    )


def _policy(rng: np.random.Generator, n_items: int, active: list[bool], ties: bool) -> ServingPolicy:
    hidden = 8
    head = rng.standard_normal((n_items + 1, hidden)).astype(np.float32)
    if ties:  # duplicated advantage rows: equal Q-values for several items
        head[1:] = head[1 + rng.integers(0, 3, n_items)]
    state_dict = {
        "trunk.0.weight": rng.standard_normal((hidden, STATE_DIM)).astype(np.float32),
        "trunk.0.bias": rng.standard_normal(hidden).astype(np.float32),
        "head.weight": head,
        "head.bias": np.zeros(n_items + 1, dtype=np.float32) if ties else rng.standard_normal(n_items + 1),
    }
    catalogue = Catalogue.build([f"item-{i}" for i in range(n_items)], active)
    return ServingPolicy(NumpyQNetwork(state_dict), catalogue, model_version=1)


def _same(a: Choice, b: Choice) -> None:
    assert (a.item_id, a.action_index, a.propensity, a.explored) == (
        b.item_id,
        b.action_index,
        b.propensity,
        b.explored,
    )
    assert a.ranking == b.ranking
    assert all(type(x["score"]) is float for x in a.ranking)
    assert type(a.action_index) is int and type(a.propensity) is float and type(a.explored) is bool
    if b.mask is None:
        assert a.mask is None
    else:
        assert a.mask is not None and np.array_equal(a.mask, b.mask)


@pytest.mark.parametrize("seed", range(40))
def test_choose_matches_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items = int(rng.choice([1, 2, 3, 7, 50, 300]))
    all_active = seed % 3 != 0
    active = [True] * n_items if all_active else list(rng.random(n_items) < 0.7)
    active[0] = True
    policy = _policy(rng, n_items, active, ties=seed % 4 == 0)
    ids = policy.catalogue.item_ids
    for trial in range(30):
        state = [float(x) for x in rng.standard_normal(STATE_DIM)]
        k = int(rng.integers(1, n_items + 1))
        epsilon = float(rng.choice([0.0, 0.01, 0.5, 1.0]))
        candidates = exclude = None
        if trial % 3 == 1:
            pool = [ids[i] for i in range(n_items) if active[i]]
            candidates = list(rng.choice(pool, size=int(rng.integers(1, len(pool) + 1)), replace=False))
        if trial % 5 == 2:
            exclude = list(rng.choice(ids, size=int(rng.integers(0, n_items)), replace=False))
        args = (policy, state, STATE_DIM, candidates, exclude, k, epsilon)
        draw_seed = int(rng.integers(1 << 30))
        outcomes = []
        for implementation in (choose, reference_choose):
            serving._rng_local.rng = np.random.default_rng(draw_seed)
            try:
                outcomes.append(implementation(*args))
            except InvalidInputError as exc:
                outcomes.append(exc.field)
        if isinstance(outcomes[1], str):
            assert outcomes[0] == outcomes[1]
        else:
            _same(outcomes[0], outcomes[1])
    del serving._rng_local.rng
