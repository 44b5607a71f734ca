"""Recommendation simulator for offline-to-online RL (pure NumPy + Gymnasium).

See ``docs/simulator.md`` for the dynamics, the observation layout and the measured policy returns.
"""

import gymnasium as gym

from simulator.catalogue import Catalogue, generate_catalogue, item_id, item_index
from simulator.config import SimulatorConfig
from simulator.env import RecommendationEnv, make_env
from simulator.policies import ExpertPolicy, OraclePolicy, Policy, RandomPolicy, make_policy

ENV_ID = "simulator/Recommendation-v0"
"""Gymnasium id: ``gymnasium.make(ENV_ID, config=SimulatorConfig(...))`` after ``import simulator``."""

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="simulator.env:RecommendationEnv")

__all__ = [
    "ENV_ID",
    "Catalogue",
    "ExpertPolicy",
    "OraclePolicy",
    "Policy",
    "RandomPolicy",
    "RecommendationEnv",
    "SimulatorConfig",
    "generate_catalogue",
    "item_id",
    "item_index",
    "make_env",
    "make_policy",
]
