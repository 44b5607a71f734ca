"""Catalogue churn (simulator/churn.py): arrival and retirement counts, new items' features, the masks,
the expert that knows only logged items, determinism, and that nothing changes without churn."""

from __future__ import annotations

import numpy as np
import pytest

from simulator import RecommendationEnv, SimulatorConfig, generate_catalogue
from simulator.churn import NEVER, ChurnConfig, KnownItemsPolicy, draw_items, generate_churn
from simulator.evaluate import rollout, session_seeds
from simulator.policies import ExpertPolicy, RandomPolicy

CONFIG = SimulatorConfig()


def test_draw_items_reproduces_the_fixed_catalogue() -> None:
    drawn = draw_items(CONFIG, np.random.default_rng(CONFIG.catalogue_seed), CONFIG.n_items)
    fixed = generate_catalogue(CONFIG)
    assert np.array_equal(drawn.topics, fixed.topics)
    assert np.array_equal(drawn.appeal, fixed.appeal)
    assert np.array_equal(drawn.quality, fixed.quality)


def test_default_schedule_counts_for_seed_0() -> None:
    # The counts quoted in docs/simulator.md ("Catalogue churn").
    schedule = generate_churn(CONFIG, ChurnConfig(days=10, seed=0))
    assert [schedule.arrivals(d) for d in range(11)] == [0, 11, 11, 11, 10, 11, 7, 12, 13, 10, 6]
    assert [schedule.retirements(d) for d in range(11)] == [0, 11, 16, 7, 11, 9, 14, 11, 7, 15, 14]
    live = [100, 100, 95, 99, 98, 100, 93, 94, 100, 95, 87]
    assert [int(schedule.live(d).sum()) for d in range(11)] == live
    sizes = [schedule.n_items_on(d) for d in range(11)]
    assert sizes == [100 + sum(schedule.arrivals(k) for k in range(d + 1)) for d in range(11)]
    assert schedule.n_total == sizes[-1] == 202
    # Live count = yesterday's live - today's retirements + today's arrivals.
    for d in range(1, 11):
        expected = schedule.live(d - 1).sum() - schedule.retirements(d) + schedule.arrivals(d)
        assert schedule.live(d).sum() == expected


def test_initial_catalogue_and_day_0() -> None:
    schedule = generate_churn(CONFIG, ChurnConfig(days=3, seed=4))
    fixed = generate_catalogue(CONFIG)
    day0 = schedule.catalogue_on(0)
    assert day0.n_items == 100 and np.array_equal(day0.appeal, fixed.appeal)
    assert schedule.live(0).all() and not schedule.new(0).any() and schedule.known_to_expert(0).all()
    # Day 0's environment is the fixed catalogue's: same trajectories as RecommendationEnv.
    churned, plain = schedule.env(0), RecommendationEnv(CONFIG)
    for seed in session_seeds(5, 20):
        a = rollout(churned, ExpertPolicy(CONFIG, day0), seed, np.random.default_rng(seed))
        b = rollout(plain, ExpertPolicy(CONFIG), seed, np.random.default_rng(seed))
        assert a.actions == b.actions and a.rewards == b.rewards


def test_new_items_features_in_range_and_arrival_order() -> None:
    schedule = generate_churn(CONFIG, ChurnConfig(days=30, seed=1))
    c = schedule.catalogue
    assert np.all(c.topics >= 0) and np.allclose(c.topics.sum(axis=1), 1.0)
    assert np.all((c.appeal > 0) & (c.appeal < 1)) and np.all((c.quality > -1) & (c.quality < 1))
    assert np.all(np.diff(schedule.arrival_day) >= 0)  # indices in order of arrival
    retired = schedule.retire_day != NEVER
    assert np.all(schedule.retire_day[retired] > schedule.arrival_day[retired])
    # New items keep the catalogue's appeal/quality trade-off (rho = -0.8 on the latent factor).
    new = schedule.arrival_day > 0
    z = np.log(c.appeal[new] / (1 - c.appeal[new])) / CONFIG.appeal_scale
    assert np.corrcoef(z, np.arctanh(c.quality[new]))[0, 1] == pytest.approx(-0.8, abs=0.1)


def test_rates_over_a_long_schedule() -> None:
    churn = ChurnConfig(days=300, seed=2)
    schedule = generate_churn(CONFIG, churn)
    arrivals = np.array([schedule.arrivals(d) for d in range(1, 301)])
    retired_share = np.array([schedule.retirements(d) / schedule.live(d - 1).sum() for d in range(1, 301)])
    # Poisson(10): standard error of the mean sqrt(10 / 300) = 0.18; retirement share SE ~ 0.002.
    assert arrivals.mean() == pytest.approx(10.0, abs=0.6)
    assert retired_share.mean() == pytest.approx(0.1, abs=0.01)
    live = np.array([schedule.live(d).sum() for d in range(301)])
    assert live.min() >= churn.min_live_items and abs(live[100:].mean() - 100) < 8


def test_min_live_items_floor_retires_the_oldest() -> None:
    churn = ChurnConfig(days=3, retire_prob=1.0, min_live_items=60, seed=0)
    schedule = generate_churn(CONFIG, churn)
    for d in range(1, 4):
        assert schedule.live(d).sum() == 60 + schedule.arrivals(d)
    # Day 1: all 100 drawn, 40 may go: items 0..39 (in index order), 40..99 stay.
    assert np.array_equal(np.flatnonzero(schedule.retire_day == 1), np.arange(40))


def test_determinism_and_prefix_property() -> None:
    a = generate_churn(CONFIG, ChurnConfig(days=6, seed=7))
    b = generate_churn(CONFIG, ChurnConfig(days=6, seed=7))
    longer = generate_churn(CONFIG, ChurnConfig(days=9, seed=7))
    other = generate_churn(CONFIG, ChurnConfig(days=6, seed=8))
    assert np.array_equal(a.catalogue.topics, b.catalogue.topics)
    assert np.array_equal(a.retire_day, b.retire_day)
    n = a.n_total
    assert np.array_equal(longer.catalogue.quality[:n], a.catalogue.quality)
    assert np.array_equal(longer.arrival_day[:n], a.arrival_day)
    for d in range(7):
        assert np.array_equal(longer.live(d), a.live(d))
    assert not np.array_equal(other.arrival_day, a.arrival_day) or not np.array_equal(
        other.catalogue.appeal, a.catalogue.appeal
    )


def test_env_masks_retired_items() -> None:
    schedule = generate_churn(CONFIG, ChurnConfig(days=4, seed=0))
    env = schedule.env(3)
    live = schedule.live(3)
    assert env.config.n_items == schedule.n_items_on(3) == live.shape[0]
    _, info = env.reset(seed=1)
    assert np.array_equal(info["action_mask"], live)
    retired = int(np.flatnonzero(~live)[0])
    with pytest.raises(ValueError, match="retired"):
        env.step(retired)
    first = int(np.flatnonzero(live)[0])
    _, _, _, _, info = env.step(first)
    expected = live.copy()
    expected[first] = False
    assert np.array_equal(info["action_mask"], expected)


def test_expert_never_recommends_unknown_items() -> None:
    schedule = generate_churn(CONFIG, ChurnConfig(days=5, seed=3))
    for day in (1, 3, 5):
        env = schedule.env(day)
        known = schedule.known_to_expert(day)
        assert np.array_equal(known, schedule.arrival_day[: known.shape[0]] <= day - 1)
        assert not (known & schedule.new(day)).any()  # a first-day item is never known
        policy = KnownItemsPolicy(ExpertPolicy(env.config, env.catalogue), known)
        rng = np.random.default_rng(day)
        for seed in session_seeds(day, 30):
            episode = rollout(env, policy, seed, rng)
            assert all(known[a] for a in episode.actions)
            for state, mask in zip(episode.states, episode.masks, strict=True):
                probs = policy.action_probabilities(state, mask)
                assert probs[~known].sum() == 0.0 and probs.sum() == pytest.approx(1.0)


def test_known_items_policy_falls_back_to_unknown_items_last() -> None:
    known = np.array([True, True, False, False])
    policy = KnownItemsPolicy(RandomPolicy(), known)
    obs = np.zeros(17, dtype=np.float32)
    assert np.allclose(
        policy.action_probabilities(obs, np.array([True, True, True, False])), [0.5, 0.5, 0, 0]
    )
    # No known item allowed: the wrapped policy over the allowed unknown ones.
    assert np.allclose(
        policy.action_probabilities(obs, np.array([False, False, True, True])), [0, 0, 0.5, 0.5]
    )


def test_invalid_configs() -> None:
    with pytest.raises(ValueError, match="min_live_items"):
        generate_churn(CONFIG, ChurnConfig(min_live_items=50))
    with pytest.raises(ValueError):
        ChurnConfig(retire_prob=1.5)
    with pytest.raises(ValueError):
        ChurnConfig(sessions_per_day=0)
    schedule = generate_churn(CONFIG, ChurnConfig(days=2))
    with pytest.raises(ValueError, match="outside"):
        schedule.live(3)
