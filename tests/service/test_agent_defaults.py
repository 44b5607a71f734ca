"""The service's DQfD defaults that differ from the paper's (docs/algorithm.md, "Service defaults and
why"): a target period derived from the pretraining budget, and the Q-filter on. No database involved."""

from __future__ import annotations

import pytest

from service.learning.agents import agent_config, new_agent
from service.settings import Settings, derived_target_update_period


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(
    ("pretrain_steps", "period"),
    [(0, 1000), (1, 1), (30, 15), (600, 300), (2000, 1000), (20_000, 1000), (750_000, 1000)],
)
def test_the_target_period_is_1000_but_at_most_half_the_pretraining(pretrain_steps: int, period: int) -> None:
    assert derived_target_update_period(pretrain_steps) == period
    assert agent_config(settings(pretrain_steps=pretrain_steps)).target_update_period == period


def test_defaults_are_the_budget_aware_ones_and_the_rest_stays_the_papers() -> None:
    config = agent_config(settings())
    assert settings().pretrain_steps == 20_000  # benchmarks/results/pretrain_budget.md
    assert (config.target_update_period, config.q_filter) == (1000, True)  # min(1000, 20_000 // 2)
    assert (config.lambda_margin, config.margin, config.margin_decay_demo_ratio) == (1.0, 0.8, None)
    assert new_agent(settings(), n_actions=3, state_dim=2).config.q_filter is True


def test_the_papers_behaviour_is_one_setting_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQFD_TARGET_UPDATE_PERIOD", "10000")
    monkeypatch.setenv("DQFD_Q_FILTER", "false")
    config = agent_config(settings())
    assert (config.target_update_period, config.q_filter) == (10_000, False)
    monkeypatch.setenv("DQFD_TARGET_UPDATE_PERIOD", "0")
    with pytest.raises(ValueError, match="target_update_period"):
        settings()
