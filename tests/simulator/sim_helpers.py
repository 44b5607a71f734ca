"""Helpers shared by the simulator tests (a plain module, not a conftest, to avoid name clashes)."""

from __future__ import annotations

import numpy as np

from simulator import RecommendationEnv, SimulatorConfig
from simulator.user import UserState


def env_with_user(
    config: SimulatorConfig,
    interests: np.ndarray | None = None,
    budget: float = 100.0,
    seed: int = 0,
) -> RecommendationEnv:
    """An env reset with ``seed`` whose hidden user is replaced by a known one (no fatigue)."""
    env = RecommendationEnv(config)
    env.reset(seed=seed)
    if interests is None:
        interests = np.full(config.n_topics, 1.0 / config.n_topics)
    env.set_hidden_state(
        UserState(
            interests=np.asarray(interests, dtype=float),
            fatigue=np.zeros(config.n_topics),
            budget=budget,
            initial_budget=budget,
        )
    )
    return env
