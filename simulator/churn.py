"""Catalogue churn: items arrive and retire day by day (issue 15, "a catalogue that changes").

The fixed catalogue of :mod:`simulator.catalogue` is day 0 here. Every later day starts with retirements
(each live item independently, probability ``retire_prob``) and then arrivals (a Poisson number with mean
``arrival_rate``), whose public features are drawn exactly as the initial items' are. A *day* is a block of
``sessions_per_day`` consecutive sessions; the catalogue does not change inside a day.

Items are numbered in order of arrival and never renumbered, so day ``d``'s catalogue is a prefix of the
full schedule (``schedule.catalogue_on(d)``), retired items included, with a ``live`` mask; an environment
for day ``d`` (:class:`ChurnEnv`) masks retired items on top of the session's already-shown items.

The logging expert only knows the items it has logs for: those that arrived at least ``expert_lag_days``
days ago (its nightly rebuild), and on day 0 the whole day-0 catalogue, on which its logs were made.
:class:`KnownItemsPolicy` gives unknown items probability 0, unless no known item is allowed, when it falls
back to the wrapped policy over the allowed unknown items (unknown items rank last).

Nothing here changes :class:`simulator.env.RecommendationEnv` or the fixed catalogue: with no churn the
environment and policies behave exactly as before. The dynamics and their defaults are documented in
``docs/simulator.md`` ("Catalogue churn").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from simulator.catalogue import Catalogue, generate_catalogue
from simulator.config import SimulatorConfig
from simulator.env import RecommendationEnv
from simulator.policies import Policy

NEVER = np.iinfo(np.int64).max
"""``retire_day`` of an item that does not retire within the schedule."""


@dataclass(frozen=True)
class ChurnConfig:
    """Arrival and retirement rates, the length of a day, and what the logging expert knows."""

    days: int = 10
    """Online days after day 0 (the day the expert's logs were made); the schedule covers ``0 … days``."""

    sessions_per_day: int = 500
    """Sessions (users) per day: a day is this many consecutive sessions, the unit of churn and of the
    fixed-head agent's retraining schedule."""

    arrival_rate: float = 10.0
    """Mean new items per day (Poisson). With ``retire_prob`` it sets the stationary catalogue size
    ``arrival_rate / retire_prob`` (100, the default ``n_items``, so the size stays about constant)."""

    retire_prob: float = 0.1
    """Probability that a live item retires at the start of a day (geometric lifetime, mean 10 days)."""

    min_live_items: int = 60
    """Retirements stop before the live catalogue falls below this many items (it must leave at least
    ``min_allowed_items`` allowed after a whole session of masked items)."""

    seed: int = 0
    """Seed of the churn stream; day ``d`` draws from ``default_rng([seed, d])``, so a longer schedule
    keeps the days of a shorter one."""

    expert_lag_days: int = 1
    """The logging expert knows items that arrived at least this many days ago (1: rebuilt nightly, so it
    never recommends an item on the item's first day)."""

    def __post_init__(self) -> None:
        if self.days < 0 or self.sessions_per_day < 1:
            raise ValueError("days must be >= 0 and sessions_per_day >= 1")
        if self.arrival_rate < 0 or not 0.0 <= self.retire_prob <= 1.0:
            raise ValueError("arrival_rate must be >= 0 and retire_prob in [0, 1]")
        if self.expert_lag_days < 0:
            raise ValueError("expert_lag_days must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (JSON-serialisable)."""
        return asdict(self)


def draw_items(config: SimulatorConfig, rng: np.random.Generator, n: int) -> Catalogue:
    """``n`` items drawn as :func:`simulator.catalogue.generate_catalogue` draws them (same formulas, same
    order of draws: topic mixes, then click-bait factors, then quality noise), from ``rng``.

    With ``rng = default_rng(config.catalogue_seed)`` and ``n = config.n_items`` it returns the fixed
    catalogue exactly (tested).
    """
    alpha = np.full(config.n_topics, config.topic_concentration)
    topics = rng.dirichlet(alpha, size=n) if n else np.zeros((0, config.n_topics))
    z = rng.standard_normal(n)
    e = rng.standard_normal(n)
    appeal = 1.0 / (1.0 + np.exp(-config.appeal_scale * z))
    rho = config.quality_appeal_correlation
    quality = np.tanh(config.quality_scale * (rho * z + np.sqrt(1.0 - rho**2) * e))
    return Catalogue(topics=topics, appeal=appeal, quality=quality)


def _concat(a: Catalogue, b: Catalogue) -> Catalogue:
    return Catalogue(
        topics=np.concatenate([a.topics, b.topics]),
        appeal=np.concatenate([a.appeal, b.appeal]),
        quality=np.concatenate([a.quality, b.quality]),
    )


def _prefix(catalogue: Catalogue, n: int) -> Catalogue:
    return Catalogue(topics=catalogue.topics[:n], appeal=catalogue.appeal[:n], quality=catalogue.quality[:n])


@dataclass(frozen=True)
class ChurnSchedule:
    """Every item of the run, in order of arrival, with its arrival and retirement day.

    An item is live on day ``d`` when ``arrival_day <= d < retire_day``; it is *new* on its arrival day.
    """

    catalogue: Catalogue
    """All items that ever exist in the run; index = order of arrival (the initial items first)."""
    arrival_day: np.ndarray
    """``(n_total,)`` int64: 0 for the initial catalogue, else the day the item arrived."""
    retire_day: np.ndarray
    """``(n_total,)`` int64: the first day the item is no longer live (:data:`NEVER` if it stays)."""
    churn: ChurnConfig
    sim_config: SimulatorConfig

    @property
    def days(self) -> int:
        """The last day of the schedule (days run ``0 … days``)."""
        return self.churn.days

    @property
    def n_total(self) -> int:
        """Items that exist on some day of the schedule."""
        return self.catalogue.n_items

    def n_items_on(self, day: int) -> int:
        """Items arrived by ``day`` (live or retired): the width of that day's actions and masks."""
        self._check(day)
        return int(np.searchsorted(self.arrival_day, day, side="right"))

    def catalogue_on(self, day: int) -> Catalogue:
        """The catalogue of ``day``: the first :meth:`n_items_on` items, retired ones included."""
        return _prefix(self.catalogue, self.n_items_on(day))

    def live(self, day: int) -> np.ndarray:
        """``(n_items_on(day),)`` bool: the items that can be recommended on ``day``."""
        n = self.n_items_on(day)
        return (self.arrival_day[:n] <= day) & (day < self.retire_day[:n])

    def new(self, day: int) -> np.ndarray:
        """``(n_items_on(day),)`` bool: the items in their first day (none on day 0)."""
        n = self.n_items_on(day)
        return (self.arrival_day[:n] == day) & (day > 0)

    def known_to_expert(self, day: int) -> np.ndarray:
        """``(n_items_on(day),)`` bool: items the logging expert has logs for on ``day`` (arrived at least
        ``expert_lag_days`` ago, or on day 0)."""
        n = self.n_items_on(day)
        return self.arrival_day[:n] <= max(day - self.churn.expert_lag_days, 0)

    def config_on(self, day: int) -> SimulatorConfig:
        """The simulator config of ``day``: ``n_items`` = :meth:`n_items_on`, everything else unchanged."""
        return self.sim_config.with_updates(n_items=self.n_items_on(day))

    def env(self, day: int) -> ChurnEnv:
        """A fresh environment for ``day``'s catalogue with its retired items masked."""
        return ChurnEnv(self.config_on(day), self.catalogue_on(day), self.live(day))

    def arrivals(self, day: int) -> int:
        """Items that arrived on ``day`` (0 on day 0)."""
        return int(np.sum(self.arrival_day == day)) if day > 0 else 0

    def retirements(self, day: int) -> int:
        """Items that retired at the start of ``day``."""
        return int(np.sum(self.retire_day == day))

    def _check(self, day: int) -> None:
        if not 0 <= day <= self.days:
            raise ValueError(f"day {day} outside the schedule's 0 … {self.days}")


def generate_churn(sim_config: SimulatorConfig, churn: ChurnConfig | None = None) -> ChurnSchedule:
    """The churn schedule of ``sim_config``'s catalogue (day 0 = :func:`generate_catalogue`) over
    ``churn.days`` days, deterministic in ``churn.seed`` and ``sim_config.catalogue_seed``.

    Day ``d >= 1``, from ``rng = default_rng([churn.seed, d])``: every live item draws one uniform number and
    retires if it is below ``retire_prob`` (in index order; retirements that would leave fewer than
    ``min_live_items`` live items are dropped, the youngest first); then ``Poisson(arrival_rate)`` items
    arrive, drawn by :func:`draw_items`.
    """
    churn = churn if churn is not None else ChurnConfig()
    window = sim_config.effective_mask_window
    if churn.min_live_items - window < sim_config.min_allowed_items:
        raise ValueError(
            f"min_live_items={churn.min_live_items} leaves fewer than min_allowed_items="
            f"{sim_config.min_allowed_items} allowed after {window} masked items"
        )
    if sim_config.n_items < churn.min_live_items:
        raise ValueError("the initial catalogue is smaller than min_live_items")
    catalogue = generate_catalogue(sim_config)
    arrival = [np.zeros(catalogue.n_items, dtype=np.int64)]
    retire = np.full(catalogue.n_items, NEVER, dtype=np.int64)
    for day in range(1, churn.days + 1):
        rng = np.random.default_rng([churn.seed, day])
        live = np.flatnonzero(retire == NEVER)
        leaving = live[rng.random(live.shape[0]) < churn.retire_prob]
        room = live.shape[0] - churn.min_live_items
        leaving = leaving[: max(room, 0)]  # keep the oldest drawn ones; the youngest stay
        retire[leaving] = day
        k = int(rng.poisson(churn.arrival_rate))
        catalogue = _concat(catalogue, draw_items(sim_config, rng, k))
        arrival.append(np.full(k, day, dtype=np.int64))
        retire = np.concatenate([retire, np.full(k, NEVER, dtype=np.int64)])
    return ChurnSchedule(
        catalogue=catalogue,
        arrival_day=np.concatenate(arrival),
        retire_day=retire,
        churn=churn,
        sim_config=sim_config,
    )


class ChurnEnv(RecommendationEnv):
    """A :class:`RecommendationEnv` on one day's catalogue whose retired items are never allowed.

    The dynamics are the parent's; only the mask changes: ``action_mask()`` (and ``info["action_mask"]``)
    is the parent's mask and ``live``, and stepping a retired item raises ``ValueError``.
    """

    def __init__(self, config: SimulatorConfig, catalogue: Catalogue, live: np.ndarray) -> None:
        """Args:
        config: the day's config (``n_items`` = the catalogue's size).
        catalogue: the day's catalogue, retired items included (their indices stay valid).
        live: ``(n_items,)`` bool, the items that can be recommended.
        """
        live = np.asarray(live, dtype=bool)
        if live.shape != (catalogue.n_items,):
            raise ValueError(f"live must have shape ({catalogue.n_items},), got {live.shape}")
        if int(live.sum()) - config.effective_mask_window < config.min_allowed_items:
            raise ValueError("too few live items: a long session could run out of allowed items")
        self.live = live
        super().__init__(config, catalogue)

    def action_mask(self) -> np.ndarray:
        """The items allowed now: live and not shown in the last ``mask_window`` steps."""
        return super().action_mask() & self.live

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """As :meth:`RecommendationEnv.step`; a retired item raises ``ValueError``."""
        index = int(action)
        if 0 <= index < self.live.shape[0] and not self.live[index]:
            raise ValueError(f"action {index} is a retired item")
        return super().step(action)


class KnownItemsPolicy(Policy):
    """A policy restricted to the items it knows: unknown items get probability 0, unless no known item
    is allowed, when the wrapped policy chooses among the allowed unknown items (they rank last)."""

    def __init__(self, policy: Policy, known: np.ndarray) -> None:
        """Args:
        policy: the wrapped policy (e.g. :class:`~simulator.policies.ExpertPolicy` on the day's
            catalogue).
        known: ``(n_items,)`` bool, the items it has logs for.
        """
        self.policy = policy
        self.known = np.asarray(known, dtype=bool)
        self.name = f"{policy.name}_known"

    def action_probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The wrapped policy's probabilities over the allowed known items (over the allowed items when
        none of them is known)."""
        mask = np.asarray(mask, dtype=bool)
        known = mask & self.known
        return self.policy.action_probabilities(obs, known if known.any() else mask)
