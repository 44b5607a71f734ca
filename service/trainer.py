"""The trainer: runs pretrain/retrain jobs and the online learning loop, publishes to the policy store."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from service import agents, jobs, registry, shape
from service.catalogue import Catalogue, load_catalogue
from service.db import session_scope
from service.demos import count_demonstrations, iter_demonstrations
from service.errors import ModelUnservableError
from service.models import LiveTransition, TrainingJob, utcnow
from service.policy_store import PolicyStore
from service.progress import progress_bar
from service.settings import Settings
from service.transitions import build_ready_transitions, to_transition

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "j_dq", "j_n", "j_e", "j_l2")

# Pretraining reports (and so checks for a stop) at least this often: the default, 1/100 of the steps,
# is thousands of updates for a long job, which would hold a stopping process for tens of seconds.
MAX_UPDATES_BETWEEN_CALLBACKS = 500
# How long a stopping loop waits for the job thread: it stops at its next callback or demonstration
# chunk, well within this; a job still running then is failed by the next trainer's start.
JOB_THREAD_JOIN_S = 60.0
# Live transitions read per query when a finished job's agent catches up with the online loop.
CATCH_UP_CHUNK_ROWS = 1000


def _losses(values: dict[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (values or {}).items() if isinstance(v, int | float)}


def _log_every(steps: int) -> int:
    return max(1, min(steps // 100, MAX_UPDATES_BETWEEN_CALLBACKS))


class JobInterruptedError(Exception):
    """Raised inside a running job when the trainer is asked to stop (the job is then failed)."""


class Filled(NamedTuple):
    """What :meth:`Trainer._fill_buffers` put into an agent's replay."""

    demonstrations: int
    live: int
    last_live_id: int
    """The newest ``LiveTransition.id`` observed (0 when none): later rows are new to the agent."""


@dataclass
class TrainedAgent:
    """A finished job's agent, with what the online loop needs to adopt it."""

    agent: Any
    catalogue: Catalogue
    version: int
    activate: bool
    filled: Filled


class Trainer:
    """Owns the learning agent. One trainer per deployment: in the API process (role ``all``) or in
    the ``worker`` process. Every step is guarded: a crash is logged and retried later, and serving
    never waits on it.

    In the background mode (:meth:`run_forever`) two threads run: the online loop, which alone reads and
    replaces ``self.agent`` (follow the active version, learn from live transitions, publish, save), and
    the job thread, which trains a fresh agent of its own for each pretrain/retrain job. A job takes
    minutes; online learning must not stop for it. A finished job that activates its version hands its
    agent to the online loop, which adopts it.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        session_factory: sessionmaker[Session],
        store: PolicyStore | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions = session_factory
        self.store = store
        agents.limit_torch_threads(settings.torch_threads)
        self.agent: Any = None
        self.catalogue: Catalogue | None = None
        self.base_version: int | None = None
        self.demo_size = 0
        self.live_size = 0
        self.transitions_seen = 0
        self.last_error: str | None = None
        self.last_job_error: str | None = None
        self.last_losses: dict[str, float] = {}
        self._updates_since_publish = 0
        self._updates_since_save = 0
        self._last_publish = time.monotonic()
        self._failed_version: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._job_thread: threading.Thread | None = None
        self._running_job: int | None = None
        # The handoff of a finished job's agent. Under this lock the job thread commits its activated
        # version *and* sets ``_finished``, and the online loop reads the active version *and* takes
        # ``_finished``: the loop never sees the job's version active without its agent waiting, so it
        # adopts that agent instead of loading the same version back from the database.
        self._handoff = threading.Lock()
        self._finished: TrainedAgent | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Run the loop in a daemon thread (the API process)."""
        self._thread = threading.Thread(target=self.run_forever, name="trainer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask both loops to stop and wait for them (a running job is failed as interrupted)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        # The online loop first: it joins the job thread it started when it ends.
        for thread in (self._thread, self._job_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        """Whether the loop thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def jobs_alive(self) -> bool:
        """Whether the job thread is running (waiting for a job or training one)."""
        return self._job_thread is not None and self._job_thread.is_alive()

    @property
    def job_running(self) -> bool:
        """Whether a training job is being run right now."""
        return self._running_job is not None

    def run_forever(self) -> None:
        """Run the online loop until stopped, with training jobs on a thread of their own; errors are
        logged, never fatal."""
        started = False
        try:
            while not self._stop.is_set():
                try:
                    if not started:
                        with session_scope(self.sessions) as session:
                            jobs.fail_interrupted_jobs(session)
                        self.ensure_initial_pretrain()
                        # Only now: a job claimed before the clean-up above would be failed by it.
                        self._start_job_thread()
                        started = True
                    self.online_step()
                    self.last_error = None
                except Exception as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("trainer step failed; retrying")
                    self._stop.wait(min(5.0, self.settings.trainer_poll_s * 5))
                self._stop.wait(self.settings.trainer_poll_s)
        finally:
            self._stop.set()  # also when leaving on an exception (KeyboardInterrupt in the worker)
            job_thread = self._job_thread
            if job_thread is not None:
                job_thread.join(JOB_THREAD_JOIN_S)
                if job_thread.is_alive():
                    log.warning("the job thread did not stop in %.0f s", JOB_THREAD_JOIN_S)

    def step(self) -> None:
        """One synchronous iteration: run a queued job, follow the active version, learn from new
        transitions (the CLI and tests; the background mode runs jobs on their own thread)."""
        self.run_next_job()
        self.online_step()

    def online_step(self) -> None:
        """One iteration of the online loop: adopt a finished job's agent or follow the active version,
        then learn from new transitions."""
        self.sync_active_version()
        self.learn_online()

    def _start_job_thread(self) -> None:
        if self._job_thread is None or not self._job_thread.is_alive():
            self._job_thread = threading.Thread(target=self._job_loop, name="trainer-jobs", daemon=True)
            self._job_thread.start()

    def _job_loop(self) -> None:
        """Claim and run jobs one at a time until stopped."""
        poll = self.settings.trainer_poll_s
        while not self._stop.is_set():
            try:
                with self.sessions() as session:
                    job = jobs.claim_next_job(session)
                if job is None:
                    self._stop.wait(poll)
                    continue
                self._running_job = job.id
                try:
                    self._execute(job, hand_off=True)
                finally:
                    self._running_job = None
                self.last_job_error = None
            except Exception as exc:  # the database may be away: retry; the online loop is unaffected
                self.last_job_error = f"{type(exc).__name__}: {exc}"
                log.exception("training job loop failed; retrying")
                self._stop.wait(min(5.0, poll * 5))

    # ------------------------------------------------------------------ setup
    def ensure_initial_pretrain(self) -> int | None:
        """Queue a pretrain job when there is no model yet but there are demonstrations."""
        if not self.settings.auto_pretrain:
            return None
        with session_scope(self.sessions) as session:
            if registry.active_version_number(session) is not None or jobs.has_active_job(session):
                return None
            if count_demonstrations(self.engine) == 0:
                return None
            job = jobs.enqueue_job(
                session, "pretrain", {"steps": self.settings.pretrain_steps, "activate": True}
            )
            return job.id

    def _fill_buffers(
        self, agent: Any, catalogue: Catalogue, should_stop: Callable[[], bool] | None = None
    ) -> Filled:
        """Load the demonstrations and replay the live transitions into ``agent``; returns the counts.

        Nothing of the trainer is written: a job's agent fills while the online loop's agent learns, and
        the counts become the trainer's only when their agent is adopted.
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
                if should_stop is not None and should_stop():
                    raise JobInterruptedError(jobs.INTERRUPTED_ERROR)
                agent.add_demonstrations(
                    demos.states, demos.actions, demos.rewards, demos.dones, demos.episode_ids, demos.masks
                )
                loaded += len(demos)
        finally:
            chunks.close()  # release the database cursor now, also when interrupted
        live, last_live_id = self._replay_live(agent, catalogue)
        return Filled(loaded, live, last_live_id)

    def _replay_live(self, agent: Any, catalogue: Catalogue) -> tuple[int, int]:
        """Observe the stored live transitions again (newest ``replay_capacity`` ones) in order; returns
        how many and the newest id observed (0 when none)."""
        capacity = getattr(agent.config, "replay_capacity", None) or 1_000_000
        count = last_id = 0
        with self.sessions() as session:
            newest = list(
                session.scalars(select(LiveTransition).order_by(LiveTransition.id.desc()).limit(capacity))
            )
        for row in reversed(newest):
            self._observe(agent, to_transition(row, catalogue.n_actions))
            count += 1
            last_id = row.id
        return count, last_id

    def _observe_live_after(self, agent: Any, catalogue: Catalogue, after_id: int) -> tuple[int, int]:
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
                self._observe(agent, to_transition(row, catalogue.n_actions))
                last_id = row.id
            count += len(rows)
            if len(rows) < CATCH_UP_CHUNK_ROWS:
                return count, last_id

    @staticmethod
    def _observe(agent: Any, t: Any) -> None:
        agent.observe(t.state, t.action, t.reward, t.next_state, t.done, t.mask, t.next_mask)

    # ------------------------------------------------------------------ jobs
    def run_next_job(self) -> TrainingJob | None:
        """Claim and run one queued job to completion in this thread, adopting its agent when it
        activates (the job row records success or failure)."""
        with self.sessions() as session:
            job = jobs.claim_next_job(session)
        if job is None:
            return None
        trained = self._execute(job)
        if trained is not None and trained.activate:
            self._adopt_trained(trained)
        return job

    def _execute(self, job: TrainingJob, hand_off: bool = False) -> TrainedAgent | None:
        """Run a claimed job; a failure is recorded on its row (None), never raised."""
        try:
            return self._train(job, hand_off=hand_off)
        except JobInterruptedError:
            log.warning("job %s interrupted: the trainer is stopping", job.id)
            error = jobs.INTERRUPTED_ERROR
        except Exception as exc:
            log.exception("job %s failed", job.id)
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        with session_scope(self.sessions) as session:
            jobs.fail_job(session, job.id, error)
        return None

    def _job_progress(self, job_id: int, steps: int, bar: tqdm | None):  # type: ignore[no-untyped-def]
        last_write = [0.0]
        last_step = [0]

        def callback(step: int, losses: dict[str, Any]) -> None:
            if self._stop.is_set():
                raise JobInterruptedError(jobs.INTERRUPTED_ERROR)
            if bar is not None:
                bar.update(step - last_step[0])
                bar.set_postfix(
                    {k: f"{v:.3g}" for k, v in _losses(losses).items() if k in LOSS_KEYS}, refresh=False
                )
            last_step[0] = step
            now = time.monotonic()
            if now - last_write[0] < 0.5 and step < steps:
                return
            last_write[0] = now
            with session_scope(self.sessions) as session:
                row = session.get(TrainingJob, job_id)
                row.progress = min(1.0, step / max(steps, 1))
                row.metrics = {"step": step, **_losses(losses)}

        return callback

    def _train(self, job: TrainingJob, progress: bool = False, hand_off: bool = False) -> TrainedAgent:
        """Train a fresh agent for ``job`` and save its version; raises on failure.

        The agent is the job's alone until adopted. With ``hand_off`` (the job thread) an activated
        version is committed and handed to the online loop in one step under ``_handoff``.
        """
        params = dict(job.params or {})
        steps = int(params.get("steps", self.settings.pretrain_steps))
        activate = bool(params.get("activate", job.kind == "pretrain"))
        with self.sessions() as session:
            catalogue = load_catalogue(session)
            if catalogue.n_actions == 0:
                raise RuntimeError("the catalogue is empty: import items first")
            # DQFD_STATE_DIM or the logs' width; a disagreement is a one-line StateWidthMismatchError.
            state_dim = shape.resolve_state_dim(self.settings, session)
        agent = agents.new_agent(self.settings, catalogue.n_actions, state_dim)
        filled = self._fill_buffers(agent, catalogue, self._stop.is_set)
        if filled.demonstrations == 0 and filled.live == 0:
            raise RuntimeError("no demonstrations and no live data to learn from")
        bar = progress_bar(steps, f"{job.kind} (job {job.id})", unit="step") if progress else None
        try:
            summary = agent.pretrain(
                steps,
                progress=False,
                callback=self._job_progress(job.id, steps, bar),
                log_every=_log_every(steps),
            )
            losses = summary.get("final", {}) if steps else {}
        finally:
            if bar is not None:
                bar.close()
        for _ in range(int(params.get("replay_updates", 0))):
            if self._stop.is_set():
                raise JobInterruptedError(jobs.INTERRUPTED_ERROR)
            losses = agent.train_step()
        metrics = {
            **_losses(losses),
            "pretrain_steps": steps,
            "demonstrations": filled.demonstrations,
            "live_transitions": filled.live,
        }
        checkpoint = agents.agent_to_bytes(agent)  # outside the lock: the online loop may wait on it
        with self._handoff:
            with session_scope(self.sessions) as session:
                version = registry.save_version(
                    session,
                    checkpoint=checkpoint,
                    state_dim=state_dim,
                    n_actions=catalogue.n_actions,
                    config=agents.config_dict(agent.config),
                    metrics=metrics,
                    source=job.kind,
                    n_updates=int(agent.n_updates),
                    parent_version=None,
                    job_id=job.id,
                    activate=activate,
                ).version
                row = session.get(TrainingJob, job.id)
                row.status = "succeeded"
                row.progress = 1.0
                row.metrics = metrics
                row.model_version = version
                row.finished_at = utcnow()
            trained = TrainedAgent(agent, catalogue, version, activate, filled)
            if activate and hand_off:
                # A job finished before the loop adopted the previous one: the newer version wins.
                self._finished = trained
        return trained

    def run_job_now(self, kind: str, params: dict[str, Any], progress: bool = True) -> int:
        """Queue and run a job in this thread (the CLI's ``pretrain``); returns the model version."""
        with session_scope(self.sessions) as session:
            job = jobs.enqueue_job(session, kind, params)
            job_id = job.id
        with self.sessions() as session:
            claimed = jobs.claim_next_job(session)
        if claimed is None or claimed.id != job_id:  # another trainer took it or an older job was queued
            raise RuntimeError("another job is queued or running; use the worker to run it")
        try:
            trained = self._train(claimed, progress=progress)
        except Exception as exc:
            with session_scope(self.sessions) as session:
                jobs.fail_job(session, job_id, f"{type(exc).__name__}: {exc}")
            raise
        # A one-off job (the CLI's ``pretrain``, the quickstart) ends with its process: no online loop
        # follows here to adopt the agent; a serving process loads the activated version from the registry.
        return trained.version

    # ------------------------------------------------------------------ online learning
    def _adopt(self, agent: Any, catalogue: Catalogue, version: int, filled: Filled) -> None:
        self.demo_size, self.live_size = filled.demonstrations, filled.live
        self._updates_since_publish = self._updates_since_save = 0
        self.agent, self.catalogue, self.base_version = agent, catalogue, version
        self._publish()

    def _adopt_trained(self, trained: TrainedAgent) -> None:
        """Make a finished job's agent the online one (called by the thread that owns ``self.agent``).

        Online learning went on while the job trained: the transitions stored since its replay snapshot
        are observed first, in order, so its replay holds everything the old agent learned from.
        """
        filled = trained.filled
        caught_up, last_id = self._observe_live_after(trained.agent, trained.catalogue, filled.last_live_id)
        self._adopt(
            trained.agent,
            trained.catalogue,
            trained.version,
            Filled(filled.demonstrations, filled.live + caught_up, last_id),
        )
        log.info(
            "trainer now learns from retrained model version %s (%s live transitions caught up)",
            trained.version,
            caught_up,
        )

    def _publish(self) -> None:
        if self.store is not None and self.agent is not None and self.base_version is not None:
            # policy_revision counts the online updates in the served weights (docs/service.md), so the
            # pretraining updates a version started from are left out.
            online = int(self.agent.n_updates) - int(self.agent.n_pretrain_updates)
            self.store.publish(self.agent.numpy_policy(), self.base_version, online)
        self._updates_since_publish = 0
        self._last_publish = time.monotonic()

    def sync_active_version(self) -> None:
        """Adopt a finished job's agent, or follow the active model version (activation or rollback
        through the admin API)."""
        with self._handoff:
            finished, self._finished = self._finished, None
            if finished is None:
                with self.sessions() as session:
                    active = registry.active_version_number(session)
        if finished is not None:
            self._adopt_trained(finished)  # an activation after it is followed on the next call
            return
        if active is None or active in (self.base_version, self._failed_version):
            return
        with self.sessions() as session:
            checkpoint = registry.load_checkpoint(session, active)
            catalogue = load_catalogue(session)
            width = shape.serving_width(self.settings.state_dim, session)
        try:
            agent = agents.agent_from_bytes(checkpoint)
        except Exception:
            # Keep learning from the current agent; serving keeps its policy too (see ModelPoller).
            self._failed_version = active
            raise
        problem = shape.model_problem(active, int(agent.state_dim), width)
        if problem is not None:  # its replay could not hold these logs; serving refuses it too
            self._failed_version = active
            raise ModelUnservableError(problem)
        filled = self._fill_buffers(agent, catalogue)
        self._adopt(agent, catalogue, active, filled)
        log.info("trainer now learns from model version %s", active)

    def learn_online(self) -> int:
        """Turn ready decisions into live transitions, learn from them, publish and save; returns updates."""
        if self.agent is None:
            return 0
        s = self.settings
        with self.sessions() as session:
            rows = build_ready_transitions(
                session,
                reward_window_s=s.reward_window_s,
                default_reward=s.default_reward,
                aggregation=s.aggregation,
            )
            transitions = [to_transition(row, self.catalogue.n_actions) for row in rows]
        updates = 0
        for t in transitions:
            self._observe(self.agent, t)
            self.live_size += 1
            self.transitions_seen += 1
            for _ in range(s.updates_per_transition):
                self.last_losses = _losses(self.agent.train_step())
                updates += 1
        self._updates_since_publish += updates
        self._updates_since_save += updates
        if self._finished is not None:
            # A retrained agent is adopted next iteration: publishing or saving this one now would put
            # its (older) version back in front of the retrained one.
            return updates
        if self._updates_since_save >= s.save_every_updates:
            self.save_online_version()
        elif self._updates_since_publish >= s.publish_every_updates or (
            self._updates_since_publish > 0 and time.monotonic() - self._last_publish >= s.publish_every_s
        ):
            self._publish()
        return updates

    def save_online_version(self) -> int | None:
        """Store the online-trained weights as a new, active model version; None when a finished job's
        agent is waiting to be adopted (its version stays the active one)."""
        checkpoint = agents.agent_to_bytes(self.agent)
        with self._handoff:
            if self._finished is not None:
                return None
            with session_scope(self.sessions) as session:
                live_total = session.scalar(select(func.count()).select_from(LiveTransition))
                version = registry.save_version(
                    session,
                    checkpoint=checkpoint,
                    state_dim=int(self.agent.state_dim),
                    n_actions=self.catalogue.n_actions,
                    config=agents.config_dict(self.agent.config),
                    metrics={**self.last_losses, "live_transitions": int(live_total or 0)},
                    source="online",
                    n_updates=int(self.agent.n_updates),
                    parent_version=self.base_version,
                    activate=True,
                ).version
        self.base_version = version
        self._updates_since_save = 0
        self._publish()
        log.info("saved online model version %s", version)
        return version

    def status(self) -> dict[str, Any]:
        """Buffer sizes and health, for /admin/stats."""
        return {
            "running": self.alive,
            "job_running": self.job_running,
            "job_id": self._running_job,
            "model_version": self.base_version,
            "n_updates": int(self.agent.n_updates) if self.agent is not None else 0,
            "demonstration_buffer": self.demo_size,
            "live_buffer": min(
                self.live_size,
                getattr(getattr(self.agent, "config", None), "replay_capacity", self.live_size)
                or self.live_size,
            ),
            "live_transitions_learned": self.transitions_seen,
            "last_losses": self.last_losses,
            "last_error": self.last_error,
            "last_job_error": self.last_job_error,
        }
