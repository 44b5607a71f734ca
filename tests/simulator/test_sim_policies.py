"""Logging and reference policies: propensities, masks, and the return ordering oracle > expert > random."""

from __future__ import annotations

import numpy as np
import pytest

from simulator import ExpertPolicy, OraclePolicy, RandomPolicy, RecommendationEnv, SimulatorConfig
from simulator.evaluate import run_sessions, summarize


def _state_with_mask(seed: int = 0) -> tuple[RecommendationEnv, np.ndarray, np.ndarray]:
    env = RecommendationEnv()
    obs, info = env.reset(seed=seed)
    for a in (1, 2, 3):
        obs, _, _, _, info = env.step(a)
    return env, obs, info["action_mask"]


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_expert_propensities_sum_to_one_over_allowed(epsilon: float) -> None:
    env, obs, mask = _state_with_mask()
    expert = ExpertPolicy(env.config, env.catalogue, epsilon=epsilon)
    probs = expert.action_probabilities(obs, mask)
    assert probs.sum() == pytest.approx(1.0)
    assert np.all(probs[~mask] == 0.0) and np.all(probs[mask] > 0.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        action, propensity = expert.act(obs, mask, rng)
        assert mask[action] and propensity == pytest.approx(probs[action])
    if epsilon:
        assert probs.min(initial=1.0, where=mask) >= epsilon / mask.sum()


def test_expert_is_softmax_of_estimated_click_logits() -> None:
    env, obs, mask = _state_with_mask()
    expert = ExpertPolicy(env.config, env.catalogue)
    logits = expert.estimated_logits(obs)
    probs = expert.action_probabilities(obs, mask)
    i, j = np.flatnonzero(mask)[:2]
    assert np.log(probs[i] / probs[j]) == pytest.approx((logits[i] - logits[j]) / 0.3)
    # Myopic: its favourite item has higher appeal and lower quality than the catalogue average.
    best = int(np.argmax(np.where(mask, logits, -np.inf)))
    assert env.catalogue.appeal[best] > env.catalogue.appeal.mean()


def test_random_is_uniform_over_allowed() -> None:
    _, obs, mask = _state_with_mask()
    probs = RandomPolicy().action_probabilities(obs, mask)
    np.testing.assert_allclose(probs[mask], 1.0 / mask.sum())
    assert np.all(probs[~mask] == 0.0)


def test_oracle_is_deterministic_and_respects_mask() -> None:
    env, obs, mask = _state_with_mask()
    oracle = OraclePolicy(env)
    values = oracle.session_values()
    action, propensity = oracle.act(obs, mask, np.random.default_rng(0))
    assert propensity == 1.0 and mask[action]
    assert values[action] == np.max(values[mask])
    probs = OraclePolicy(env, epsilon=0.2).action_probabilities(obs, mask)
    assert probs.sum() == pytest.approx(1.0) and probs[action] == pytest.approx(0.8 + 0.2 / mask.sum())


def test_return_ordering_oracle_expert_random() -> None:
    config = SimulatorConfig()
    means = {
        p: summarize(run_sessions(p, 100, seed=2, config=config))["mean_return"]
        for p in ("oracle", "expert", "random")
    }
    assert means["oracle"] > 1.2 * means["expert"]
    assert means["expert"] > 1.2 * means["random"]
