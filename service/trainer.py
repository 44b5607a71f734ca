"""The trainer: runs pretrain/retrain jobs and the online learning loop, publishes to the policy store."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from service import agents, jobs, registry
from service.catalogue import Catalogue, load_catalogue
from service.db import session_scope
from service.demos import count_demonstrations, iter_demonstrations
from service.models import LiveTransition, TrainingJob, utcnow
from service.policy_store import PolicyStore
from service.settings import Settings
from service.transitions import build_ready_transitions, to_transition

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "j_dq", "j_n", "j_e", "j_l2")


def _losses(values: dict[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (values or {}).items() if isinstance(v, int | float)}


class Trainer:
    """Owns the learning agent. One trainer per deployment: in the API process (role ``all``) or in
    the ``worker`` process. Every step is guarded: a crash is logged and retried later, and serving
    never waits on it."""

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
        self.last_losses: dict[str, float] = {}
        self._updates_since_publish = 0
        self._updates_since_save = 0
        self._last_publish = time.monotonic()
        self._failed_version: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Run the loop in a daemon thread (the API process)."""
        self._thread = threading.Thread(target=self.run_forever, name="trainer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop and wait for the current step to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the loop thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def run_forever(self) -> None:
        """Poll for jobs and live transitions until stopped; errors are logged, never fatal."""
        started = False
        while not self._stop.is_set():
            try:
                if not started:
                    with session_scope(self.sessions) as session:
                        jobs.fail_interrupted_jobs(session)
                    self.ensure_initial_pretrain()
                    started = True
                self.step()
                self.last_error = None
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("trainer step failed; retrying")
                self._stop.wait(min(5.0, self.settings.trainer_poll_s * 5))
            self._stop.wait(self.settings.trainer_poll_s)

    def step(self) -> None:
        """One loop iteration: run a queued job, follow the active version, learn from new transitions."""
        self.run_next_job()
        self.sync_active_version()
        self.learn_online()

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

    def _fill_buffers(self, agent: Any, catalogue: Catalogue) -> None:
        # Streamed chunk by chunk into a replay reserved once: peak memory is the replay plus one chunk.
        n = count_demonstrations(self.engine)
        replay = getattr(agent, "replay", None)
        if n and hasattr(replay, "reserve_demonstrations"):
            replay.reserve_demonstrations(n)
        loaded = 0
        for demos in iter_demonstrations(
            self.engine, catalogue, self.settings.state_dim, self.settings.demo_chunk_rows
        ):
            agent.add_demonstrations(
                demos.states, demos.actions, demos.rewards, demos.dones, demos.episode_ids, demos.masks
            )
            loaded += len(demos)
        self.demo_size = loaded
        self.live_size = self._replay_live(agent, catalogue)

    def _replay_live(self, agent: Any, catalogue: Catalogue) -> int:
        """Observe the stored live transitions again (newest ``replay_capacity`` ones) in order."""
        capacity = getattr(agent.config, "replay_capacity", None) or 1_000_000
        count = 0
        with self.sessions() as session:
            newest = list(
                session.scalars(select(LiveTransition).order_by(LiveTransition.id.desc()).limit(capacity))
            )
        for row in reversed(newest):
            self._observe(agent, to_transition(row, catalogue.n_actions))
            count += 1
        return count

    @staticmethod
    def _observe(agent: Any, t: Any) -> None:
        agent.observe(t.state, t.action, t.reward, t.next_state, t.done, t.mask, t.next_mask)

    # ------------------------------------------------------------------ jobs
    def run_next_job(self) -> TrainingJob | None:
        """Claim and run one queued job to completion (the job row records success or failure)."""
        with self.sessions() as session:
            job = jobs.claim_next_job(session)
        if job is None:
            return None
        try:
            self._run_training_job(job)
        except Exception as exc:
            log.exception("job %s failed", job.id)
            with session_scope(self.sessions) as session:
                row = session.get(TrainingJob, job.id)
                row.status = "failed"
                row.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
                row.finished_at = utcnow()
        return job

    def _job_progress(self, job_id: int, steps: int, bar: tqdm | None):  # type: ignore[no-untyped-def]
        last_write = [0.0]
        last_step = [0]

        def callback(step: int, losses: dict[str, Any]) -> None:
            if bar is not None:
                bar.update(step - last_step[0])
                bar.set_postfix({k: f"{v:.3g}" for k, v in _losses(losses).items() if k in LOSS_KEYS})
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

    def _run_training_job(self, job: TrainingJob, progress: bool = False) -> int:
        params = dict(job.params or {})
        steps = int(params.get("steps", self.settings.pretrain_steps))
        activate = bool(params.get("activate", job.kind == "pretrain"))
        with self.sessions() as session:
            catalogue = load_catalogue(session)
        if catalogue.n_actions == 0:
            raise RuntimeError("the catalogue is empty: import items first")
        agent = agents.new_agent(self.settings, catalogue.n_actions)
        self._fill_buffers(agent, catalogue)
        if self.demo_size == 0 and self.live_size == 0:
            raise RuntimeError("no demonstrations and no live data to learn from")
        bar = tqdm(total=steps, desc=f"{job.kind} (job {job.id})", unit="step") if progress else None
        try:
            summary = agent.pretrain(steps, progress=False, callback=self._job_progress(job.id, steps, bar))
            losses = summary.get("final", {}) if steps else {}
        finally:
            if bar is not None:
                bar.close()
        for _ in range(int(params.get("replay_updates", 0))):
            losses = agent.train_step()
        metrics = {
            **_losses(losses),
            "pretrain_steps": steps,
            "demonstrations": self.demo_size,
            "live_transitions": self.live_size,
        }
        with session_scope(self.sessions) as session:
            version = registry.save_version(
                session,
                checkpoint=agents.agent_to_bytes(agent),
                state_dim=self.settings.state_dim,
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
        if activate:
            self._adopt(agent, catalogue, version)
        return version

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
            return self._run_training_job(claimed, progress=progress)
        except Exception as exc:
            with session_scope(self.sessions) as session:
                row = session.get(TrainingJob, job_id)
                row.status, row.error, row.finished_at = "failed", f"{type(exc).__name__}: {exc}", utcnow()
            raise

    # ------------------------------------------------------------------ online learning
    def _adopt(self, agent: Any, catalogue: Catalogue, version: int) -> None:
        self.agent, self.catalogue, self.base_version = agent, catalogue, version
        self._updates_since_publish = self._updates_since_save = 0
        self._publish()

    def _publish(self) -> None:
        if self.store is not None and self.agent is not None and self.base_version is not None:
            self.store.publish(self.agent.numpy_policy(), self.base_version, int(self.agent.n_updates))
        self._updates_since_publish = 0
        self._last_publish = time.monotonic()

    def sync_active_version(self) -> None:
        """Follow the active model version (activation or rollback through the admin API)."""
        with self.sessions() as session:
            active = registry.active_version_number(session)
            if active is None or active in (self.base_version, self._failed_version):
                return
            checkpoint = registry.load_checkpoint(session, active)
            catalogue = load_catalogue(session)
        try:
            agent = agents.agent_from_bytes(checkpoint)
        except Exception:
            # Keep learning from the current agent; serving keeps its policy too (see ModelPoller).
            self._failed_version = active
            raise
        self._fill_buffers(agent, catalogue)
        self._adopt(agent, catalogue, active)
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
        if self._updates_since_save >= s.save_every_updates:
            self.save_online_version()
        elif self._updates_since_publish >= s.publish_every_updates or (
            self._updates_since_publish > 0 and time.monotonic() - self._last_publish >= s.publish_every_s
        ):
            self._publish()
        return updates

    def save_online_version(self) -> int:
        """Store the online-trained weights as a new, active model version."""
        with session_scope(self.sessions) as session:
            live_total = session.scalar(select(func.count()).select_from(LiveTransition))
            version = registry.save_version(
                session,
                checkpoint=agents.agent_to_bytes(self.agent),
                state_dim=self.settings.state_dim,
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
        }
