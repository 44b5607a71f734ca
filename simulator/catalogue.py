"""The item catalogue: topic mixes, immediate appeal and long-term quality."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.config import SimulatorConfig


def item_id(index: int) -> str:
    """The public id of the item with action index ``index`` (``item_00042``)."""
    return f"item_{index:05d}"


def item_index(item: str) -> int:
    """The action index of a public item id (inverse of :func:`item_id`)."""
    if not item.startswith("item_"):
        raise ValueError(f"not a simulator item id: {item!r}")
    return int(item[len("item_") :])


@dataclass(frozen=True)
class Catalogue:
    """A fixed catalogue of items. All arrays are indexed by action index.

    Attributes:
        topics: ``(n_items, n_topics)`` topic mixes, rows on the probability simplex.
        appeal: ``(n_items,)`` immediate appeal (click-bait) in (0, 1).
        quality: ``(n_items,)`` long-term quality in (-1, 1), negatively correlated with appeal.
    """

    topics: np.ndarray
    appeal: np.ndarray
    quality: np.ndarray

    @property
    def n_items(self) -> int:
        """Number of items."""
        return int(self.appeal.shape[0])

    @property
    def n_topics(self) -> int:
        """Number of topics."""
        return int(self.topics.shape[1])

    @property
    def primary_topic(self) -> np.ndarray:
        """``(n_items,)`` index of each item's dominant topic."""
        return np.argmax(self.topics, axis=1)

    @property
    def item_ids(self) -> list[str]:
        """Public ids in action-index order."""
        return [item_id(i) for i in range(self.n_items)]


def generate_catalogue(config: SimulatorConfig) -> Catalogue:
    """Generate the catalogue of ``config`` deterministically from ``config.catalogue_seed``.

    Each item draws a topic mix ``~ Dirichlet(topic_concentration)``, a click-bait factor ``z ~ N(0, 1)``
    and independent noise ``e ~ N(0, 1)``; then ``appeal = sigmoid(appeal_scale * z)`` and
    ``quality = tanh(quality_scale * (rho * z + sqrt(1 - rho^2) * e))`` with
    ``rho = quality_appeal_correlation``.
    """
    rng = np.random.default_rng(config.catalogue_seed)
    alpha = np.full(config.n_topics, config.topic_concentration)
    topics = rng.dirichlet(alpha, size=config.n_items)
    z = rng.standard_normal(config.n_items)
    e = rng.standard_normal(config.n_items)
    appeal = 1.0 / (1.0 + np.exp(-config.appeal_scale * z))
    rho = config.quality_appeal_correlation
    quality = np.tanh(config.quality_scale * (rho * z + np.sqrt(1.0 - rho**2) * e))
    return Catalogue(topics=topics, appeal=appeal, quality=quality)
