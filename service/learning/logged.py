"""The logged decisions an off-policy evaluation reads: served decisions with their rewards, and imported
log rows that carry a propensity, as NumPy arrays.

A served decision counts once its reward is known the way the trainer knows it
(:func:`service.feedback.transitions.build_ready_transitions`): its feedback (summed), or
``DQFD_DEFAULT_REWARD`` once its reward window closed without any; under ``aggregation=sum`` only when the
window closed. Every served decision counts, whichever version served it and whether it was learned from
(``"learn": false`` evaluation traffic is the cleanest evaluation data there is). Its logged propensity is
the exact probability of the served item under the policy that served it, whatever the exploration
settings were then, so the exploration parameters need not be stored: IPS and DR only need the logged
item's probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from service.ingest.catalogue import load_catalogue
from service.settings import Settings
from service.store.features import decode_mask
from service.store.models import Decision, Feedback, LoggedInteraction, utcnow


@dataclass
class LoggedDecisions:
    """One row per logged decision: its state and allowed-action mask (None: every action), the served
    action, its logged propensity and reward, its session (a cluster for the bootstrap) and source."""

    states: list[bytes] = field(default_factory=list)
    masks: list[np.ndarray | None] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    propensities: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    ks: list[int] = field(default_factory=list)
    """The request's ``k`` (its ranking's length; 1 for imported rows): serving's tie-breaking uses it."""
    n_served: int = 0
    n_imported: int = 0

    def __len__(self) -> int:
        return len(self.actions)

    def add(
        self,
        state: bytes,
        mask: np.ndarray | None,
        action: int,
        propensity: float,
        reward: float,
        session: str,
        k: int = 1,
    ) -> None:
        """Append one decision."""
        self.states.append(state)
        self.masks.append(mask)
        self.actions.append(action)
        self.propensities.append(propensity)
        self.rewards.append(reward)
        self.sessions.append(session)
        self.ks.append(max(1, k))


def load_logged(
    session: Session,
    settings: Settings,
    since: datetime | None,
    until: datetime | None,
    n_actions: int,
    include_imported: bool = True,
    now: datetime | None = None,
) -> LoggedDecisions:
    """The newest ``DQFD_EVALUATION_MAX_DECISIONS`` logged decisions in ``[since, until)`` with a known
    reward, served ones first, then imported rows with a propensity (by their timestamp; rows without one
    only when no range is given). Actions past ``n_actions`` (items added after the evaluated version
    was trained) are left out: that version cannot choose them."""
    now = now or utcnow()
    limit = settings.evaluation_max_decisions
    closed_before = now - timedelta(seconds=settings.reward_window_s)
    feedback = (
        select(
            Feedback.event_id,
            func.sum(Feedback.reward).label("reward"),
            func.count(Feedback.id).label("n"),
        )
        .group_by(Feedback.event_id)
        .subquery()
    )
    query = (
        select(
            Decision.event_id,
            Decision.session_id,
            Decision.state,
            Decision.allowed_mask,
            Decision.action_index,
            Decision.propensity,
            Decision.ranking,
            Decision.created_at,
            feedback.c.reward,
            feedback.c.n,
        )
        .outerjoin(feedback, feedback.c.event_id == Decision.event_id)
        .where(Decision.action_index < n_actions)
        # An apprentice decision served the incumbent's item; its logged propensity is a real
        # probability only when the client sent the incumbent's own (baseline_propensity).
        .where(or_(Decision.apprentice.is_(False), Decision.baseline_propensity.is_not(None)))
        .order_by(Decision.created_at.desc(), Decision.event_id.desc())
        .limit(limit)
    )
    if settings.aggregation == "sum":
        query = query.where(Decision.created_at <= closed_before)
    else:
        query = query.where((feedback.c.n > 0) | (Decision.created_at <= closed_before))
    if since is not None:
        query = query.where(Decision.created_at >= since)
    if until is not None:
        query = query.where(Decision.created_at < until)
    out = LoggedDecisions()
    for row in session.execute(query):
        reward = float(row.reward) if row.n else settings.default_reward
        out.add(
            row.state,
            decode_mask(row.allowed_mask, n_actions),
            int(row.action_index),
            float(row.propensity),
            reward,
            f"s:{row.session_id}" if row.session_id is not None else f"e:{row.event_id}",
            len(row.ranking or ()),
        )
    out.n_served = len(out)
    if include_imported and len(out) < limit:
        _load_imported(session, out, since, until, n_actions, limit - len(out))
    return out


def _load_imported(
    session: Session,
    out: LoggedDecisions,
    since: datetime | None,
    until: datetime | None,
    n_actions: int,
    limit: int,
) -> None:
    catalogue = load_catalogue(session)
    query = select(LoggedInteraction).where(LoggedInteraction.propensity.is_not(None))
    if since is not None or until is not None:
        query = query.where(LoggedInteraction.timestamp.is_not(None))
    if since is not None:
        query = query.where(LoggedInteraction.timestamp >= since)
    if until is not None:
        query = query.where(LoggedInteraction.timestamp < until)
    query = query.order_by(LoggedInteraction.id.desc()).limit(limit)
    before = len(out)
    for row in session.scalars(query):
        action = catalogue.index.get(row.item_id)
        propensity = float(row.propensity or 0.0)
        if action is None or action >= n_actions or not 0.0 < propensity <= 1.0:
            continue  # an item no longer in the catalogue, or one the version cannot choose
        mask = None
        if row.allowed_items is not None:
            mask = np.zeros(n_actions, dtype=bool)
            for item in row.allowed_items:
                index = catalogue.index.get(item)
                if index is not None and index < n_actions:
                    mask[index] = True
            mask[action] = True  # it was served, so it was allowed
        out.add(row.state, mask, action, propensity, float(row.reward), f"l:{row.session_id}")
    out.n_imported = len(out) - before
