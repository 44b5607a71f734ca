"""The trainer: one object that runs the learner's two loops on their threads and answers for them.

Its parts, one job each:

- :mod:`service.learning.job_runner` — pretrain/retrain jobs, each on a fresh agent of its own;
- :mod:`service.learning.online` — the online loop: follow the active version, learn from live
  transitions, publish and save;
- :mod:`service.learning.handoff` — a finished job's agent on its way to the online loop;
- :mod:`service.learning.publishing` — model versions into the registry, weights into the policy store;
- :mod:`service.learning.replay` — filling an agent's replay from the database.

This module owns the threads and their lifecycle, and keeps the trainer's one public face for the API,
the CLI and the tests.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.errors import UnavailableError
from service.learning import agents
from service.learning.apprentice_gate import ApprenticeGate
from service.learning.handoff import Handoff
from service.learning.job_runner import JobRunner
from service.learning.online import OnlineLoop
from service.learning.replay import ReplayLoader
from service.learning.saving import SaveRequests, save_unsaved
from service.metrics import DATABASE_ERRORS
from service.serving.policy_store import PolicyStore
from service.settings import Settings
from service.store import jobs
from service.store.db import database_unavailable, session_scope
from service.store.models import TrainingJob

log = logging.getLogger(__name__)

# How long a stopping loop waits for the job thread: it stops at its next callback or demonstration
# chunk, well within this; a job still running then is failed by the next trainer's start.
JOB_THREAD_JOIN_S = 60.0

# The background online loop is reported stalled when no iteration succeeded for this long (or 30 poll
# intervals, when longer): an iteration normally takes well under a second, but adopting a new version
# reloads every demonstration (about a minute for millions of rows), which is not a stall.
STALLED_AFTER_S = 300.0


def _online(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.online_loop, name), doc=doc)


class Trainer:
    """Owns the learning agent. One trainer per deployment: in the API process (role ``all``) or in
    the ``worker`` process. Every step is guarded: a crash is logged and retried later, and serving
    never waits on it.

    In the background mode (:meth:`run_forever`) two threads run: the online loop, which alone reads and
    replaces the agent (follow the active version, learn from live transitions, publish, save), and
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
        self.last_error: str | None = None
        self._last_success: float | None = None  # monotonic time of the background loop's last iteration
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._job_thread: threading.Thread | None = None
        handoff = Handoff()
        self.replays = ReplayLoader(settings, engine, session_factory)
        self.job_runner = JobRunner(settings, engine, session_factory, self.replays, handoff, self._stop)
        self.online_loop = OnlineLoop(settings, session_factory, store, self.replays, handoff)
        self.save_requests = SaveRequests()
        self.apprentice_gate = ApprenticeGate(settings, session_factory)  # hands serving to the model

    # The online loop's state, read through the trainer (the API's stats, the CLI, the tests).
    agent = _online("agent", "The online agent (None before the first version is adopted).")
    catalogue = _online("catalogue", "The catalogue the online agent acts on.")
    base_version = _online("base_version", "The model version the online agent started from or saved.")
    demo_size = _online("demo_size", "Demonstrations in the online agent's replay.")
    live_size = _online("live_size", "Live transitions observed by the online agent.")
    transitions_seen = _online("transitions_seen", "Live transitions learned from since this start.")
    last_losses = _online("last_losses", "The losses of the online loop's last update.")
    history = _online("history", "Update counts and losses over time (in memory, for the dashboard).")
    _failed_version = _online("failed_version", "A version the online loop could not adopt.")

    @property
    def last_job_error(self) -> str | None:
        """Why the job loop last failed (None once it runs again)."""
        return self.job_runner.last_error

    @property
    def _job_progress(self) -> Any:
        """The factory of a job's pretrain callback (replaceable, e.g. by a test that holds a job)."""
        return self.job_runner.progress_callback

    @_job_progress.setter
    def _job_progress(self, factory: Any) -> None:
        self.job_runner.progress_callback = factory  # type: ignore[method-assign]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Run the loop in a daemon thread (the API process)."""
        self._thread = threading.Thread(target=self.run_forever, name="trainer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask both loops to stop and wait for them (a running job is failed as interrupted)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        # The online loop first: it saves its unsaved updates, then joins the job thread it started.
        for thread in (self._thread, self._job_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        if self.alive:
            log.warning("the trainer did not stop within %.0f s: unsaved online updates may be lost", timeout)

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
        return self.job_runner.running_job is not None

    def run_forever(self) -> None:
        """Run the online loop until stopped, with training jobs on a thread of their own; errors are
        logged, never fatal."""
        started = clean = False
        self._last_success = time.monotonic()
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
                    self._last_success = time.monotonic()
                except Exception as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if database_unavailable(exc):
                        DATABASE_ERRORS.labels("trainer").inc()
                    log.exception("trainer step failed; retrying")
                    self._stop.wait(min(5.0, self.settings.trainer_poll_s * 5))
                self._stop.wait(self.settings.trainer_poll_s)
            clean = True
        finally:
            self._stop.set()  # also when leaving on an exception (KeyboardInterrupt in the worker)
            if clean:  # not after an exception, which may have left the agent half-way through an update
                self.save_requests.answer(self.online_loop)  # a save asked for meanwhile is done first
                save_unsaved(self.online_loop)
            job_thread = self._job_thread
            if job_thread is not None:
                job_thread.join(JOB_THREAD_JOIN_S)
                if job_thread.is_alive():
                    log.warning("the job thread did not stop in %.0f s", JOB_THREAD_JOIN_S)

    def _start_job_thread(self) -> None:
        if self._job_thread is None or not self._job_thread.is_alive():
            self._job_thread = threading.Thread(target=self.job_runner.loop, name="trainer-jobs", daemon=True)
            self._job_thread.start()

    # ------------------------------------------------------------------ one step at a time
    def step(self) -> None:
        """One synchronous iteration: run a queued job, follow the active version, learn from new
        transitions (the CLI and tests; the background mode runs jobs on their own thread)."""
        self.run_next_job()
        self.online_step()

    def online_step(self) -> None:
        """One iteration of the online loop: adopt a finished job's agent or follow the active version,
        then learn from new transitions and let the gate judge apprentice mode; then answer the save
        requests made meanwhile."""
        try:
            self.sync_active_version()
            self.learn_online()
            self.apprentice_gate.maybe_check()  # off the request path: see its module
        finally:
            self.save_requests.answer(self.online_loop)  # on this thread: the only one using the agent

    def ensure_initial_pretrain(self) -> int | None:
        """Queue a pretrain job when there is no model yet but there are demonstrations."""
        return self.job_runner.ensure_initial_pretrain()

    def run_next_job(self) -> TrainingJob | None:
        """Claim and run one queued job to completion in this thread, adopting its agent when it
        activates (the job row records success or failure)."""
        job = self.job_runner.claim()
        if job is None:
            return None
        trained = self.job_runner.execute(job)
        if trained is not None and trained.activate:
            self.online_loop.adopt_trained(trained)
        return job

    def run_job_now(self, kind: str, params: dict[str, Any], progress: bool = True) -> int:
        """Queue and run a job in this thread (the CLI's ``pretrain``); returns the model version."""
        return self.job_runner.run_now(kind, params, progress)

    def sync_active_version(self) -> None:
        """Adopt a finished job's agent, or follow the active model version."""
        self.online_loop.sync_active_version()

    def learn_online(self) -> int:
        """Turn ready decisions into live transitions, learn from them, publish and save; returns updates."""
        return self.online_loop.learn_online()

    def save_online_version(self) -> int | None:
        """Store the online-trained weights as a new, active model version (None: a job's agent waits)."""
        return self.online_loop.save_online_version()

    def save_now(self) -> int:
        """Save the online weights as a new, active version now (``POST /admin/save``) and return it; the
        online loop's thread does it within one poll interval. Raises a ServiceError saying why not (see
        :func:`service.learning.saving.save_now`; UnavailableError when the loop is not running)."""
        if not self.alive:
            raise UnavailableError("the trainer is not running (starting or stopping)")
        return self.save_requests.wait(self.save_requests.submit())

    def problems(self) -> list[str]:
        """What is wrong with learning, one line each (/readyz and /admin/stats): stalled (no successful
        iteration for a while, or a replay that cannot be sampled) or diverged (every recent update
        skipped as non-finite). Serving goes on with the last good weights meanwhile."""
        online, found = self.online_loop, []
        if self.alive and self._last_success is not None:
            idle = time.monotonic() - self._last_success
            if idle > max(STALLED_AFTER_S, 30 * self.settings.trainer_poll_s):
                why = f": {self.last_error}" if self.last_error else ""
                found.append(f"trainer stalled: no successful iteration for {idle:.0f} s{why}")
        if online.sampling_error is not None:
            found.append(f"trainer stalled: updates cannot run ({online.sampling_error})")
        agent = online.agent
        if agent is not None and bool(getattr(agent, "diverged", False)):
            found.append(
                f"trainer diverged: {agent.consecutive_skipped_updates} consecutive update(s) skipped "
                "(non-finite loss or gradient) or non-finite weights; serving keeps the last published ones"
            )
        return found

    def status(self) -> dict[str, Any]:
        """Buffer sizes and health, for /admin/stats."""
        online = self.online_loop
        agent = online.agent
        return {
            "running": self.alive,
            "job_running": self.job_running,
            "job_id": self.job_runner.running_job,
            "model_version": online.base_version,
            "n_updates": int(online.agent.n_updates) if online.agent is not None else 0,
            "demonstration_buffer": online.demo_size,
            "live_buffer": online.live_buffer,
            "live_transitions_learned": online.transitions_seen,
            "updates_since_save": online.updates_since_save,
            "last_losses": online.last_losses,
            "last_error": self.last_error,
            "last_job_error": self.job_runner.last_error,
            "n_skipped_updates": int(getattr(agent, "n_skipped_updates", 0)),
            # refused on the way in (counted on every load) + drawn once, then quarantined in the replay
            "quarantined_rows": online.quarantined + int(getattr(agent, "n_quarantined", 0)),
            "diverged": bool(getattr(agent, "diverged", False)),
            "sampling_error": online.sampling_error,
            "problems": self.problems(),
        }
