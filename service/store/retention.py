"""Checkpoint retention: which model versions keep their checkpoint bytes (docs/service.md, "Checkpoint
retention").

Online learning saves a version every ``DQFD_SAVE_EVERY_UPDATES`` updates, each with a full checkpoint
(weights, target network, optimizer state): without a rule they fill the database. Kept:

- the active version (it serves);
- the newest ``DQFD_KEEP_VERSIONS`` versions (a rollback through recent online learning, and the online
  loop's latest save, which it continues from even when the promotion gate held it back);
- every version that was ever activated by anything but its own online save: a pretrain or retrain job's
  version, one activated by hand (rollbacks) or by the backfill of migration 0004. An online save is
  activated on save (with the promotion gate off, the default): counting that activation would keep every
  online save and prune nothing;
- the shadow version (apprentice and shadow modes score it on every request);
- every version a queued or running ``evaluate`` job names (its ``version`` and ``baseline``): the job
  reads the checkpoint when it runs, after the jobs queued before it, and would otherwise fail on a
  version pruned while it waited.

A pruned version keeps its row (activations, evaluations, promotion verdicts and decisions point at it,
and deleting it would cascade into that history); its checkpoint becomes empty bytes, which no saved
agent ever is, so no schema change marks it. Activating it answers 409
(:func:`service.store.registry.load_checkpoint`).
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.store.jobs import ACTIVE_STATUSES
from service.store.models import ModelActivation, ModelVersion, TrainingJob
from service.store.modes import read_modes

ONLINE_SAVE_REASON = "online"
"""The activation reason of an online save activated on save (``registry.save_version``'s ``source``)."""

EVALUATE_JOB_KIND = "evaluate"
"""The kind of ``POST /admin/evaluate``'s job (``service.learning.evaluation_job.KIND``, which the store
layer does not import)."""
VERSION_PARAMS = ("version", "baseline")
"""The params of an ``evaluate`` job that name a version whose checkpoint it will read."""


def versions_awaited_by_jobs(session: Session) -> set[int]:
    """The versions named by queued or running ``evaluate`` jobs (a handful of rows: the job queue)."""
    params = session.scalars(
        select(TrainingJob.params).where(
            TrainingJob.kind == EVALUATE_JOB_KIND, TrainingJob.status.in_(ACTIVE_STATUSES)
        )
    )
    return {int(p[key]) for p in params for key in VERSION_PARAMS if (p or {}).get(key) is not None}


def kept_versions(session: Session, keep_last: int) -> set[int]:
    """The versions whose checkpoints the rule keeps (see the module docstring)."""
    kept = set(
        session.scalars(select(ModelVersion.version).order_by(ModelVersion.version.desc()).limit(keep_last))
    )
    kept.update(session.scalars(select(ModelVersion.version).where(ModelVersion.is_active)))
    kept.update(
        session.scalars(
            select(ModelActivation.version).where(ModelActivation.reason != ONLINE_SAVE_REASON).distinct()
        )
    )
    shadow = read_modes(session).shadow_version
    if shadow is not None:
        kept.add(shadow)
    kept.update(versions_awaited_by_jobs(session))
    return kept


PRUNED = func.length(ModelVersion.checkpoint) == 0
"""A pruned version's row (its checkpoint emptied): the length is read, never the bytes."""


def pruned_versions(session: Session, versions: list[int]) -> set[int]:
    """Those of ``versions`` whose checkpoints were pruned."""
    return set(
        session.scalars(select(ModelVersion.version).where(PRUNED, ModelVersion.version.in_(versions)))
    )


def prune_checkpoints(session: Session, keep_last: int) -> list[int]:
    """Empty the checkpoints of the versions the rule does not keep, in the caller's transaction;
    returns the versions pruned now (oldest first)."""
    kept = kept_versions(session, keep_last)
    stored = session.scalars(select(ModelVersion.version).where(~PRUNED).order_by(ModelVersion.version))
    prune = [version for version in stored if version not in kept]
    if prune:
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.version.in_(prune))
            .values(checkpoint=b"")
            .execution_options(synchronize_session=False)
        )
    return prune
