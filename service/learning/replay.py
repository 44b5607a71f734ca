"""Filling an agent's replay from the database: the logged demonstrations, then the stored live
transitions (all of them for a fresh or restored agent, or those after a known id when a retrained
agent catches up with the online loop).

Nothing here writes to the trainer: a job's agent fills while the online loop's agent learns, and the
counts (:class:`Filled`) become the trainer's only when their agent is adopted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from service.feedback.transitions import to_transition
from service.ingest.catalogue import Catalogue
from service.learning import item_agents, live_demos
from service.learning.demos import count_demonstrations, iter_demonstrations
from service.settings import Settings
from service.store.models import LiveTransition

log = logging.getLogger(__name__)

# Poisoned rows are logged at most this often (with every id since the last line).
QUARANTINE_LOG_INTERVAL_S = 60.0

# Live transitions read per query when a finished job's agent catches up with the online loop.
CATCH_UP_CHUNK_ROWS = 1000


class Filled(NamedTuple):
    """What :meth:`ReplayLoader.fill` put into an agent's replay."""

    demonstrations: int
    live: int
    last_live_id: int
    """The newest ``LiveTransition.id`` read (0 when none): later rows are new to the agent."""
    quarantined: int = 0
    """Rows refused by the agent's guards (non-finite or out-of-range values): demonstrations and live."""


def observe(agent: Any, t: Any) -> None:
    """Store one live transition in the agent's replay (``ValueError`` when the agent refuses it): the
    incumbent's (apprentice mode) in the demonstration part (:mod:`service.learning.live_demos`), every
    other one in the agent part."""
    if getattr(t, "demonstration", False):
        live_demos.add(agent, t)
        return
    if item_agents.is_item_agent(agent):  # its masks as compact allowed sets
        item_agents.observe(agent, t)
        return
    agent.observe(t.state, t.action, t.reward, t.next_state, t.done, mask=t.mask, next_mask=t.next_mask)


class Quarantine:
    """Observes live transitions through the agent's guards: a refused row (a value that is not finite
    or is out of range: a poisoned row) is skipped, counted, and logged with its id at most once per
    ``QUARANTINE_LOG_INTERVAL_S``; the rows after it are still learned. Nothing is written: the guards
    refuse the same row again on every load, which costs one check per row."""

    def __init__(self) -> None:
        self.count = 0
        self._unlogged: list[int] = []
        self._last_log: float | None = None

    def observe(self, agent: Any, row: LiveTransition, n_actions: int) -> bool:
        """Observe the stored ``row``; False (and counted) when the agent refused it."""
        return self.observe_transition(agent, to_transition(row, n_actions), row.id)

    def observe_transition(self, agent: Any, t: Any, row_id: int) -> bool:
        """Observe ``t`` (live transition ``row_id``); False (and counted) when the agent refused it."""
        try:
            observe(agent, t)
        except ValueError as exc:
            self.count += 1
            self._unlogged.append(row_id)
            self._log(str(exc))
            return False
        return True

    def _log(self, reason: str) -> None:
        now = time.monotonic()
        if self._last_log is not None and now - self._last_log < QUARANTINE_LOG_INTERVAL_S:
            return
        ids = self._unlogged
        shown = ", ".join(map(str, ids[:20])) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
        log.warning("live transition(s) %s quarantined (not learned): %s", shown, reason)
        self._unlogged, self._last_log = [], now


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
        items = item_agents.is_item_agent(agent)  # allowed items as index sets, not dense masks
        chunks = iter_demonstrations(
            self.engine, catalogue, agent.state_dim, self.settings.demo_chunk_rows, compact=items
        )
        try:
            for demos in chunks:
                if interrupt is not None:
                    interrupt()
                rejected = getattr(agent, "n_rejected_rows", 0)
                allowed = {}
                if demos.allowed is not None:
                    allowed["allowed"] = item_agents.candidate_sets(catalogue.n_actions, demos.allowed)
                elif demos.masks is not None:
                    allowed["masks"] = demos.masks
                # A poisoned row is left out (its episode cut there), never stored nor replayed.
                agent.add_demonstrations(
                    demos.states,
                    demos.actions,
                    demos.rewards,
                    demos.dones,
                    demos.episode_ids,
                    skip_invalid=True,
                    **allowed,
                )
                bad = getattr(agent, "n_rejected_rows", 0) - rejected
                loaded += len(demos) - bad
                if bad:
                    log.warning("%d logged interaction(s) quarantined (non-finite or out of range)", bad)
        finally:
            chunks.close()  # release the database cursor now, also when interrupted
        quarantine = Quarantine()
        live_demos.track(agent, self.settings.apprentice_max_demonstrations)
        demonstrated, last_demo_id = self.replay_live_demonstrations(agent, catalogue, quarantine)
        live, last_live_id = self.replay_live(agent, catalogue, quarantine)
        rejected = getattr(agent, "n_rejected_rows", 0) + quarantine.count
        return Filled(loaded + demonstrated, live, max(last_demo_id, last_live_id), rejected)

    def replay_live_demonstrations(
        self, agent: Any, catalogue: Catalogue, quarantine: Quarantine
    ) -> tuple[int, int]:
        """Add the stored live demonstrations (the oldest, up to the agent's bound) as demonstrations;
        returns how many were added and the newest id read (0 when none)."""
        limit = live_demos.tally(agent).limit
        count = last_id = 0
        with self.sessions() as session:
            rows = list(
                session.scalars(
                    select(LiveTransition)
                    .where(LiveTransition.demonstration.is_(True))
                    .order_by(LiveTransition.id)
                    .limit(limit)
                )
            )
        for row in rows:
            count += quarantine.observe(agent, row, catalogue.n_actions)
            last_id = row.id
        return count, last_id

    def replay_live(self, agent: Any, catalogue: Catalogue, quarantine: Quarantine) -> tuple[int, int]:
        """Observe the stored agent-part live transitions again (the newest ``replay_capacity``; not the
        live demonstrations) in order; returns how many were observed and the newest id read (0 when
        none). Refused rows go to ``quarantine``."""
        capacity = getattr(agent.config, "replay_capacity", None) or 1_000_000
        count = last_id = 0
        with self.sessions() as session:
            newest = list(
                session.scalars(
                    select(LiveTransition)
                    .where(LiveTransition.demonstration.is_(False))  # the incumbent's: see above
                    .order_by(LiveTransition.id.desc())
                    .limit(capacity)
                )
            )
        for row in reversed(newest):
            count += quarantine.observe(agent, row, catalogue.n_actions)
            last_id = row.id
        return count, last_id

    def observe_live_after(
        self, agent: Any, catalogue: Catalogue, after_id: int, quarantine: Quarantine
    ) -> tuple[int, int]:
        """Observe the live transitions with an id above ``after_id``, in id order; returns how many were
        observed and the newest id read (``after_id`` when none; a refused row is passed, see
        :class:`Quarantine`). Only the trainer writes live transitions, one
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
                count += quarantine.observe(agent, row, catalogue.n_actions)
                last_id = row.id
            if len(rows) < CATCH_UP_CHUNK_ROWS:
                return count, last_id
