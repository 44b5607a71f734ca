"""Model versions in the database: save, list, activate (rollback), read the active one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.errors import ModelInvalidError, NotFoundError
from service.store.models import ModelActivation, ModelVersion, utcnow


def save_version(
    session: Session,
    *,
    checkpoint: bytes,
    state_dim: int,
    n_actions: int,
    config: dict[str, Any],
    metrics: dict[str, Any],
    source: str,
    n_updates: int,
    parent_version: int | None = None,
    job_id: int | None = None,
    activate: bool = False,
) -> ModelVersion:
    """Store a new model version (and make it the active one when asked, recorded with its ``source``
    as the activation's reason)."""
    row = ModelVersion(
        checkpoint=checkpoint,
        state_dim=state_dim,
        n_actions=n_actions,
        config=config,
        metrics=metrics,
        source=source,
        n_updates=n_updates,
        parent_version=parent_version,
        job_id=job_id,
        is_active=False,
    )
    session.add(row)
    session.flush()
    if activate:
        activate_version(session, row.version, reason=source)
    return row


def activate_version(session: Session, version: int, reason: str = "manual") -> ModelVersion:
    """Make ``version`` the only active model version (the serving replicas follow within seconds), and
    record the activation with its ``reason`` (``model_activations``: the dashboard's history)."""
    row = session.get(ModelVersion, version)
    if row is None:
        raise NotFoundError(f"model version {version} does not exist", field="version")
    session.execute(update(ModelVersion).where(ModelVersion.is_active).values(is_active=False))
    row.is_active = True
    row.activated_at = utcnow()
    session.add(ModelActivation(version=version, activated_at=row.activated_at, reason=reason))
    session.flush()
    return row


def active_version_number(session: Session) -> int | None:
    """The active version number, without loading its checkpoint."""
    return session.scalar(
        select(ModelVersion.version).where(ModelVersion.is_active).order_by(ModelVersion.version.desc())
    )


def load_checkpoint(session: Session, version: int) -> bytes:
    """The checkpoint bytes of one version; 404 when it does not exist, 409 when the retention rule
    pruned them (:mod:`service.store.retention`)."""
    checkpoint = session.scalar(select(ModelVersion.checkpoint).where(ModelVersion.version == version))
    if checkpoint is None:
        raise NotFoundError(f"model version {version} does not exist", field="version")
    if len(checkpoint) == 0:  # emptied by the retention rule (no saved agent is zero bytes)
        raise ModelInvalidError(
            f"model version {version} was pruned by the checkpoint retention rule (DQFD_KEEP_VERSIONS): "
            "its checkpoint is deleted, its history kept",
            field="version",
        )
    return checkpoint


def get_version(session: Session, version: int) -> ModelVersion:
    """One version, without its checkpoint bytes loaded."""
    from sqlalchemy.orm import defer

    row = session.scalar(
        select(ModelVersion).options(defer(ModelVersion.checkpoint)).where(ModelVersion.version == version)
    )
    if row is None:
        raise NotFoundError(f"model version {version} does not exist", field="version")
    return row


def list_versions(session: Session) -> list[ModelVersion]:
    """All versions, newest first, without their checkpoint bytes loaded."""
    from sqlalchemy.orm import defer

    return list(
        session.scalars(
            select(ModelVersion).options(defer(ModelVersion.checkpoint)).order_by(ModelVersion.version.desc())
        )
    )


def list_activations(session: Session, limit: int = 200) -> list[ModelActivation]:
    """The newest ``limit`` activations, newest first (a version activated twice appears twice)."""
    return list(
        session.scalars(
            select(ModelActivation)
            .order_by(ModelActivation.activated_at.desc(), ModelActivation.id.desc())
            .limit(limit)
        )
    )
