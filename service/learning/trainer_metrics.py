"""The trainer's side of the Prometheus metrics (:mod:`service.metrics`): rewards per model version as
decisions become transitions, the lag until they are learned, updates and losses, replay sizes.

Recorded where the online loop already has the values in hand; nothing here reads the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from service.feedback.transitions import ReadyFacts
from service.metrics import (
    DEFAULT_REWARDS,
    LEARN_LAG,
    REPLAY_SIZE,
    REWARD,
    TRAINER_VERSION,
    TRANSITIONS_LEARNED,
)
from service.store.models import LiveTransition, utcnow


def record_built(rows: Iterable[LiveTransition], facts: dict[str, ReadyFacts]) -> None:
    """Each built transition's final reward (and whether it was the default one) under the model
    version that served its decision: ``dqfd_decision_reward`` and ``dqfd_default_rewards_total``."""
    for row in rows:
        fact = facts.get(row.event_id)
        version = str(fact.model_version) if fact is not None else "unknown"
        REWARD.labels(version).observe(row.reward)
        if row.default_reward_used:
            DEFAULT_REWARDS.labels(version).inc()


def record_learned(fact: ReadyFacts | None, now: datetime | None = None) -> None:
    """One transition entered the replay and was learned from: its lag since it became ready."""
    TRANSITIONS_LEARNED.inc()
    if fact is not None:
        LEARN_LAG.observe(max(0.0, ((now or utcnow()) - fact.ready_at).total_seconds()))


def record_replay(demonstrations: int, live: int, version: int | None) -> None:
    """The online agent's replay sizes and the version it learns from (0: none)."""
    REPLAY_SIZE.labels("demonstrations").set(demonstrations)
    REPLAY_SIZE.labels("live").set(live)
    TRAINER_VERSION.set(version or 0)
