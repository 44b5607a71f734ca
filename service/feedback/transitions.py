"""Builds live transitions (s, a, r, s', done) from decisions and their feedback."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.feedback.recording import as_utc
from service.store.features import StoredMask, decode_allowed, decode_state
from service.store.models import Decision, Feedback, LiveTransition, utcnow

# Feedback racing the window's end must not be lost: default rewards wait this much longer.
WINDOW_GRACE_S = 2.0


@dataclass(frozen=True)
class Transition:
    """A live transition ready for ``agent.observe``."""

    state: np.ndarray
    action: int
    reward: float
    next_state: np.ndarray
    done: bool
    truncated: bool
    mask: np.ndarray | None
    next_mask: np.ndarray | None
    demonstration: bool = False
    """The incumbent's (an apprentice decision's): for the demonstration part of the replay."""
    allowed: StoredMask | None = None
    """``mask`` as stored (compact, with the catalogue size the decision saw): for the item agent."""
    next_allowed: StoredMask | None = None
    """``next_mask`` as stored."""


@dataclass(frozen=True)
class ReadyFacts:
    """What the metrics need to know of a built transition (service.metrics): the model version that
    served its decision, and when it became ready (its reward and next state known)."""

    model_version: int
    ready_at: datetime


def to_transition(row: LiveTransition, n_actions: int) -> Transition:
    """The agent-facing form of a stored live transition."""
    state = decode_state(row.state)
    # No next decision came within the window (``truncated`` in the table): the user left, which is
    # the end of the episode for the agent, so it is passed as terminal and nothing is bootstrapped
    # from the placeholder next state.
    next_state = decode_state(row.next_state) if row.next_state is not None else state
    allowed, next_allowed = decode_allowed(row.mask), decode_allowed(row.next_mask)
    return Transition(
        state,
        row.action_index,
        row.reward,
        next_state,
        row.done or row.truncated,
        row.truncated,
        None if allowed is None else allowed.dense(n_actions),
        None if next_allowed is None else next_allowed.dense(n_actions),
        bool(row.demonstration),
        allowed,
        next_allowed,
    )


def build_ready_transitions(
    session: Session,
    *,
    reward_window_s: float,
    default_reward: float,
    aggregation: str,
    limit: int = 1000,
    now: datetime | None = None,
    facts: dict[str, ReadyFacts] | None = None,
) -> list[LiveTransition]:
    """Turn the decisions whose reward and next state are known into stored live transitions (at most
    ``limit`` per call).

    The reward is the feedback (summed under ``sum``), or ``default_reward`` once the window closed
    without feedback. Under ``sum`` the reward is final only when the window has closed. The next
    state is the state of the session's next decision; a decision without a session, or with
    ``done`` feedback, is terminal; a session with no next decision within the window is truncated.

    Decisions served with ``"learn": false`` (evaluation traffic) never become transitions: the API
    stores them as built, and one found unbuilt is marked so here. They still count as their session's
    next decision: a learning step followed by an evaluation step gets that step's state as its next
    state (the state its action led to, bootstrapped from), and the chain ends there (the evaluation
    step's action and reward never enter the replay, so the next learning step starts a new episode
    in the agent's replay and no n-step return runs across the evaluation step).

    Feedback is learned in the order it arrives, whatever the number of decisions still waiting: the
    decisions with feedback are read in feedback order (keyset pages on ``Feedback.id``), then those
    whose window closed, oldest first. Decisions still waiting without feedback are never read.

    ``facts``, when given, receives the :class:`ReadyFacts` of each built transition by event id.
    """
    now = now or utcnow()
    closed_before = now - timedelta(seconds=reward_window_s + WINDOW_GRACE_S)
    page_rows = max(1, limit)
    built: list[LiveTransition] = []
    if aggregation != "sum":  # under ``sum`` nothing is final before its window closes
        cursor = 0
        while len(built) < limit:
            page = session.execute(
                select(Feedback.id, Decision)
                .join(Decision, Decision.event_id == Feedback.event_id)
                .where(Decision.transition_built.is_(False), Feedback.id > cursor)
                .order_by(Feedback.id)
                .limit(page_rows)
            ).all()
            if not page:
                break
            cursor = page[-1][0]
            unique = {d.event_id: d for _, d in page if not d.transition_built}
            built += _build(
                session, list(unique.values()), closed_before, default_reward, aggregation, now, facts
            )
            if len(page) < page_rows:
                break
    while len(built) < limit:
        # Every decision whose window closed is built below, so each page holds only new ones.
        closed = list(
            session.scalars(
                select(Decision)
                .where(Decision.transition_built.is_(False), Decision.created_at <= closed_before)
                .order_by(Decision.created_at, Decision.event_id)
                .limit(min(page_rows, limit - len(built)))
            )
        )
        if not closed:
            break
        made = _build(session, closed, closed_before, default_reward, aggregation, now, facts)
        built += made
        if not made:  # a page of unlearned decisions only (now marked): the next call goes on
            break
    session.commit()
    return built


def _build(
    session: Session,
    pending: list[Decision],
    closed_before: datetime,
    default_reward: float,
    aggregation: str,
    now: datetime,
    facts: dict[str, ReadyFacts] | None = None,
) -> list[LiveTransition]:
    """The live transitions of those ``pending`` decisions that are ready (added to ``session``)."""
    if not pending:
        return []
    feedback: dict[str, list[Feedback]] = {}
    for fb in session.scalars(select(Feedback).where(Feedback.event_id.in_([d.event_id for d in pending]))):
        feedback.setdefault(fb.event_id, []).append(fb)
    built: list[LiveTransition] = []
    for decision in pending:
        if not decision.learn:  # evaluation traffic is never learned from (the API stores it as built)
            decision.transition_built = True
            continue
        rows = feedback.get(decision.event_id, [])
        window_closed = as_utc(decision.created_at) <= closed_before
        if not window_closed and (not rows or aggregation == "sum"):
            continue
        reward = float(sum(r.reward for r in rows)) if rows else default_reward
        done = any(r.done for r in rows) or decision.session_id is None
        next_state = next_mask = successor = None
        truncated = False
        if not done:
            successor = session.scalar(
                select(Decision)
                # by time, not step: two replicas may number parallel decisions of a session alike
                .where(Decision.session_id == decision.session_id, Decision.created_at > decision.created_at)
                .order_by(Decision.created_at)
                .limit(1)
            )
            if successor is not None:
                next_state, next_mask = successor.state, successor.allowed_mask
            elif window_closed:
                truncated = True
            else:
                continue
        row = LiveTransition(
            event_id=decision.event_id,
            state=decision.state,
            action_index=decision.action_index,
            reward=reward,
            next_state=next_state,
            done=done,
            truncated=truncated,
            mask=decision.allowed_mask,
            next_mask=next_mask,
            default_reward_used=not rows,
            created_at=now,
            demonstration=decision.apprentice,  # the incumbent's choice was served: a live demonstration
        )
        decision.transition_built = True
        session.add(row)
        built.append(row)
        if facts is not None:
            closes = as_utc(decision.created_at) + (now - closed_before)  # when it is built without feedback
            known = [max(as_utc(r.created_at) for r in rows)] if rows and aggregation != "sum" else [closes]
            if successor is not None:
                known.append(as_utc(successor.created_at))
            elif truncated:
                known.append(closes)
            facts[decision.event_id] = ReadyFacts(decision.model_version, max(known))
    session.flush()
    return built
