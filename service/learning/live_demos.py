"""Live demonstrations: the incumbent recommender's transitions in apprentice mode, added to the
demonstration part of an agent's replay (never to the agent part), so DQfD's margin loss pulls the model
towards the incumbent's choices as they are served (docs/algorithm.md, "Live demonstrations").

Each one enters as a one-step demonstration episode through the agent library's
:meth:`agent.dqfd.DQfDAgent.add_demonstration_episodes`, which appends to the demonstration part at any
time (its arrays and sum tree grow geometrically): its state, the incumbent's action and reward, and its
next state as the episode's final, bootstrapped state (none when it ended). The n-step return of a live
demonstration is therefore its one-step return: consecutive decisions of a session are learned as
separate one-step episodes, since their next decision may arrive after the window and in any order.

The demonstration part is never overwritten, so each agent keeps at most
``DQFD_APPRENTICE_MAX_DEMONSTRATIONS`` of them: past that, further ones are not learned (counted in
``dropped``; they stay in the database, and a retrained agent loads the oldest ones up to the bound).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.demonstrations import Episode
from service.learning import item_agents
from service.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_LIMIT: int = Settings.model_fields["apprentice_max_demonstrations"].default


@dataclass
class Tally:
    """An agent's live demonstrations: the bound, how many it holds and how many the bound turned away."""

    limit: int
    added: int = 0
    dropped: int = 0


_tallies: weakref.WeakKeyDictionary[Any, Tally] = weakref.WeakKeyDictionary()


def track(agent: Any, limit: int) -> Tally:
    """Start counting ``agent``'s live demonstrations against ``limit`` (a fresh or reloaded agent)."""
    tally = _tallies[agent] = Tally(limit)
    return tally


def tally(agent: Any) -> Tally:
    """``agent``'s counts (an agent never tracked gets the default bound)."""
    found = _tallies.get(agent)
    return found if found is not None else track(agent, DEFAULT_LIMIT)


def episode_of(t: Any, n_actions: int) -> Episode:
    """The one-step demonstration episode of a live transition (``service.feedback.transitions``)."""
    state = np.asarray(t.state, dtype=np.float32)
    masks = None
    if t.mask is not None or t.next_mask is not None:  # the episode's masks apply only with a first one
        masks = np.ones((1, n_actions), dtype=bool) if t.mask is None else np.asarray(t.mask, bool)[None, :]
    return Episode(
        states=state[None, :],
        actions=np.array([t.action], dtype=np.int64),
        rewards=np.array([t.reward], dtype=np.float64),
        terminated=bool(t.done),
        final_state=None if t.done else t.next_state,
        masks=masks,
        final_mask=t.next_mask,
    )


def add(agent: Any, t: Any) -> bool:
    """Add the live transition ``t`` to ``agent``'s demonstrations; False when the bound is reached.

    Raises ``ValueError`` (nothing added) for a value the agent's guards refuse, as ``observe`` does.
    """
    counts = tally(agent)
    if counts.added >= counts.limit:
        if counts.dropped == 0:
            log.warning(
                "the agent holds %d live demonstrations (DQFD_APPRENTICE_MAX_DEMONSTRATIONS): further "
                "incumbent transitions are not learned",
                counts.limit,
            )
        counts.dropped += 1
        return False
    if item_agents.is_item_agent(agent):  # the same one-step episode, as rows with compact allowed sets
        item_agents.add_live_demonstration(agent, t)
    else:
        agent.add_demonstration_episodes([episode_of(t, int(agent.n_actions))])
    counts.added += 1
    return True
