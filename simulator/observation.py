"""The observation: a fixed-length float32 vector built from the public session history plus a noisy
view of the interests. It never contains the hidden fatigue, budget or exact interests.

Layout for ``K = n_topics`` (length ``2K + 7``; 17 with the default ``K = 5``):

====================  ==========================================================================
slice                 meaning
====================  ==========================================================================
``[0, K)``            noisy interests: ``interests + N(0, interest_obs_noise^2)`` (fresh each step)
``[K, 2K)``           topic exposure: ``sum_k fatigue_decay^k * topics(served_{t-1-k})`` (public)
``2K``                session position ``t / max_session_length``
``2K + 1``            clicks so far ``/ max_session_length``
``2K + 2``            EMA of clicks (rate ``ema_rate``)
``2K + 3``            EMA of the catalogue quality of clicked items (0 before the first click)
``2K + 4``            budget proxy ``1 - public_drain / budget_mean``, the drain formula applied to
                      the realised clicks and the catalogue qualities, against the *mean* budget
``2K + 5``            1 if the last recommendation was clicked, else 0
``2K + 6``            skip streak ``min(consecutive_skips, skip_streak_scale) / skip_streak_scale``
====================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.catalogue import Catalogue
from simulator.config import SimulatorConfig
from simulator.user import budget_drain


def observation_slices(config: SimulatorConfig) -> dict[str, slice | int]:
    """Named positions of the observation layout (see the module docstring)."""
    k = config.n_topics
    return {
        "interests": slice(0, k),
        "exposure": slice(k, 2 * k),
        "position": 2 * k,
        "clicks": 2 * k + 1,
        "click_ema": 2 * k + 2,
        "quality_ema": 2 * k + 3,
        "budget_proxy": 2 * k + 4,
        "last_click": 2 * k + 5,
        "skip_streak": 2 * k + 6,
    }


@dataclass
class SessionHistory:
    """Everything public about the current session: what was served and what was clicked."""

    n_topics: int
    served: list[int] = field(default_factory=list)
    clicks: list[bool] = field(default_factory=list)
    exposure: np.ndarray = field(init=False)
    click_ema: float = 0.0
    quality_ema: float = 0.0
    public_drain: float = 0.0
    consecutive_skips: int = 0

    def __post_init__(self) -> None:
        self.exposure = np.zeros(self.n_topics)
        self._mask: np.ndarray | None = None

    @property
    def t(self) -> int:
        """Number of steps taken so far."""
        return len(self.served)

    def record(self, action: int, clicked: bool, catalogue: Catalogue, config: SimulatorConfig) -> None:
        """Append one step (served ``action``, ``clicked`` or not) and update the summaries."""
        self.served.append(int(action))
        window = config.effective_mask_window
        if self._mask is not None and window > 0:
            self._mask[action] = False
            if len(self.served) > window:
                self._mask[self.served[-window - 1]] = True
        self.clicks.append(bool(clicked))
        self.exposure = config.fatigue_decay * self.exposure + catalogue.topics[action]
        rate = config.ema_rate
        self.click_ema = (1.0 - rate) * self.click_ema + rate * float(clicked)
        if clicked:
            self.quality_ema = (1.0 - rate) * self.quality_ema + rate * float(catalogue.quality[action])
            self.consecutive_skips = 0
        else:
            self.consecutive_skips += 1
        self.public_drain += float(budget_drain(bool(clicked), float(catalogue.quality[action]), config))

    def allowed_mask(self, config: SimulatorConfig) -> np.ndarray:
        """``(n_items,)`` bool mask: True except for items served in the last ``mask_window`` steps.

        The mask is kept up to date incrementally; a fresh copy is returned."""
        window = config.effective_mask_window
        if self._mask is None or self._mask.shape[0] != config.n_items:
            self._mask = np.ones(config.n_items, dtype=bool)
            if window > 0 and self.served:
                self._mask[self.served[-window:]] = False
        return self._mask.copy()

    def is_allowed(self, action: int, config: SimulatorConfig) -> bool:
        """Whether ``action`` is allowed now (same rule as :meth:`allowed_mask`, without a copy)."""
        window = config.effective_mask_window
        return window == 0 or action not in self.served[-window:]


def build_observation(
    history: SessionHistory,
    interests: np.ndarray,
    config: SimulatorConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """The observation vector (float32, length ``config.obs_dim``) for the current step.

    ``interests`` are the hidden interests; only a noisy copy enters the vector, drawn from ``rng``.
    """
    s = observation_slices(config)
    obs = np.zeros(config.obs_dim, dtype=np.float64)
    noise = rng.normal(0.0, config.interest_obs_noise, size=config.n_topics)
    obs[s["interests"]] = interests + noise
    obs[s["exposure"]] = history.exposure
    obs[s["position"]] = history.t / config.max_session_length
    obs[s["clicks"]] = sum(history.clicks) / config.max_session_length
    obs[s["click_ema"]] = history.click_ema
    obs[s["quality_ema"]] = history.quality_ema
    obs[s["budget_proxy"]] = 1.0 - history.public_drain / config.budget_mean
    obs[s["last_click"]] = float(history.clicks[-1]) if history.clicks else 0.0
    scale = config.skip_streak_scale
    obs[s["skip_streak"]] = min(history.consecutive_skips, scale) / scale
    return obs.astype(np.float32)
