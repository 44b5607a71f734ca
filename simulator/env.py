"""The Gymnasium environment: one episode is one user session."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from simulator.catalogue import Catalogue, generate_catalogue
from simulator.config import SimulatorConfig
from simulator.observation import SessionHistory, build_observation
from simulator.user import (
    UserState,
    budget_drain,
    click_probability,
    drift_interests,
    leave_probability,
    sample_user,
    update_fatigue,
)


class RecommendationEnv(gym.Env):
    """A session of one user with the catalogue.

    ``reset(seed=...)`` draws a new user; ``step(action)`` recommends item ``action`` and returns
    ``(obs, reward, terminated, truncated, info)``. ``terminated`` is True when the budget runs out or
    the user leaves; ``truncated`` is True when the session reaches ``max_session_length`` without
    terminating. ``info["action_mask"]`` is the bool mask of items allowed at the *returned* state.

    One step, in order: click ``~ Bernoulli(p_click(item | hidden state))``; reward ``= reward_per_click
    * click``; budget ``-= budget_drain(click, quality)``; on a click interests drift toward the item's
    topics; fatigue decays and grows along the item's topics; the user leaves with
    ``leave_probability``; the session terminates if the budget is ``<= 0`` or the user left.
    """

    metadata = {"render_modes": []}  # noqa: RUF012  (Gymnasium convention)

    def __init__(self, config: SimulatorConfig | None = None, catalogue: Catalogue | None = None) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.catalogue = catalogue if catalogue is not None else generate_catalogue(self.config)
        if self.catalogue.n_items != self.config.n_items or self.catalogue.n_topics != self.config.n_topics:
            raise ValueError("catalogue shape does not match the config")
        self.observation_space = spaces.Box(
            low=-np.inf, high=np.inf, shape=(self.config.obs_dim,), dtype=np.float32
        )
        self.action_space = spaces.Discrete(self.config.n_items)
        self._user: UserState | None = None
        self._history = SessionHistory(self.config.n_topics)
        self._done = True

    # ------------------------------------------------------------------------------ gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new session with a new user. Same seed, same actions: identical trajectory."""
        super().reset(seed=seed)
        self._user = sample_user(self.config, self.np_random)
        self._history = SessionHistory(self.config.n_topics)
        self._done = False
        return self._observe(), self._info(clicked=None, end_reason=None)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Recommend item ``action``; see the class docstring for the order of the mechanisms."""
        if self._user is None or self._done:
            raise RuntimeError("call reset() before step() (the session is over)")
        action = int(action)
        if not 0 <= action < self.config.n_items:
            raise ValueError(f"action {action} outside [0, {self.config.n_items})")
        if not self._history.is_allowed(action, self.config):
            raise ValueError(f"action {action} is masked (served in the last mask_window steps)")
        cfg, cat, user = self.config, self.catalogue, self._user
        rng = self.np_random

        p_click = click_probability(user, cat, cfg, action)
        clicked = bool(rng.random() < p_click)
        reward = cfg.reward_per_click * float(clicked)
        budget = user.budget - float(budget_drain(clicked, float(cat.quality[action]), cfg))
        interests = drift_interests(user.interests, cat.topics[action], cfg) if clicked else user.interests
        fatigue = update_fatigue(user.fatigue, cat.topics[action], cfg)
        skips = 0 if clicked else user.consecutive_skips + 1
        left = bool(rng.random() < leave_probability(clicked, skips, cfg))
        self._user = UserState(
            interests=interests,
            fatigue=fatigue,
            budget=budget,
            initial_budget=user.initial_budget,
            consecutive_skips=skips,
        )
        self._history.record(action, clicked, cat, cfg)

        end_reason = None
        if budget <= 0.0:
            end_reason = "budget"
        elif left:
            end_reason = "left"
        terminated = end_reason is not None
        truncated = (not terminated) and self._history.t >= cfg.max_session_length
        if truncated:
            end_reason = "max_length"
        self._done = terminated or truncated
        return self._observe(), reward, terminated, truncated, self._info(clicked, end_reason)

    # --------------------------------------------------------------------------- accessors
    def action_mask(self) -> np.ndarray:
        """Bool mask of the items allowed now (also in ``info["action_mask"]``)."""
        return self._history.allowed_mask(self.config)

    def hidden_state(self) -> UserState:
        """A copy of the hidden user state. For the oracle reference policy and for tests ONLY: learning
        agents and logging policies must use the observation."""
        if self._user is None:
            raise RuntimeError("call reset() first")
        return self._user.copy()

    def set_hidden_state(self, user: UserState) -> None:
        """Overwrite the hidden user state (tests use it to check mechanisms in isolation)."""
        self._user = user.copy()

    @property
    def history(self) -> SessionHistory:
        """The public history of the current session."""
        return self._history

    # ----------------------------------------------------------------------------- helpers
    def _observe(self) -> np.ndarray:
        assert self._user is not None
        return build_observation(self._history, self._user.interests, self.config, self.np_random)

    def _info(self, clicked: bool | None, end_reason: str | None) -> dict[str, Any]:
        info: dict[str, Any] = {"action_mask": self.action_mask(), "t": self._history.t}
        if clicked is not None:
            info["clicked"] = clicked
        if end_reason is not None:
            info["end_reason"] = end_reason
        return info


def make_env(config: SimulatorConfig | None = None, seed: int | None = None) -> RecommendationEnv:
    """A :class:`RecommendationEnv` for ``config`` (default config if None). With ``seed`` the env's
    random generator is seeded (by a first ``reset(seed=seed)``); later ``reset()`` calls without a seed
    continue that stream, so a run of sessions is reproducible from one seed."""
    env = RecommendationEnv(config)
    if seed is not None:
        env.reset(seed=seed)
    return env
