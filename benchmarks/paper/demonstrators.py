"""Scripted demonstrators, one per task, and reproducible demonstration episodes.

Every demonstrator is a fixed rule over the observation: good, not optimal, and documented in
docs/paper_reproduction.md with its measured mean return. The module needs only NumPy and Gymnasium, so
the peer scripts (run in their own virtual environments) import it too and see the same demonstrations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

Policy = Callable[[np.ndarray, gym.Env], int]


def cartpole(obs: np.ndarray, env: gym.Env) -> int:
    """Push in the direction the pole is rotating (sign of the angular velocity only).

    It keeps the pole up for a while but ignores the angle and the cart, so the pole slowly leans over or
    the cart drifts off: about 180 of the possible 500."""
    return int(obs[3] > 0.0)


def acrobot(obs: np.ndarray, env: gym.Env) -> int:
    """Energy pumping: torque on the second joint in the direction it already rotates (about -80; the best
    policies reach about -60)."""
    return 2 if obs[5] > 0.0 else 0


def mountain_car(obs: np.ndarray, env: gym.Env) -> int:
    """Push in the direction of motion (full throttle), which swings the car up in one or two swings."""
    return 2 if obs[1] >= 0.0 else 0


def lunar_lander(obs: np.ndarray, env: gym.Env) -> int:
    """Gymnasium's own hand-written PID landing heuristic (gymnasium.envs.box2d.lunar_lander.heuristic)."""
    from gymnasium.envs.box2d.lunar_lander import heuristic

    return int(heuristic(env.unwrapped, obs))


DEMONSTRATORS: dict[str, Policy] = {
    "CartPole-v1": cartpole,
    "Acrobot-v1": acrobot,
    "MountainCar-v0": mountain_car,
    "LunarLander-v3": lunar_lander,
}


@dataclass
class DemoEpisode:
    """One demonstration episode as plain arrays (``final_state`` is set when it was truncated)."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    final_state: np.ndarray | None

    @property
    def ret(self) -> float:
        return float(self.rewards.sum())


def run_episode(env: gym.Env, policy: Policy, seed: int) -> DemoEpisode:
    """Roll out ``policy`` for one episode from ``env.reset(seed=seed)``."""
    obs, _ = env.reset(seed=seed)
    states, actions, rewards = [], [], []
    while True:
        action = policy(obs, env)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        states.append(np.asarray(obs, np.float32))
        actions.append(action)
        rewards.append(float(reward))
        obs = next_obs
        if terminated or truncated:
            final = None if terminated else np.asarray(obs, np.float32)
            return DemoEpisode(
                np.stack(states),
                np.asarray(actions, np.int64),
                np.asarray(rewards, np.float32),
                bool(terminated),
                final,
            )


def demonstrations(env_id: str, episodes: int, seed: int = 10_000) -> list[DemoEpisode]:
    """``episodes`` demonstrator episodes with reset seeds ``seed, seed + 1, ...`` (fully reproducible)."""
    env = gym.make(env_id)
    try:
        return [run_episode(env, DEMONSTRATORS[env_id], seed + i) for i in range(episodes)]
    finally:
        env.close()


def demonstrator_mean(env_id: str, episodes: int, seed: int = 20_000) -> tuple[float, float]:
    """Mean and standard deviation of the demonstrator's return over fresh evaluation episodes."""
    returns = [ep.ret for ep in demonstrations(env_id, episodes, seed)]
    return float(np.mean(returns)), float(np.std(returns))
