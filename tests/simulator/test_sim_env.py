"""Observation layout, hidden-state isolation, determinism and the Gymnasium API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from sim_helpers import env_with_user

import simulator
from simulator import RecommendationEnv, SimulatorConfig, make_env
from simulator.evaluate import run_sessions
from simulator.observation import observation_slices
from simulator.user import UserState


def test_spaces_and_reset() -> None:
    env = make_env(seed=3)
    obs, info = env.reset(seed=3)
    assert env.observation_space.shape == (17,) and env.action_space.n == 100
    assert obs.dtype == np.float32 and obs.shape == (17,)
    assert env.observation_space.contains(obs)
    assert info["action_mask"].shape == (100,)


def test_gymnasium_registration_and_checker() -> None:
    from gymnasium.utils.env_checker import check_env

    env = gym.make(simulator.ENV_ID, config=SimulatorConfig(n_items=30, max_session_length=20))
    assert env.action_space.n == 30
    with pytest.warns(UserWarning, match="infinity"):
        check_env(env.unwrapped, skip_render_check=True)


def test_observation_layout_without_noise() -> None:
    config = SimulatorConfig(interest_obs_noise=0.0, click_bias=50.0)
    interests = np.array([0.5, 0.2, 0.1, 0.1, 0.1])
    env = env_with_user(config, interests, budget=100.0)
    s = observation_slices(config)
    obs, *_ = env.step(2)
    cat = env.catalogue
    user = env.hidden_state()
    np.testing.assert_allclose(obs[s["interests"]], user.interests, atol=1e-6)
    np.testing.assert_allclose(obs[s["exposure"]], cat.topics[2], atol=1e-6)
    assert obs[s["position"]] == pytest.approx(1 / 50)
    assert obs[s["clicks"]] == pytest.approx(1 / 50)
    assert obs[s["click_ema"]] == pytest.approx(0.3)
    assert obs[s["quality_ema"]] == pytest.approx(0.3 * cat.quality[2], abs=1e-6)
    drain = 0.5 + 1.5 - 1.5 * cat.quality[2]
    assert obs[s["budget_proxy"]] == pytest.approx(1 - drain / 25.0, abs=1e-6)
    assert obs[s["last_click"]] == 1.0 and obs[s["skip_streak"]] == 0.0


def test_observation_never_contains_hidden_budget_or_fatigue() -> None:
    """With noise off, the observation is a function of the public history and the interests only:
    changing the hidden budget and fatigue leaves it unchanged."""
    config = SimulatorConfig(interest_obs_noise=0.0)
    interests = np.array([0.5, 0.2, 0.1, 0.1, 0.1])
    observations = []
    for budget, fatigue in ((30.0, 0.0), (5.0, 2.0)):
        env = RecommendationEnv(config)
        env.reset(seed=0)
        env.set_hidden_state(UserState(interests, np.full(5, fatigue), budget, budget))
        observations.append(env._observe())
    np.testing.assert_array_equal(observations[0], observations[1])
    assert 30.0 not in observations[0] and 5.0 not in observations[1]


def test_observed_interests_are_noisy() -> None:
    config = SimulatorConfig(interest_obs_noise=0.05)
    env = env_with_user(config)
    s = observation_slices(config)
    noise = np.stack([env._observe()[s["interests"]] - 0.2 for _ in range(400)])
    assert not np.any(noise == 0.0)
    assert noise.std() == pytest.approx(0.05, rel=0.1)


def test_same_seed_same_trajectory() -> None:
    a = run_sessions("expert", 5, seed=11)
    b = run_sessions("expert", 5, seed=11)
    c = run_sessions("expert", 5, seed=12)
    for x, y in zip(a, b, strict=True):
        assert x.actions == y.actions and x.rewards == y.rewards and x.end_reason == y.end_reason
        np.testing.assert_array_equal(np.stack(x.states), np.stack(y.states))
    assert [x.actions for x in a] != [x.actions for x in c]


def test_env_reset_seed_reproduces_user() -> None:
    env = RecommendationEnv()
    env.reset(seed=5)
    first = env.hidden_state()
    env.reset(seed=6)
    env.reset(seed=5)
    np.testing.assert_array_equal(env.hidden_state().interests, first.interests)
    assert env.hidden_state().budget == first.budget


def test_import_does_not_pull_heavy_dependencies() -> None:
    code = (
        "import sys, simulator, simulator.policies, simulator.evaluate; "
        "print(sorted(m for m in ('torch', 'fastapi', 'sqlalchemy') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
