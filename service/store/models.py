"""ORM models. The schema itself is created only by the Alembic migrations in migrations/."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments an INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for big tables.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """``TIMESTAMP WITH TIME ZONE`` that always reads back an aware UTC datetime.

    SQLite has no time zone type: it stores the UTC wall time and hands back naive datetimes, which the
    API would show without an offset. Values are written in UTC (a naive one is taken as UTC) and read
    back aware on both databases. The column type is ``DateTime(timezone=True)``, as the migrations say.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Timezone-aware now in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of all tables."""


class Item(Base):
    """The catalogue: ``action_index`` is the agent's action, ``item_id`` the users' string id."""

    __tablename__ = "items"

    action_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    item_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class LoggedInteraction(Base):
    """One logged step of the expert/logging policy: a demonstration row (the integration contract)."""

    __tablename__ = "logged_interactions"
    __table_args__ = (UniqueConstraint("session_id", "step", name="uq_logged_session_step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(255), nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    # float32 little-endian bytes: 4 bytes a feature, loaded straight into NumPy.
    state: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    item_id: Mapped[str] = mapped_column(String(255), nullable=False)
    reward: Mapped[float] = mapped_column(Float, nullable=False)
    done: Mapped[bool] = mapped_column(Boolean, nullable=False)
    propensity: Mapped[float | None] = mapped_column(Float, nullable=True)
    # none_as_null: a missing list is SQL NULL (not JSON null), as the PostgreSQL COPY path writes it.
    allowed_items: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    timestamp: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Decision(Base):
    """Every served action, stored before the response is sent."""

    __tablename__ = "decisions"
    __table_args__ = (
        Index("ix_decisions_session_created", "session_id", "created_at"),
        Index("ix_decisions_pending", "transition_built", "created_at"),
    )

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    allowed_mask: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    ranking: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False)
    item_id: Mapped[str] = mapped_column(String(255), nullable=False)
    action_index: Mapped[int] = mapped_column(Integer, nullable=False)
    propensity: Mapped[float] = mapped_column(Float, nullable=False)
    explored: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    model_version: Mapped[int] = mapped_column(Integer, nullable=False)
    policy_revision: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    transition_built: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class Feedback(Base):
    """Rewards joined to decisions by event id; ``dedup_key`` makes re-sent feedback idempotent."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("event_id", "dedup_key", name="uq_feedback_event_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("decisions.event_id", ondelete="CASCADE"), nullable=False, index=True
    )
    dedup_key: Mapped[str] = mapped_column(String(128), nullable=False)
    reward: Mapped[float] = mapped_column(Float, nullable=False)
    done: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class LiveTransition(Base):
    """A live transition built from a decision and its feedback: the agent part of the replay."""

    __tablename__ = "live_transitions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("decisions.event_id", ondelete="CASCADE"), nullable=False, unique=True
    )
    state: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    action_index: Mapped[int] = mapped_column(Integer, nullable=False)
    reward: Mapped[float] = mapped_column(Float, nullable=False)
    next_state: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    done: Mapped[bool] = mapped_column(Boolean, nullable=False)
    truncated: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    mask: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    next_mask: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    default_reward_used: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class ModelVersion(Base):
    """A saved agent checkpoint with how it was made; exactly one is active at a time."""

    __tablename__ = "model_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    source: Mapped[str] = mapped_column(String(32), nullable=False)
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_updates: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    state_dim: Mapped[int] = mapped_column(Integer, nullable=False)
    n_actions: Mapped[int] = mapped_column(Integer, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    checkpoint: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TrainingJob(Base):
    """A background job (pretrain or retrain): queued in the database, claimed by a trainer process."""

    __tablename__ = "training_jobs"
    __table_args__ = (Index("ix_training_jobs_status", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ServiceMeta(Base):
    """Facts the service learned from the data, one key/value row each (migration 0002).

    ``state_dim``: the state width of the imported logs (the number of float32 features);
    ``state_dim_source``: where it was learned from (the first file imported, for error messages).
    Read and written through :mod:`service.store.shape`.
    """

    __tablename__ = "service_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
