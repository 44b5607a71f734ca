"""Training jobs run beside online learning: a retrain never pauses the online loop."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.ingest.catalogue import Catalogue, load_catalogue
from service.learning import agents
from service.learning.trainer import Trainer
from service.serving.policy_store import PolicyStore
from service.settings import Settings
from service.store import jobs
from service.store.db import make_engine, make_session_factory, session_scope
from service.store.features import encode_state
from service.store.models import Decision, Feedback, LiveTransition, ModelVersion, TrainingJob
from tests.service.conftest import wait_for

TIMEOUT = 60.0


@pytest.fixture
def sessions(trained: Settings) -> Iterator[sessionmaker[Session]]:
    """A session factory on the test database (model version 1 is active)."""
    engine = make_engine(trained.database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _trainer(settings: Settings, sessions: sessionmaker[Session], **overrides: Any) -> Trainer:
    """A trainer publishing to its own policy store, as in the API process."""
    settings = settings.model_copy(update={"role": "worker", **overrides})
    store = PolicyStore(settings.state_dim)
    with sessions() as session:
        store.set_catalogue(load_catalogue(session))
    return Trainer(settings, sessions.kw["bind"], sessions, store)


def _feedback(sessions: sessionmaker[Session], n: int, seed: int) -> None:
    """``n`` served decisions with terminal feedback: each becomes a live transition at once."""
    rng = np.random.default_rng(seed)
    with session_scope(sessions) as session:
        for i in range(n):
            event = uuid.uuid4().hex
            session.add(
                Decision(
                    event_id=event,
                    session_id=None,
                    step=0,
                    state=encode_state(rng.normal(size=4)),
                    ranking=[],
                    item_id=f"item-{i % 5}",
                    action_index=i % 5,
                    propensity=1.0,
                    model_version=1,
                )
            )
            session.flush()
            session.add(Feedback(event_id=event, dedup_key="k", reward=float(i % 2), done=True))


def _queue(sessions: sessionmaker[Session], steps: int, activate: bool = True) -> int:
    with session_scope(sessions) as session:
        return jobs.enqueue_job(session, "retrain", {"steps": steps, "activate": activate}).id


def _job(sessions: sessionmaker[Session], job_id: int) -> TrainingJob:
    with sessions() as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        return job


def _finished(sessions: sessionmaker[Session], job_id: int) -> Callable[[], TrainingJob | None]:
    def check() -> TrainingJob | None:
        job = _job(sessions, job_id)
        return job if job.status in {"succeeded", "failed"} else None

    return check


def _live_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(LiveTransition)) or 0)


def _block_job_progress(trainer: Trainer) -> tuple[threading.Event, threading.Event]:
    """Make the next job wait at its first pretrain callback until released: (inside, release)."""
    inside, release = threading.Event(), threading.Event()
    original = trainer._job_progress

    def blocking(job_id: int, steps: int, bar: Any) -> Callable[[int, dict[str, Any]], None]:
        callback = original(job_id, steps, bar)

        def wrapped(step: int, losses: dict[str, Any]) -> None:
            callback(step, losses)
            if not inside.is_set():
                inside.set()
                assert release.wait(TIMEOUT), "the test never released the job"

        return wrapped

    trainer._job_progress = blocking  # type: ignore[method-assign]
    return inside, release


def test_online_learning_goes_on_while_a_retrain_runs(
    trained: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[int] = []
    real_load = agents.agent_from_bytes
    monkeypatch.setattr(agents, "agent_from_bytes", lambda b, *rest: loads.append(1) or real_load(b, *rest))
    trainer = _trainer(trained, sessions, save_every_updates=4, publish_every_updates=1)
    inside, release = _block_job_progress(trainer)
    trainer.start()
    try:
        wait_for(lambda: trainer.base_version == 1, timeout=TIMEOUT)
        old_agent = trainer.agent
        job_id = _queue(sessions, steps=200)
        assert inside.wait(TIMEOUT), "the job did not start"
        assert _job(sessions, job_id).status == "running"
        assert trainer.status()["job_running"] and trainer.status()["job_id"] == job_id

        # The job is mid-pretrain: feedback still reaches the online agent, which saves a version.
        updates_before = old_agent.n_updates
        _feedback(sessions, 6, seed=1)
        wait_for(lambda: old_agent.n_updates >= updates_before + 6, timeout=TIMEOUT)
        assert trainer.transitions_seen == 6
        online_version = wait_for(lambda: trainer.base_version if trainer.base_version != 1 else None)
        assert trainer.agent is old_agent and trainer.live_size == 6
        assert _job(sessions, job_id).status == "running"
        with sessions() as session:
            saved = session.get(ModelVersion, online_version)
            assert saved.source == "online" and saved.parent_version == 1 and saved.is_active

        release.set()
        job = wait_for(_finished(sessions, job_id), timeout=TIMEOUT)
        assert job.status == "succeeded", job.error
        assert job.metrics["live_transitions"] == 0  # its snapshot predates the feedback
        wait_for(lambda: trainer.store.policy.model_version == job.model_version, timeout=TIMEOUT)
        assert trainer.base_version == job.model_version
        assert trainer.agent is not old_agent
        # The retrained agent observed every transition stored while it trained, in its replay.
        assert trainer.agent.n_observed == _live_count(sessions) == 6
        assert trainer.live_size == 6 and trainer.status()["live_buffer"] == 6
        assert trainer.demo_size == job.metrics["demonstrations"] > 0
        assert not trainer.status()["job_running"]
        assert len(loads) == 1  # version 1 at start; the job's version was adopted, not loaded again

        # Online learning goes on from the retrained agent.
        retrained = trainer.agent
        updates = retrained.n_updates
        _feedback(sessions, 4, seed=2)
        wait_for(lambda: trainer.base_version != job.model_version, timeout=TIMEOUT)
        assert trainer.agent is retrained and retrained.n_updates >= updates + 4
        with sessions() as session:
            latest = session.get(ModelVersion, trainer.base_version)
            assert latest.source == "online" and latest.parent_version == job.model_version
    finally:
        release.set()
        trainer.stop(timeout=TIMEOUT)
    assert not trainer.alive and not trainer.jobs_alive


def test_a_failing_job_leaves_online_learning_alone(
    trained: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("pretraining exploded")

    monkeypatch.setattr("agent.dqfd.DQfDAgent.pretrain", broken)
    trainer = _trainer(trained, sessions)
    trainer.start()
    try:
        wait_for(lambda: trainer.base_version == 1, timeout=TIMEOUT)
        old_agent = trainer.agent
        job_id = _queue(sessions, steps=50)
        job = wait_for(_finished(sessions, job_id), timeout=TIMEOUT)
        assert job.status == "failed" and "pretraining exploded" in job.error
        assert job.model_version is None
        _feedback(sessions, 3, seed=3)
        wait_for(lambda: old_agent.n_updates >= 30 + 3, timeout=TIMEOUT)
        assert trainer.transitions_seen == 3
        assert trainer.agent is old_agent and trainer.base_version == 1
        assert trainer.last_error is None and trainer.jobs_alive
    finally:
        trainer.stop(timeout=TIMEOUT)
    assert not trainer.alive and not trainer.jobs_alive


def test_a_job_on_an_empty_catalogue_fails_without_touching_the_agent(
    trained: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _trainer(trained, sessions)
    trainer.step()  # adopts version 1
    old_agent = trainer.agent
    job_id = _queue(sessions, steps=10)
    monkeypatch.setattr(
        "service.learning.job_runner.load_catalogue",
        lambda session, attributes=False: Catalogue.build([], []),
    )
    _feedback(sessions, 2, seed=5)
    trainer.step()  # the job fails; online learning in the same step is unaffected
    job = _job(sessions, job_id)
    assert job.status == "failed" and "the catalogue is empty" in job.error
    assert trainer.agent is old_agent and trainer.base_version == 1 and trainer.transitions_seen == 2


def test_stop_interrupts_a_running_job(trained: Settings, sessions: sessionmaker[Session]) -> None:
    trainer = _trainer(trained, sessions)
    trainer.start()
    try:
        wait_for(lambda: trainer.base_version == 1, timeout=TIMEOUT)
        job_id = _queue(sessions, steps=10_000_000)
        wait_for(lambda: _job(sessions, job_id).progress > 0, timeout=TIMEOUT)
        assert trainer.job_running
    finally:
        trainer.stop(timeout=TIMEOUT)
    assert not trainer.alive and not trainer.jobs_alive
    job = _job(sessions, job_id)
    assert job.status == "failed" and job.error == jobs.INTERRUPTED_ERROR
    assert job.finished_at is not None and trainer.base_version == 1


def test_step_still_runs_a_job_synchronously(trained: Settings, sessions: sessionmaker[Session]) -> None:
    trainer = _trainer(trained, sessions)
    _feedback(sessions, 2, seed=4)
    job_id = _queue(sessions, steps=10)
    trainer.step()  # runs the job, adopts its agent, then learns from the two pending transitions
    job = _job(sessions, job_id)
    assert job.status == "succeeded" and job.model_version == 2
    assert trainer.base_version == 2 and trainer.transitions_seen == 2
    assert trainer.live_size == 2 and trainer.demo_size == job.metrics["demonstrations"] > 0
    assert trainer.run_next_job() is None
