"""Filling an agent's replay from the database: the logged demonstrations, then the stored live
transitions (all of them for a fresh or restored agent, or those after a known id when a retrained
agent catches up with the online loop).

Nothing here writes to the trainer: a job's agent fills while the online loop's agent learns, and the
counts (:class:`Filled`) become the trainer's only when their agent is adopted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from service.feedback.transitions import to_transition
from service.ingest.catalogue import Catalogue
from service.learning.demos import count_demonstrations, iter_demonstrations
from service.settings import Settings
from service.store.models import LiveTransition

# Live transitions read per query when a finished job's agent catches up with the online loop.
CATCH_UP_CHUNK_ROWS = 1000


class Filled(NamedTuple):
    """What :meth:`ReplayLoader.fill` put into an agent's replay."""

    demonstrations: int
    live: int
    last_live_id: int
    """The newest ``LiveTransition.id`` observed (0 when none): later rows are new to the agent."""


def observe(agent: Any, t: Any) -> None:
    """Store one live transition in the agent's replay."""
    agent.observe(t.state, t.action, t.reward, t.next_state, t.done, t.mask, t.next_mask)


class ReplayLoader:
    """Reads the demonstrations and the live transitions into an agent's replay."""

    def __init__(self, settings: Settings, engine: Engine, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions = session_factory

    def fill(self, agent: Any, catalogue: Catalogue, interrupt: Callable[[], None] | None = None) -> Filled:
        """Load the demonstrations and replay the live transitions into ``agent``; returns the counts.

        ``interrupt`` is called before every demonstration chunk and may raise to abandon the fill (a
        job whose trainer is stopping).
        """
        # Streamed chunk by chunk into a replay reserved once: peak memory is the replay plus one chunk.
        n = count_demonstrations(self.engine)
        replay = getattr(agent, "replay", None)
        if n and hasattr(replay, "reserve_demonstrations"):
            replay.reserve_demonstrations(n)
        loaded = 0
        chunks = iter_demonstrations(self.engine, catalogue, agent.state_dim, self.settings.demo_chunk_rows)
        try:
            for demos in chunks:
                if interrupt is not None:
                    interrupt()
                agent.add_demonstrations(
                    demos.states, demos.actions, demos.rewards, demos.dones, demos.episode_ids, demos.masks
                )
                loaded += len(demos)
        finally:
            chunks.close()  # release the database cursor now, also when interrupted
        live, last_live_id = self.replay_live(agent, catalogue)
        return Filled(loaded, live, last_live_id)

    def replay_live(self, agent: Any, catalogue: Catalogue) -> tuple[int, int]:
        """Observe the stored live transitions again (newest ``replay_capacity`` ones) in order; returns
        how many and the newest id observed (0 when none)."""
        capacity = getattr(agent.config, "replay_capacity", None) or 1_000_000
        count = last_id = 0
        with self.sessions() as session:
            newest = list(
                session.scalars(select(LiveTransition).order_by(LiveTransition.id.desc()).limit(capacity))
            )
        for row in reversed(newest):
            observe(agent, to_transition(row, catalogue.n_actions))
            count += 1
            last_id = row.id
        return count, last_id

    def observe_live_after(self, agent: Any, catalogue: Catalogue, after_id: int) -> tuple[int, int]:
        """Observe the live transitions with an id above ``after_id``, in id order; returns how many and
        the newest id observed (``after_id`` when none). Only the trainer writes live transitions, one
        transaction at a time, so ids grow in commit order and none is skipped."""
        count, last_id = 0, after_id
        while True:
            with self.sessions() as session:
                rows = list(
                    session.scalars(
                        select(LiveTransition)
                        .where(LiveTransition.id > last_id)
                        .order_by(LiveTransition.id)
                        .limit(CATCH_UP_CHUNK_ROWS)
                    )
                )
            for row in rows:
                observe(agent, to_transition(row, catalogue.n_actions))
                last_id = row.id
            count += len(rows)
            if len(rows) < CATCH_UP_CHUNK_ROWS:
                return count, last_id
