"""Each mechanism of the user model, checked in isolation with real values."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import env_with_user

from simulator import SimulatorConfig, generate_catalogue
from simulator.user import (
    UserState,
    budget_drain,
    click_probabilities,
    drift_interests,
    leave_probability,
    update_fatigue,
)

# Click logits of +-50 make clicks certain / impossible, isolating the other mechanisms.
ALWAYS_CLICK = {"click_bias": 50.0}
NEVER_CLICK = {"click_bias": -50.0}


def test_catalogue_trades_appeal_against_quality() -> None:
    config = SimulatorConfig()
    cat = generate_catalogue(config)
    assert cat.topics.shape == (100, 5)
    np.testing.assert_allclose(cat.topics.sum(axis=1), 1.0)
    assert np.all((cat.appeal > 0) & (cat.appeal < 1))
    assert np.all((cat.quality > -1) & (cat.quality < 1))
    assert np.corrcoef(cat.appeal, cat.quality)[0, 1] < -0.6
    # Fixed per config, independent of anything else.
    np.testing.assert_array_equal(generate_catalogue(config).quality, cat.quality)


def test_drift_formula_direction_and_magnitude() -> None:
    config = SimulatorConfig(drift_rate=0.1)
    interests = np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    item = np.array([0.0, 0.0, 1.0, 0.0, 0.0])
    new = drift_interests(interests, item, config)
    np.testing.assert_allclose(new, [0.54, 0.09, 0.19, 0.09, 0.09])
    delta = new - interests
    direction = item - interests
    cos = delta @ direction / (np.linalg.norm(delta) * np.linalg.norm(direction))
    assert cos == pytest.approx(1.0)
    assert np.linalg.norm(delta) == pytest.approx(0.1 * np.linalg.norm(direction))
    assert new.sum() == pytest.approx(1.0)


def test_env_drifts_interests_on_click_only() -> None:
    interests = np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    config = SimulatorConfig(**ALWAYS_CLICK)
    env = env_with_user(config, interests)
    item = 7
    _, reward, *_ = env.step(item)
    assert reward == 1.0
    expected = 0.9 * interests + 0.1 * env.catalogue.topics[item]
    np.testing.assert_allclose(env.hidden_state().interests, expected)

    env = env_with_user(SimulatorConfig(**NEVER_CLICK), interests)
    _, reward, *_ = env.step(item)
    assert reward == 0.0
    np.testing.assert_allclose(env.hidden_state().interests, interests)


def test_fatigue_grows_with_repetition_and_lowers_click_probability() -> None:
    config = SimulatorConfig()
    cat = generate_catalogue(config)
    topic = cat.topics[0]
    fatigue = np.zeros(config.n_topics)
    after_one = update_fatigue(fatigue, topic, config)
    after_two = update_fatigue(after_one, topic, config)
    np.testing.assert_allclose(after_one, topic)
    np.testing.assert_allclose(after_two, (0.7 + 1.0) * topic)
    interests = np.full(config.n_topics, 0.2)
    probs = [
        click_probabilities(UserState(interests, f, 10.0, 10.0), cat, config)[0]
        for f in (fatigue, after_one, after_two)
    ]
    assert probs[0] > probs[1] > probs[2]
    # The logit drops by exactly click_fatigue_weight * (fatigue . topics).
    logit = np.log(probs[1] / (1 - probs[1])) - np.log(probs[0] / (1 - probs[0]))
    assert logit == pytest.approx(-0.8 * topic @ topic)


def test_env_fatigue_decays_and_accumulates_per_recommendation() -> None:
    config = SimulatorConfig(**NEVER_CLICK)
    env = env_with_user(config)
    env.step(3)
    np.testing.assert_allclose(env.hidden_state().fatigue, env.catalogue.topics[3])
    env.step(5)
    expected = 0.7 * env.catalogue.topics[3] + env.catalogue.topics[5]
    np.testing.assert_allclose(env.hidden_state().fatigue, expected)


def test_budget_drain_formula_and_low_quality_drains_faster() -> None:
    config = SimulatorConfig()
    # step 0.5 + click (1.5 - 1.5 * q)
    assert budget_drain(True, -0.5, config) == pytest.approx(0.5 + 1.5 + 0.75)
    assert budget_drain(True, 0.5, config) == pytest.approx(0.5 + 1.5 - 0.75)
    assert budget_drain(False, -0.5, config) == pytest.approx(0.5)
    cat = generate_catalogue(config)
    low, high = int(np.argmin(cat.quality)), int(np.argmax(cat.quality))
    for item in (low, high):
        env = env_with_user(SimulatorConfig(**ALWAYS_CLICK), budget=20.0)
        env.step(item)
        expected = 20.0 - (0.5 + 1.5 - 1.5 * cat.quality[item])
        assert env.hidden_state().budget == pytest.approx(expected)
    assert budget_drain(True, cat.quality[low], config) > 2 * budget_drain(True, cat.quality[high], config)


def test_session_terminates_when_budget_runs_out() -> None:
    config = SimulatorConfig(**NEVER_CLICK, leave_skip_prob=0.0)
    env = env_with_user(config, budget=1.2)  # 0.5 per skipped step: ends on the 3rd step
    outcomes = [env.step(a)[2:4] for a in range(3)]
    assert outcomes == [(False, False), (False, False), (True, False)]
    with pytest.raises(RuntimeError):
        env.step(10)


def test_leave_rule() -> None:
    config = SimulatorConfig(leave_base_prob=0.1, leave_skip_prob=0.2)
    assert leave_probability(True, 0, config) == 0.0
    assert leave_probability(False, 1, config) == pytest.approx(0.3)
    assert leave_probability(False, 10, config) == 1.0
    # Certain leave after a skip, never after a click.
    env = env_with_user(SimulatorConfig(**NEVER_CLICK, leave_base_prob=1.0))
    _, _, terminated, truncated, info = env.step(0)
    assert terminated and not truncated and info["end_reason"] == "left"
    env = env_with_user(SimulatorConfig(**ALWAYS_CLICK, leave_base_prob=1.0))
    assert not env.step(0)[2]


def test_leave_frequency_matches_probability() -> None:
    config = SimulatorConfig(**NEVER_CLICK, leave_skip_prob=0.25)
    env = env_with_user(config)
    left = 0
    n = 1200
    for seed in range(n):
        env.reset(seed=seed)
        left += env.step(0)[2]
    assert left / n == pytest.approx(0.25, abs=0.04)  # 3.2 standard errors


def test_max_length_truncates() -> None:
    config = SimulatorConfig(**ALWAYS_CLICK, max_session_length=6, budget_quality_refund=0.0)
    env = env_with_user(config, budget=1000.0)
    flags = [env.step(a)[2:4] for a in range(6)]
    assert flags[:-1] == [(False, False)] * 5
    assert flags[-1] == (False, True)


def test_masks_block_served_items() -> None:
    config = SimulatorConfig(**NEVER_CLICK, leave_skip_prob=0.0)
    env = env_with_user(config)
    _, info = env.reset(seed=1)
    assert info["action_mask"].dtype == bool and info["action_mask"].all()
    _, _, _, _, info = env.step(4)
    assert not info["action_mask"][4] and info["action_mask"].sum() == 99
    with pytest.raises(ValueError, match="masked"):
        env.step(4)
    with pytest.raises(ValueError):
        env.step(100)
    windowed = env_with_user(SimulatorConfig(**NEVER_CLICK, leave_skip_prob=0.0, mask_window=1))
    windowed.step(4)
    windowed.step(5)
    assert windowed.action_mask()[4] and not windowed.action_mask()[5]
    with pytest.raises(ValueError, match="min_allowed_items"):
        SimulatorConfig(n_items=20, max_session_length=50)


def test_large_catalogue_keeps_observation_size() -> None:
    config = SimulatorConfig(n_items=10_000)
    env = env_with_user(config)
    obs, _, _, _, info = env.step(9_999)
    assert obs.shape == (17,) and info["action_mask"].shape == (10_000,)
