"""Logging and reference policies. All share :class:`Policy`'s interface:
``act(obs, mask, rng) -> (action, propensity)``, where ``propensity`` is the probability with which the
policy chose ``action`` in this state.

- :class:`ExpertPolicy`: the company's myopic recommender. It knows the click model and the catalogue's
  appeal and estimates click logits from the observation (noisy interests, fatigue from the public
  topic exposure), then samples from a softmax with temperature ``expert_temperature`` (plus optional
  ε-uniform). It ignores quality, so it chases click-bait.
- :class:`RandomPolicy`: uniform over allowed items.
- :class:`OraclePolicy`: an upper reference that reads the hidden state (exact interests, fatigue and
  budget). It picks the item with the largest *stationary session value*
  ``p_i * min(steps_left, budget / expected_drain_i)``: the expected clicks if the rest of the session
  looked like this item. With budget to spare this is the myopic choice; when the budget binds it
  maximises clicks per unit of budget. It is not optimal (it ignores drift, fatigue growth and leaving).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

from simulator.catalogue import Catalogue, generate_catalogue
from simulator.config import SimulatorConfig
from simulator.observation import observation_slices
from simulator.user import click_logits, click_probabilities, expected_drain

if TYPE_CHECKING:
    from simulator.env import RecommendationEnv


def masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax of ``scores`` over the True entries of ``mask``; masked entries get probability 0."""
    z = np.where(mask, scores, -np.inf)
    z = z - np.max(z)
    w = np.exp(z)
    return w / w.sum()


def _sample(probs: np.ndarray, rng: np.random.Generator) -> tuple[int, float]:
    """Inverse-CDF draw from ``probs`` (one uniform number); zero-probability entries are never drawn."""
    cdf = np.cumsum(probs)
    action = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    action = min(action, probs.shape[0] - 1)
    while probs[action] <= 0.0:  # guard against round-off at the top of the CDF
        action -= 1
    return action, float(probs[action])


class Policy(ABC):
    """Common interface of the simulator's policies."""

    name: str = "policy"

    @abstractmethod
    def action_probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``(n_items,)`` probabilities of each action in this state (0 on masked items, sums to 1)."""

    def act(self, obs: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[int, float]:
        """Sample an action; returns ``(action, propensity)`` with propensity = its probability."""
        return _sample(self.action_probabilities(obs, mask), rng)


class RandomPolicy(Policy):
    """Uniform over the allowed items."""

    name = "random"

    def action_probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Uniform probabilities over ``mask``."""
        mask = np.asarray(mask, dtype=bool)
        return mask / mask.sum()


class ExpertPolicy(Policy):
    """Myopic expert: softmax over its estimate of each item's click logit from the observation."""

    name = "expert"

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        catalogue: Catalogue | None = None,
        temperature: float | None = None,
        epsilon: float | None = None,
    ) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.catalogue = catalogue if catalogue is not None else generate_catalogue(self.config)
        self.temperature = self.config.expert_temperature if temperature is None else temperature
        self.epsilon = self.config.expert_epsilon if epsilon is None else epsilon
        self._slices = observation_slices(self.config)

    def estimated_logits(self, obs: np.ndarray) -> np.ndarray:
        """Click logits with the observed interests and fatigue ``fatigue_increment * exposure``."""
        interests = np.asarray(obs[self._slices["interests"]], dtype=np.float64)
        exposure = np.asarray(obs[self._slices["exposure"]], dtype=np.float64)
        fatigue = self.config.fatigue_increment * exposure
        return click_logits(interests, fatigue, self.catalogue, self.config)

    def action_probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``(1 - ε) * softmax(logits / temperature) + ε * uniform``, both over allowed items."""
        mask = np.asarray(mask, dtype=bool)
        probs = masked_softmax(self.estimated_logits(obs) / self.temperature, mask)
        if self.epsilon > 0:
            probs = (1.0 - self.epsilon) * probs + self.epsilon * mask / mask.sum()
        return probs


class OraclePolicy(Policy):
    """Long-horizon reference that reads the env's hidden state through ``env.hidden_state()``."""

    name = "oracle"

    def __init__(self, env: RecommendationEnv, epsilon: float | None = None) -> None:
        self.env = env
        self.epsilon = env.config.oracle_epsilon if epsilon is None else epsilon

    def session_values(self) -> np.ndarray:
        """``(n_items,)`` stationary session value ``p_i * min(steps_left, budget / E[drain_i])``."""
        cfg, cat = self.env.config, self.env.catalogue
        user = self.env.hidden_state()
        p = click_probabilities(user, cat, cfg)
        drain = expected_drain(p, cat.quality, cfg)
        steps_left = cfg.max_session_length - self.env.history.t
        horizon = np.minimum(steps_left, np.maximum(user.budget, 0.0) / np.maximum(drain, 1e-9))
        leave = np.minimum(1.0, cfg.leave_base_prob + cfg.leave_skip_prob * (user.consecutive_skips + 1))
        hazard = (1.0 - p) * leave
        survival = np.where(
            hazard > 1e-9, (1.0 - (1.0 - hazard) ** horizon) / np.maximum(hazard, 1e-9), horizon
        )
        return p * survival

    def action_probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Greedy on :meth:`session_values` (ties to the lowest index), mixed with ε-uniform."""
        mask = np.asarray(mask, dtype=bool)
        values = np.where(mask, self.session_values(), -np.inf)
        probs = np.zeros(mask.shape[0])
        probs[int(np.argmax(values))] = 1.0
        if self.epsilon > 0:
            probs = (1.0 - self.epsilon) * probs + self.epsilon * mask / mask.sum()
        return probs


POLICY_NAMES = ("expert", "random", "oracle")


def make_policy(name: str, env: RecommendationEnv) -> Policy:
    """The policy called ``name`` ("expert", "random" or "oracle") for ``env``."""
    if name == "expert":
        return ExpertPolicy(env.config, env.catalogue)
    if name == "random":
        return RandomPolicy()
    if name == "oracle":
        return OraclePolicy(env)
    raise ValueError(f"unknown policy {name!r}; choose from {POLICY_NAMES}")
