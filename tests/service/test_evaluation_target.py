"""The evaluation's target policy is exactly the serving policy: for every choice ``choose`` makes, the
probability :func:`service.learning.evaluation.policy_probabilities` gives the served item (from the
decision's stored state and mask) equals the propensity ``choose`` logged, to the last bit, under ε-greedy
(ties included) and softmax, with and without candidates and exclusions."""

from __future__ import annotations

import numpy as np
import pytest

from agent.inference import NumpyQNetwork
from service.ingest.catalogue import Catalogue
from service.learning.evaluation import item_mean_rewards, policy_probabilities
from service.serving.choice import choose
from service.serving.policy_store import ServingPolicy
from service.settings import Settings

STATE_DIM = 3
N_ITEMS = 6


def _policy(rng: np.random.Generator, ties: bool) -> ServingPolicy:
    hidden = 8
    head = rng.standard_normal((N_ITEMS + 1, hidden)).astype(np.float32)
    if ties:  # duplicated advantage rows: equal Q-values, where serving breaks ties by the first item
        head[1:] = head[1 + rng.integers(0, 2, N_ITEMS)]
    state_dict = {
        "trunk.0.weight": rng.standard_normal((hidden, STATE_DIM)).astype(np.float32),
        "trunk.0.bias": rng.standard_normal(hidden).astype(np.float32),
        "head.weight": head,
        "head.bias": np.zeros(N_ITEMS + 1, dtype=np.float32),
    }
    catalogue = Catalogue.build([f"item-{i}" for i in range(N_ITEMS)], [True] * N_ITEMS)
    return ServingPolicy(NumpyQNetwork(state_dict), catalogue, model_version=1)


@pytest.mark.parametrize(("exploration", "ties"), [("epsilon", False), ("epsilon", True), ("softmax", False)])
def test_target_probability_is_the_logged_propensity(exploration: str, ties: bool) -> None:
    rng = np.random.default_rng(3)
    policy = _policy(rng, ties)
    settings = Settings(_env_file=None, exploration=exploration, epsilon=0.3, softmax_temperature=0.7)
    for trial in range(300):
        state = rng.standard_normal(STATE_DIM).round(3).tolist()
        candidates = [f"item-{i}" for i in range(4)] if trial % 3 == 1 else None
        exclude = ["item-2"] if trial % 3 == 2 else None
        choice = choose(
            policy,
            state,
            STATE_DIM,
            candidates,
            exclude,
            1 + trial % 4,  # k: serving's top-k selection decides among tied best items
            settings.epsilon,
            exploration=exploration,
            temperature=settings.softmax_temperature,
        )
        allowed = np.ones((1, N_ITEMS), dtype=bool) if choice.mask is None else choice.mask[None, :]
        q = policy.q_values(np.asarray([state], dtype=np.float32), allowed)
        ks, unmasked = np.array([len(choice.ranking)]), np.array([choice.mask is None])
        probs = policy_probabilities(q, allowed, settings, ks, unmasked)
        if exploration == "epsilon":  # the same expression on the same greedy item: bit for bit
            assert probs[0, choice.action_index] == choice.propensity
        else:  # the same exponentials, summed in another order
            assert probs[0, choice.action_index] == pytest.approx(choice.propensity, rel=1e-12)
        assert probs[0].sum() == pytest.approx(1.0) and (probs[0][~allowed[0]] == 0).all()


def test_item_mean_rewards_falls_back_to_the_overall_mean() -> None:
    model = item_mean_rewards(np.array([0, 0, 2]), np.array([1.0, 0.0, 4.0]), 4)
    assert model.tolist() == [0.5, 5 / 3, 4.0, 5 / 3]
