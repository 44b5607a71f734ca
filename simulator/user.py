"""The hidden user state and the mechanisms that change it, as pure functions.

Each mechanism (click, drift, fatigue, budget drain, leaving) is a separate function so that it can be
tested in isolation; :class:`simulator.env.RecommendationEnv` composes them in the order documented in
``docs/simulator.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from simulator.catalogue import Catalogue
from simulator.config import SimulatorConfig


@dataclass(frozen=True)
class UserState:
    """The hidden state of the user in a session. Policies other than the oracle never see it.

    Attributes:
        interests: ``(n_topics,)`` latent interests on the probability simplex.
        fatigue: ``(n_topics,)`` non-negative per-topic fatigue from recent recommendations.
        budget: remaining session budget; the session terminates when it reaches 0.
        initial_budget: the budget the session started with.
        consecutive_skips: number of recommendations skipped in a row (drives leaving).
    """

    interests: np.ndarray
    fatigue: np.ndarray
    budget: float
    initial_budget: float
    consecutive_skips: int = 0

    def copy(self) -> UserState:
        """A deep copy (arrays copied)."""
        return replace(self, interests=self.interests.copy(), fatigue=self.fatigue.copy())


def sample_user(config: SimulatorConfig, rng: np.random.Generator) -> UserState:
    """Draw a new user: interests ``~ Dirichlet(user_interest_concentration)``, no fatigue, and a budget
    ``~ U(budget_mean * (1 - budget_spread), budget_mean * (1 + budget_spread))``."""
    interests = rng.dirichlet(np.full(config.n_topics, config.user_interest_concentration))
    low = config.budget_mean * (1.0 - config.budget_spread)
    high = config.budget_mean * (1.0 + config.budget_spread)
    budget = float(rng.uniform(low, high))
    return UserState(
        interests=interests,
        fatigue=np.zeros(config.n_topics),
        budget=budget,
        initial_budget=budget,
        consecutive_skips=0,
    )


def click_logits(
    interests: np.ndarray, fatigue: np.ndarray, catalogue: Catalogue, config: SimulatorConfig
) -> np.ndarray:
    """Click logits of every item: ``bias + w_i * (interests . topics) + w_a * appeal - w_f * (fatigue .
    topics)``. Quality does not enter: it only acts later, through the budget."""
    affinity = catalogue.topics @ interests
    tiredness = catalogue.topics @ fatigue
    return (
        config.click_bias
        + config.click_interest_weight * affinity
        + config.click_appeal_weight * catalogue.appeal
        - config.click_fatigue_weight * tiredness
    )


def click_probabilities(user: UserState, catalogue: Catalogue, config: SimulatorConfig) -> np.ndarray:
    """``(n_items,)`` probability that the user clicks each item if it is recommended now."""
    logits = click_logits(user.interests, user.fatigue, catalogue, config)
    return 1.0 / (1.0 + np.exp(-logits))


def click_probability(user: UserState, catalogue: Catalogue, config: SimulatorConfig, item: int) -> float:
    """Click probability of one item (same formula as :func:`click_probabilities`, cheaper)."""
    topics = catalogue.topics[item]
    logit = (
        config.click_bias
        + config.click_interest_weight * float(topics @ user.interests)
        + config.click_appeal_weight * float(catalogue.appeal[item])
        - config.click_fatigue_weight * float(topics @ user.fatigue)
    )
    return 1.0 / (1.0 + math.exp(-logit))


def drift_interests(interests: np.ndarray, item_topics: np.ndarray, config: SimulatorConfig) -> np.ndarray:
    """Interests after consuming an item: a convex step of size ``drift_rate`` toward its topic mix.

    The result stays on the simplex; the change is ``drift_rate * (item_topics - interests)``.
    """
    return (1.0 - config.drift_rate) * interests + config.drift_rate * item_topics


def update_fatigue(fatigue: np.ndarray, item_topics: np.ndarray, config: SimulatorConfig) -> np.ndarray:
    """Fatigue after a recommendation (clicked or not): ``decay * fatigue + increment * item_topics``."""
    return config.fatigue_decay * fatigue + config.fatigue_increment * item_topics


def budget_drain(
    clicked: bool | np.ndarray, quality: float | np.ndarray, config: SimulatorConfig
) -> float | np.ndarray:
    """Budget spent by one step: ``step_cost + clicked * (click_cost - quality_refund * quality)``.

    Works on scalars or arrays (e.g. ``clicked`` = click probabilities gives the expected drain).
    """
    return config.budget_step_cost + clicked * (
        config.budget_click_cost - config.budget_quality_refund * quality
    )


def expected_drain(click_prob: np.ndarray, quality: np.ndarray, config: SimulatorConfig) -> np.ndarray:
    """Expected budget drain of recommending items with these click probabilities and qualities."""
    return budget_drain(click_prob, quality, config)


def leave_probability(clicked: bool, consecutive_skips: int, config: SimulatorConfig) -> float:
    """Probability that the user leaves after this step. ``consecutive_skips`` counts this step's skip.

    Zero after a click; after a skip ``min(1, leave_base_prob + leave_skip_prob * consecutive_skips)``.
    """
    if clicked:
        return 0.0
    return float(min(1.0, config.leave_base_prob + config.leave_skip_prob * consecutive_skips))
