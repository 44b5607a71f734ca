"""Training jobs: claim a queued pretrain/retrain job, train a fresh agent for it on the demonstrations
and the live transitions, save its model version, and hand an activated agent to the online loop.

A job's agent is its own until adopted (:mod:`service.learning.handoff`); the online loop's agent is
never touched here. A failure is recorded on the job's row and never reaches the online loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from service.ingest.catalogue import load_catalogue
from service.learning import agents, evaluation_job, promotion, publishing
from service.learning.demos import count_demonstrations
from service.learning.handoff import Handoff, TrainedAgent
from service.learning.replay import ReplayLoader
from service.metrics import DATABASE_ERRORS, record_jobs
from service.progress import progress_bar
from service.settings import Settings
from service.store import jobs, registry, shape
from service.store.db import database_unavailable, session_scope
from service.store.models import TrainingJob

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "j_dq", "j_n", "j_e", "j_l2")

# Pretraining reports (and so checks for a stop) at least this often: the default, 1/100 of the steps,
# is thousands of updates for a long job, which would hold a stopping process for tens of seconds.
MAX_UPDATES_BETWEEN_CALLBACKS = 500

ProgressCallback = Callable[[int, dict[str, Any]], None]


def _log_every(steps: int) -> int:
    return max(1, min(steps // 100, MAX_UPDATES_BETWEEN_CALLBACKS))


class JobInterruptedError(Exception):
    """Raised inside a running job when the trainer is asked to stop (the job is then failed)."""


class JobRunner:
    """Runs training jobs, one at a time: on the trainer's job thread (:meth:`loop`) or synchronously
    (:meth:`execute` for the trainer's ``step``, :meth:`run_now` for the CLI's ``pretrain``)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        session_factory: sessionmaker[Session],
        replays: ReplayLoader,
        handoff: Handoff,
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions = session_factory
        self.replays = replays
        self.handoff = handoff
        self.stop = stop
        self.running_job: int | None = None
        self.last_error: str | None = None

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

    def claim(self) -> TrainingJob | None:
        """The oldest queued job, now marked running (None when none is queued); the jobs by state are
        read for the metrics on the way (the worker process has no model poller to read them)."""
        with self.sessions() as session:
            claimed = jobs.claim_next_job(session)
            record_jobs(jobs.count_by_state(session))
            return claimed

    def loop(self) -> None:
        """Claim and run jobs one at a time until stopped (the job thread)."""
        poll = self.settings.trainer_poll_s
        while not self.stop.is_set():
            try:
                job = self.claim()
                if job is None:
                    self.stop.wait(poll)
                    continue
                self.running_job = job.id
                try:
                    self.execute(job, hand_off=True)
                finally:
                    self.running_job = None
                self.last_error = None
            except Exception as exc:  # the database may be away: retry; the online loop is unaffected
                self.last_error = f"{type(exc).__name__}: {exc}"
                if database_unavailable(exc):
                    DATABASE_ERRORS.labels("jobs").inc()
                log.exception("training job loop failed; retrying")
                self.stop.wait(min(5.0, poll * 5))

    def execute(self, job: TrainingJob, hand_off: bool = False) -> TrainedAgent | None:
        """Run a claimed job; a failure is recorded on its row (None), never raised."""
        try:
            if job.kind == evaluation_job.KIND:  # an off-policy evaluation: no agent to train or hand over
                evaluation_job.run_evaluate_job(self.sessions, self.settings, job, self._check_stop)
                return None
            return self.train(job, hand_off=hand_off)
        except JobInterruptedError:
            log.warning("job %s interrupted: the trainer is stopping", job.id)
            error = jobs.INTERRUPTED_ERROR
        except Exception as exc:
            log.exception("job %s failed", job.id)
            # One line for the API (the traceback, with its file paths, stays in the server log above).
            error = " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]
        with session_scope(self.sessions) as session:
            jobs.fail_job(session, job.id, error)
        return None

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise JobInterruptedError(jobs.INTERRUPTED_ERROR)

    def progress_callback(self, job_id: int, steps: int, bar: tqdm | None) -> ProgressCallback:
        """The pretrain callback of a job: stops it when the trainer stops, moves the progress bar, and
        writes the job's progress and losses to its row at most every half second."""
        last_write = [0.0]
        last_step = [0]

        def callback(step: int, losses: dict[str, Any]) -> None:
            self._check_stop()
            if bar is not None:
                bar.update(step - last_step[0])
                bar.set_postfix(
                    {k: f"{v:.3g}" for k, v in agents.float_losses(losses).items() if k in LOSS_KEYS},
                    refresh=False,
                )
            last_step[0] = step
            now = time.monotonic()
            if now - last_write[0] < 0.5 and step < steps:
                return
            last_write[0] = now
            with session_scope(self.sessions) as session:
                row = session.get(TrainingJob, job_id)
                row.progress = min(1.0, step / max(steps, 1))
                row.metrics = {"step": step, **agents.float_losses(losses)}

        return callback

    def train(self, job: TrainingJob, progress: bool = False, hand_off: bool = False) -> TrainedAgent:
        """Train a fresh agent for ``job`` and save its version; raises on failure.

        With ``hand_off`` (the job thread) an activated version is committed and handed to the online
        loop in one step (:meth:`Handoff.deliver`).
        """
        params = dict(job.params or {})
        steps = int(params.get("steps", self.settings.pretrain_steps))
        activate = bool(params.get("activate", job.kind == "pretrain"))
        with self.sessions() as session:
            # The attributes hold the feature network's item features (read once, only when it may be built).
            catalogue = load_catalogue(session, attributes=self.settings.network != "fixed")
            if catalogue.n_actions == 0:
                raise RuntimeError("the catalogue is empty: import items first")
            # DQFD_STATE_DIM or the logs' width; a disagreement is a one-line StateWidthMismatchError.
            state_dim = shape.resolve_state_dim(self.settings, session)
        agent = agents.new_agent(self.settings, catalogue.n_actions, state_dim, catalogue=catalogue)
        filled = self.replays.fill(agent, catalogue, self._check_stop)
        if filled.demonstrations == 0 and filled.live == 0:
            raise RuntimeError("no demonstrations and no live data to learn from")
        bar = progress_bar(steps, f"{job.kind} (job {job.id})", unit="step") if progress else None
        try:
            summary = agent.pretrain(
                steps,
                progress=False,
                callback=self.progress_callback(job.id, steps, bar),
                log_every=_log_every(steps),
            )
            losses = summary.get("final", {}) if steps else {}
        finally:
            if bar is not None:
                bar.close()
        for _ in range(int(params.get("replay_updates", 0))):
            self._check_stop()
            losses = agent.train_step()
        metrics = {
            **agents.float_losses(losses),
            "pretrain_steps": steps,
            "demonstrations": filled.demonstrations,
            "live_transitions": filled.live,
        }
        checkpoint = agents.agent_to_bytes(agent)  # outside the lock: the online loop may wait on it

        def save(active: bool, finish: bool = True) -> int:
            # In a transaction of its own, with the retention rule of DQFD_KEEP_VERSIONS.
            with session_scope(self.sessions) as session:
                return publishing.save_job_version(
                    session,
                    job,
                    agent,
                    checkpoint,
                    state_dim,
                    catalogue,
                    metrics,
                    active,
                    finish=finish,
                    keep_versions=self.settings.keep_versions,
                )

        if activate and job.kind == "retrain" and promotion.enabled(self.settings):
            # The promotion gate judges the version stored inactive, the job not yet finished.
            version = save(False, finish=False)
            return self._gated_commit(job, agent, version, checkpoint, catalogue, filled, hand_off)

        def commit() -> TrainedAgent:
            version = save(activate)
            return TrainedAgent(agent, catalogue, version, activate, filled)

        return self.handoff.deliver(commit, hand_over=hand_off)

    def _gated_commit(
        self,
        job: TrainingJob,
        agent: Any,
        version: int,
        checkpoint: bytes,
        catalogue: Any,
        filled: Any,
        hand_off: bool,
    ) -> TrainedAgent:
        """With the promotion gate on: judge the retrained ``version`` (stored inactive) against the
        active one, and activate it (handing its agent over) only when it passed."""
        with session_scope(self.sessions) as session:
            verdict = promotion.judge(session, self.settings, version, checkpoint)

        def commit() -> TrainedAgent:
            passed = verdict.passed and promotion.activate_if_unchanged(self.sessions, verdict, job.kind)
            with session_scope(self.sessions) as session:  # succeeded only once its fate is settled
                promotion.record_job_verdict(session, job.id, verdict)
            return TrainedAgent(agent, catalogue, version, passed, filled)

        return self.handoff.deliver(commit, hand_over=hand_off)

    def run_now(self, kind: str, params: dict[str, Any], progress: bool = True) -> int:
        """Queue and run a job in this thread (the CLI's ``pretrain``); returns the model version."""
        with session_scope(self.sessions) as session:
            job = jobs.enqueue_job(session, kind, params)
            job_id = job.id
        claimed = self.claim()
        if claimed is None or claimed.id != job_id:  # another trainer took it or an older job was queued
            raise RuntimeError("another job is queued or running; use the worker to run it")
        try:
            trained = self.train(claimed, progress=progress)
        except Exception as exc:
            with session_scope(self.sessions) as session:
                jobs.fail_job(session, job_id, f"{type(exc).__name__}: {exc}")
            raise
        # A one-off job (the CLI's ``pretrain``, the quickstart) ends with its process: no online loop
        # follows here to adopt the agent; a serving process loads the activated version from the registry.
        return trained.version
