"""Configuration of the recommendation simulator.

Every constant of the dynamics lives in :class:`SimulatorConfig`; the step function reads them from
here and contains no magic numbers. The dynamics themselves are documented in ``docs/simulator.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class SimulatorConfig:
    """All parameters of the catalogue, the user model, the observation and the reference policies."""

    # ----------------------------------------------------------------------------------- catalogue
    n_items: int = 100
    """Number of items in the catalogue; actions are item indices in ``[0, n_items)``."""

    n_topics: int = 5
    """Number of latent topics; item topic mixes and user interests are distributions over them."""

    catalogue_seed: int = 0
    """Seed of the catalogue generator. The catalogue is fixed per config (it is the company's
    inventory) and does not change with the episode seed."""

    topic_concentration: float = 0.2
    """Dirichlet concentration of an item's topic mix; small values give items one dominant topic."""

    appeal_scale: float = 1.5
    """Standard deviation of the latent click-bait factor ``z`` before the logistic squashing:
    ``appeal = sigmoid(appeal_scale * z)``, in (0, 1)."""

    quality_appeal_correlation: float = -0.8
    """Correlation between the click-bait factor ``z`` and the pre-squash quality; negative values make
    immediate appeal and long-term quality trade off ("chocolate vs kale")."""

    quality_scale: float = 1.0
    """Scale of the pre-squash quality: ``quality = tanh(quality_scale * (rho * z + sqrt(1 - rho^2) * e))``,
    in (-1, 1), with ``rho = quality_appeal_correlation`` and ``e`` standard normal."""

    # ------------------------------------------------------------------------------------- users
    user_interest_concentration: float = 0.5
    """Dirichlet concentration of a new user's interests over topics (small = a few strong interests)."""

    budget_mean: float = 25.0
    """Mean initial session budget (abstract time units) of a new user."""

    budget_spread: float = 0.2
    """Relative half-width of the uniform initial budget: ``B0 ~ U(mean * (1 - s), mean * (1 + s))``."""

    # ------------------------------------------------------------------------------- click model
    click_bias: float = -4.0
    """Intercept of the click logit."""

    click_interest_weight: float = 10.0
    """Weight of the affinity ``interests . topics_i`` (in [0, 1]) in the click logit."""

    click_appeal_weight: float = 4.0
    """Weight of the item's immediate appeal (in (0, 1)) in the click logit."""

    click_fatigue_weight: float = 0.8
    """Weight of the fatigue ``fatigue . topics_i`` subtracted from the click logit."""

    reward_per_click: float = 1.0
    """Reward (engagement) of a click; a skipped recommendation gives 0."""

    # --------------------------------------------------------------------------- state dynamics
    drift_rate: float = 0.1
    """Interest drift on a click: ``interests <- (1 - drift_rate) * interests + drift_rate * topics_i``."""

    fatigue_decay: float = 0.7
    """Per-step decay of topic fatigue (and of the observed topic exposure): ``f <- decay * f + ...``."""

    fatigue_increment: float = 1.0
    """Fatigue added per recommendation (click or not) along the served item's topic mix."""

    budget_step_cost: float = 0.5
    """Budget spent on every step (looking at a recommendation), clicked or not."""

    budget_click_cost: float = 1.5
    """Extra budget spent when the user clicks, before the quality refund."""

    budget_quality_refund: float = 1.5
    """Quality discount of the click cost: a click drains ``click_cost - refund * quality`` extra, so
    low-quality (click-bait) consumption drains the budget faster."""

    leave_base_prob: float = 0.0
    """Probability of leaving after any skipped recommendation, before the skip-streak term."""

    leave_skip_prob: float = 0.02
    """Extra leave probability per consecutive skip: after a skip the user leaves with probability
    ``min(1, leave_base_prob + leave_skip_prob * consecutive_skips)``. Users never leave after a click."""

    max_session_length: int = 50
    """Sessions still running after this many steps are truncated (``truncated=True``)."""

    # ----------------------------------------------------------------------------- observation
    interest_obs_noise: float = 0.05
    """Standard deviation of the Gaussian noise of the observed interests (fresh at every step)."""

    ema_rate: float = 0.3
    """Update rate of the observed exponential moving averages (click rate, consumed quality)."""

    skip_streak_scale: float = 10.0
    """The observation reports ``min(consecutive_skips, scale) / scale``."""

    # ------------------------------------------------------------------------------------ masks
    mask_window: int | None = None
    """Items served in the last ``mask_window`` steps are not allowed again (None: the whole session)."""

    min_allowed_items: int = 5
    """The config is rejected unless at least this many items are always allowed."""

    # ----------------------------------------------------------------------- reference policies
    expert_temperature: float = 0.3
    """Softmax temperature (in click-logit units) of the myopic expert over its click-logit estimates."""

    expert_epsilon: float = 0.0
    """Probability that the expert instead picks uniformly among allowed items (mixed into propensities)."""

    oracle_epsilon: float = 0.0
    """Probability that the oracle picks uniformly among allowed items (0: deterministic, propensity 1)."""

    def __post_init__(self) -> None:
        if self.n_items < 1 or self.n_topics < 1:
            raise ValueError("n_items and n_topics must be positive")
        if self.max_session_length < 1:
            raise ValueError("max_session_length must be positive")
        if not -1.0 <= self.quality_appeal_correlation <= 1.0:
            raise ValueError("quality_appeal_correlation must lie in [-1, 1]")
        if self.n_items - self.effective_mask_window < self.min_allowed_items:
            raise ValueError(
                f"n_items={self.n_items} leaves fewer than min_allowed_items={self.min_allowed_items} "
                f"allowed when {self.effective_mask_window} recent items are masked; lower mask_window"
            )
        if self.expert_temperature <= 0:
            raise ValueError("expert_temperature must be positive")
        if not (0.0 <= self.expert_epsilon <= 1.0 and 0.0 <= self.oracle_epsilon <= 1.0):
            raise ValueError("epsilons must lie in [0, 1]")

    @property
    def effective_mask_window(self) -> int:
        """Number of most recent served items that are masked (the session length when unset)."""
        window = self.max_session_length if self.mask_window is None else self.mask_window
        return min(window, self.max_session_length)

    @property
    def obs_dim(self) -> int:
        """Length of the observation vector: ``2 * n_topics + 7`` (see :mod:`simulator.observation`)."""
        return 2 * self.n_topics + 7

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (JSON-serialisable)."""
        return asdict(self)

    def with_updates(self, **changes: Any) -> SimulatorConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
