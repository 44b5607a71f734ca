"""The ``evaluate`` job (``POST /admin/evaluate``): estimate a stored version's one-step value on the logged
decisions, against the active version, on the trainer's job thread, with progress on the job's row.

Params: ``version``, ``since``/``until`` (ISO 8601 or null) and ``baseline`` (a version, or null for the
version active when the job runs; no baseline when that is the evaluated version itself).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.learning.promotion import store_evaluation
from service.serving.policy_store import decode_checkpoint
from service.settings import Settings
from service.store import evaluations, registry, retention
from service.store.db import session_scope
from service.store.models import TrainingJob, utcnow

KIND = retention.EVALUATE_JOB_KIND
"""Its jobs' versions keep their checkpoints until the job ends (:mod:`service.store.retention`)."""
PROGRESS_EVERY_S = 0.5


def _when(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _progress_writer(
    sessions: sessionmaker[Session], job_id: int, check_stop: Callable[[], None]
) -> Callable[[float], None]:
    last = [0.0]

    def write(fraction: float) -> None:
        check_stop()
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = now
        with session_scope(sessions) as session:
            row = session.get(TrainingJob, job_id)
            row.progress = min(0.99, max(0.0, fraction))

    return write


def run_evaluate_job(
    sessions: sessionmaker[Session], settings: Settings, job: TrainingJob, check_stop: Callable[[], None]
) -> int:
    """Run a claimed ``evaluate`` job to completion: store the evaluation and mark the job succeeded with
    the headline numbers as its metrics. Returns the evaluation's id; raises on failure (the job runner
    records it on the job's row)."""
    params = dict(job.params or {})
    version = int(params["version"])
    with sessions() as session:
        checkpoint = registry.load_checkpoint(session, version)
        baseline = params.get("baseline")
        if baseline is None:
            baseline = registry.active_version_number(session)
    baseline = None if baseline is None or int(baseline) == version else int(baseline)
    network = decode_checkpoint(checkpoint)
    progress = _progress_writer(sessions, job.id, check_stop)
    with session_scope(sessions) as session:
        row = store_evaluation(
            session,
            settings,
            version,
            network,
            baseline,
            "admin",
            since=_when(params.get("since")),
            until=_when(params.get("until")),
            job_id=job.id,
            progress=progress,
        )
        result = evaluations.evaluation_dict(row)
        job_row = session.get(TrainingJob, job.id)
        job_row.status = "succeeded"
        job_row.progress = 1.0
        job_row.model_version = version
        job_row.finished_at = utcnow()
        job_row.metrics = {
            key: result[key]
            for key in ("id", "estimator", "value", "lower", "upper", "ess", "n_decisions", "n_sessions")
        } | {k: result[k] for k in ("baseline_version", "diff_value", "diff_lower", "diff_upper", "warnings")}
        return int(row.id)
