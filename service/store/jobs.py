"""Training jobs in the database: queued by the admin API or at start, claimed by one trainer."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.errors import NotFoundError
from service.store.models import TrainingJob, utcnow

ACTIVE_STATUSES = ("queued", "running")

# The error of a job cut short by its trainer stopping: written when a job is stopped mid-way and when a
# trainer starts and finds jobs left ``running`` by a process that died, so both read the same.
INTERRUPTED_ERROR = "interrupted: the trainer process stopped"


def enqueue_job(session: Session, kind: str, params: dict[str, Any]) -> TrainingJob:
    """A new queued job (committed by the caller)."""
    job = TrainingJob(kind=kind, status="queued", params=params, progress=0.0, created_at=utcnow())
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> TrainingJob:
    """One job, or NotFoundError."""
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist", field="job_id")
    return job


def list_jobs(session: Session, limit: int = 50) -> list[TrainingJob]:
    """The newest jobs first."""
    return list(session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc()).limit(limit)))


def has_active_job(session: Session, kind: str | None = None) -> bool:
    """Whether a job (of ``kind``) is queued or running."""
    query = select(TrainingJob.id).where(TrainingJob.status.in_(ACTIVE_STATUSES))
    if kind is not None:
        query = query.where(TrainingJob.kind == kind)
    return session.scalar(query.limit(1)) is not None


def claim_next_job(session: Session) -> TrainingJob | None:
    """Atomically move the oldest queued job to ``running`` (a conditional UPDATE, so one claimer wins)."""
    candidate = session.scalar(
        select(TrainingJob.id).where(TrainingJob.status == "queued").order_by(TrainingJob.id).limit(1)
    )
    if candidate is None:
        return None
    claimed = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == candidate, TrainingJob.status == "queued")
        .values(status="running", started_at=utcnow())
    ).rowcount
    session.commit()
    return session.get(TrainingJob, candidate) if claimed else None


def fail_job(session: Session, job_id: int, error: str) -> None:
    """Record that a job failed with ``error`` (committed by the caller)."""
    session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id)
        .values(status="failed", error=error, finished_at=utcnow())
    )


def fail_interrupted_jobs(session: Session) -> int:
    """Jobs left ``running`` by a process that died are marked failed (called when a trainer starts)."""
    count = session.execute(
        update(TrainingJob)
        .where(TrainingJob.status == "running")
        .values(status="failed", error=INTERRUPTED_ERROR, finished_at=utcnow())
    ).rowcount
    session.commit()
    return count


JOB_STATES = ("queued", "running", "succeeded", "failed")


def count_by_state(session: Session) -> dict[str, int]:
    """How many jobs are in each state (every one of :data:`JOB_STATES`, 0 when none)."""
    counts = dict.fromkeys(JOB_STATES, 0)
    for state, n in session.execute(
        select(TrainingJob.status, func.count()).group_by(TrainingJob.status)
    ).all():
        counts[state] = int(n)
    return counts
