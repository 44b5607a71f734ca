"""The online loop: follow the active model version, learn from the live transitions as feedback makes
them ready, publish the weights to this process's policy store, and save them as new versions.

Only the online loop's thread reads and replaces its agent. A finished job's agent reaches it through
:class:`service.learning.handoff.Handoff` and is adopted after catching up with the transitions stored
while it trained.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.errors import ModelInvalidError, ModelUnservableError
from service.feedback.transitions import ReadyFacts, build_ready_transitions, to_transition
from service.ingest.catalogue import Catalogue, load_catalogue
from service.learning import agents, item_agents, promotion, publishing, trainer_metrics
from service.learning.handoff import Handoff, TrainedAgent
from service.learning.history import TrainingHistory
from service.learning.replay import Filled, Quarantine, ReplayLoader
from service.metrics import record_losses
from service.serving.model_check import actions_problem, probe_problem
from service.serving.policy_store import PolicyStore
from service.settings import Settings
from service.store import registry, shape
from service.store.db import session_scope

log = logging.getLogger(__name__)


class OnlineLoop:
    """Owns the learning agent between jobs, with its replay counts and publish/save schedule."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        store: PolicyStore | None,
        replays: ReplayLoader,
        handoff: Handoff,
    ) -> None:
        self.settings = settings
        self.sessions = session_factory
        self.store = store
        self.replays = replays
        self.handoff = handoff
        self.agent: Any = None
        self.catalogue: Catalogue | None = None
        self.base_version: int | None = None
        self.demo_size = 0
        self.live_size = 0
        self.transitions_seen = 0
        self.last_losses: dict[str, float] = {}
        self.history = TrainingHistory()
        """Update counts and losses over time (the dashboard's trainer charts), in memory."""
        self.quarantined = 0
        """Rows the agent's guards refused (poisoned: non-finite or out of range), counted on each load."""
        self.sampling_error: str | None = None
        """Why the last update could not run, e.g. an unsampleable replay (None once one runs again)."""
        self.quarantine = Quarantine()
        self.failed_version: int | None = None
        """A version that failed to load or does not fit: not tried again until another is active."""
        self.line_active: int | None = None
        """The active version this agent's line continues (with the promotion gate on, its saves may be
        held back: it keeps learning from them, and follows only another version's activation)."""
        self._updates_since_publish = 0
        self._updates_since_save = 0
        self._last_publish = time.monotonic()

    def _adopt(self, agent: Any, catalogue: Catalogue, version: int, filled: Filled) -> None:
        self.demo_size, self.live_size = filled.demonstrations, filled.live
        self.quarantined, self.quarantine, self.sampling_error = filled.quarantined, Quarantine(), None
        self._updates_since_publish = self._updates_since_save = 0
        self.agent, self.catalogue, self.base_version = agent, catalogue, version
        self.line_active = version
        trainer_metrics.record_replay(self.demo_size, self.live_buffer, version)
        self.publish()

    def adopt_trained(self, trained: TrainedAgent) -> None:
        """Make a finished job's agent the online one (called by the thread that owns ``agent``).

        Online learning went on while the job trained: the transitions stored since its replay snapshot
        are observed first, in order, so its replay holds everything the old agent learned from.
        """
        filled = trained.filled
        quarantine = Quarantine()
        catalogue = trained.catalogue
        if item_agents.is_item_agent(trained.agent):  # items imported while it trained were served
            with self.sessions() as session:
                catalogue = item_agents.follow_catalogue(trained.agent, session) or catalogue
        caught_up, last_id = self.replays.observe_live_after(
            trained.agent, catalogue, filled.last_live_id, quarantine
        )
        self._adopt(
            trained.agent,
            catalogue,
            trained.version,
            Filled(
                filled.demonstrations, filled.live + caught_up, last_id, filled.quarantined + quarantine.count
            ),
        )
        log.info(
            "trainer now learns from retrained model version %s (%s live transitions caught up)",
            trained.version,
            caught_up,
        )

    def publish(self) -> None:
        """Swap the current weights into the policy store (when this process serves) and restart the
        publish schedule."""
        if self.store is not None and self.agent is not None and self.base_version is not None:
            publishing.publish_policy(self.store, self.agent, self.base_version)
        self._updates_since_publish = 0
        self._last_publish = time.monotonic()

    def _read_active(self) -> int | None:
        with self.sessions() as session:
            return registry.active_version_number(session)

    def sync_active_version(self) -> None:
        """Adopt a finished job's agent, or follow the active model version (activation or rollback
        through the admin API)."""
        finished, active = self.handoff.take(self._read_active)
        if finished is not None:
            self.adopt_trained(finished)  # an activation after it is followed on the next call
            return
        if active is not None and active == self.base_version:
            self.line_active = active
        if active is None or active in (self.base_version, self.failed_version, self.line_active):
            return
        with self.sessions() as session:
            checkpoint = registry.load_checkpoint(session, active)
            catalogue = load_catalogue(session, attributes=True)  # a feature network's item features
            width = shape.serving_width(self.settings.state_dim, session)
        try:
            agent = agents.apply_bounds(agents.agent_from_bytes(checkpoint, catalogue), self.settings)
        except Exception:
            # Keep learning from the current agent; serving keeps its policy too (see ModelPoller).
            self.failed_version = active
            raise
        problem = shape.model_problem(active, int(agent.state_dim), width)
        if problem is not None:  # its replay could not hold these logs; serving refuses it too
            self.failed_version = active
            raise ModelUnservableError(problem)
        # e.g. NaN weights, or more actions than items (another catalogue): never learn from them
        problem = actions_problem(active, agents.n_items(agent), catalogue.n_actions)
        problem = problem or probe_problem(agents.probe_network(agent), active)
        if problem is not None:
            self.failed_version = active
            raise ModelInvalidError(problem)
        # A catalogue grown since it was trained: a fixed head learns over the items it knows (as it
        # serves them); a feature network's table already holds every item (agents.agent_from_bytes).
        catalogue = catalogue.prefix(agents.n_items(agent))
        filled = self.replays.fill(agent, catalogue)
        self._adopt(agent, catalogue, active, filled)
        log.info("trainer now learns from model version %s", active)

    def learn_online(self) -> int:
        """Turn ready decisions into live transitions, learn from them, publish and save; returns updates."""
        if self.agent is None:
            return 0
        s = self.settings
        facts: dict[str, ReadyFacts] = {}
        with self.sessions() as session:
            if item_agents.is_item_agent(self.agent):  # new items: learned about from their first step
                self.catalogue = item_agents.follow_catalogue(self.agent, session) or self.catalogue
            rows = build_ready_transitions(
                session,
                reward_window_s=s.reward_window_s,
                default_reward=s.default_reward,
                aggregation=s.aggregation,
                facts=facts,
            )
            transitions = [(row.id, to_transition(row, self.catalogue.n_actions)) for row in rows]
        trainer_metrics.record_built(rows, facts)
        updates = 0
        for row, (row_id, t) in zip(rows, transitions, strict=True):
            # A poisoned row is skipped (and counted); the ones after it are still learned.
            demos_before = self.agent.n_demonstrations if t.demonstration else 0
            if not self.quarantine.observe_transition(self.agent, t, row_id):
                self.quarantined += 1
                continue
            if t.demonstration:  # the incumbent's (apprentice mode): the demonstration part grows
                self.demo_size += self.agent.n_demonstrations - demos_before
            else:
                self.live_size += 1
            self.transitions_seen += 1
            updates += self._train(s.updates_per_transition)
            trainer_metrics.record_learned(facts.get(row.event_id))
        if rows:
            trainer_metrics.record_replay(self.demo_size, self.live_buffer, self.base_version)
        self._updates_since_publish += updates
        self._updates_since_save += updates
        self.history.record(updates, self.last_losses, len(transitions))
        if self.handoff.pending:
            # A retrained agent is adopted next iteration: publishing or saving this one now would put
            # its (older) version back in front of the retrained one.
            return updates
        if getattr(self.agent, "diverged", False):
            # Nothing it learned can be trusted (or nothing was applied): the last good weights stay
            # served and active; /readyz and /admin/stats report it (Trainer.problems).
            return updates
        if self._updates_since_save >= s.save_every_updates:
            self.save_online_version()
        elif promotion.enabled(s):
            pass  # with the gate on, only a version that passed it is served: nothing between saves
        elif self._updates_since_publish >= s.publish_every_updates or (
            self._updates_since_publish > 0 and time.monotonic() - self._last_publish >= s.publish_every_s
        ):
            self.publish()
        return updates

    def _train(self, steps: int) -> int:
        """Up to ``steps`` updates; returns those done. A replay that cannot be sampled (every row
        quarantined, or a broken priority tree) stops them and is reported (``sampling_error``, shown in
        /readyz and /admin/stats) instead of failing the loop: the transitions keep being stored."""
        for done in range(steps):
            try:
                self.last_losses = agents.float_losses(self.agent.train_step())
                record_losses(self.last_losses)
            except RuntimeError as exc:
                if self.sampling_error is None:
                    log.warning("online update skipped: the replay cannot be sampled: %s", exc)
                self.sampling_error = f"{type(exc).__name__}: {exc}"
                return done
            self.sampling_error = None
        return steps

    def save_online_version(self, judge: bool = True) -> int | None:
        """Store the online-trained weights as a new model version, active (gate off) or judged by the
        promotion gate (``judge`` false: held unjudged, e.g. as the trainer stops); None when a finished
        job's agent is waiting to be adopted (its version stays the active one)."""
        checkpoint = agents.agent_to_bytes(self.agent)
        gated = promotion.enabled(self.settings)

        def commit() -> int:
            with session_scope(self.sessions) as session:
                return publishing.save_online_version(
                    session,
                    self.agent,
                    checkpoint,
                    self.catalogue,
                    self.base_version,
                    self.last_losses,
                    activate=not gated,
                    keep_versions=self.settings.keep_versions,
                )

        version = self.handoff.unless_pending(commit)
        if version is None:
            return None
        self.base_version = version
        trainer_metrics.record_replay(self.demo_size, self.live_buffer, version)
        self._updates_since_save = 0
        # Gate off: active on save. Gate on: judged, and served only when it passed.
        if not gated or promotion.judge_online_save(self, version, checkpoint, judge):
            self.line_active = version
            self.publish()
        log.info("saved online model version %s", version)
        return version

    @property
    def updates_since_save(self) -> int:
        """Online updates made since the last saved or adopted version (lost on a crash, saved on stop)."""
        return self._updates_since_save

    @property
    def live_buffer(self) -> int:
        """Live transitions in the agent's replay (at most its capacity)."""
        capacity = getattr(getattr(self.agent, "config", None), "replay_capacity", self.live_size)
        return min(self.live_size, capacity or self.live_size)
