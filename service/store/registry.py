"""Model versions in the database: save, list, activate (rollback), read the active one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.errors import NotFoundError
from service.store.models import ModelVersion, utcnow


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
    """Store a new model version (and make it the active one when asked)."""
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
        activate_version(session, row.version)
    return row


def activate_version(session: Session, version: int) -> ModelVersion:
    """Make ``version`` the only active model version (the serving replicas follow within seconds)."""
    row = session.get(ModelVersion, version)
    if row is None:
        raise NotFoundError(f"model version {version} does not exist", field="version")
    session.execute(update(ModelVersion).where(ModelVersion.is_active).values(is_active=False))
    row.is_active = True
    row.activated_at = utcnow()
    session.flush()
    return row


def active_version_number(session: Session) -> int | None:
    """The active version number, without loading its checkpoint."""
    return session.scalar(
        select(ModelVersion.version).where(ModelVersion.is_active).order_by(ModelVersion.version.desc())
    )


def load_checkpoint(session: Session, version: int) -> bytes:
    """The checkpoint bytes of one version."""
    checkpoint = session.scalar(select(ModelVersion.checkpoint).where(ModelVersion.version == version))
    if checkpoint is None:
        raise NotFoundError(f"model version {version} does not exist", field="version")
    return checkpoint


def list_versions(session: Session) -> list[ModelVersion]:
    """All versions, newest first, without their checkpoint bytes loaded."""
    from sqlalchemy.orm import defer

    return list(
        session.scalars(
            select(ModelVersion).options(defer(ModelVersion.checkpoint)).order_by(ModelVersion.version.desc())
        )
    )
