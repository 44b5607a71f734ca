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
    false,
    true,
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
        # The dashboard's and the report's time-window queries (migration 0004).
        Index("ix_decisions_created", "created_at"),
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
    # True once the builder is done with the decision: its live transition is built, or (stored so) it is
    # not learned from (``learn`` false), so the pending-decision index never holds evaluation traffic.
    transition_built: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # ``"learn": false`` on /act (migration 0003): evaluation or QA traffic, stored with its feedback but
    # never a live transition.
    learn: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True, server_default=true())
    # Apprentice and shadow modes (migration 0006 says what each column holds; docs/service.md).
    baseline_item_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    baseline_propensity: Mapped[float | None] = mapped_column(Float, nullable=True)
    apprentice: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    model_item_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    model_propensity: Mapped[float | None] = mapped_column(Float, nullable=True)
    shadow_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    shadow_item_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    shadow_propensity: Mapped[float | None] = mapped_column(Float, nullable=True)


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
    # An apprentice decision's (migration 0006): a live demonstration, never in the agent part of the replay.
    demonstration: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # NOT NULL


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


class ModelActivation(Base):
    """One activation of a model version (migration 0004): when and why, for the activation history.

    ``reason``: ``pretrain``/``retrain``/``online`` (a new version activated as it was saved),
    ``manual`` (the admin API, rollbacks included) or ``backfill`` (from ``activated_at`` by the
    migration). ``model_versions.activated_at`` stays the latest one.
    """

    __tablename__ = "model_activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(
        Integer, ForeignKey("model_versions.version", ondelete="CASCADE"), nullable=False, index=True
    )
    activated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    reason: Mapped[str] = mapped_column(String(32), nullable=False)


class ModelEvaluation(Base):
    """An off-policy estimate of a model version on logged decisions (migration 0005).

    ``purpose``: ``admin`` (``POST /admin/evaluate``) or ``gate`` (the promotion gate). The headline
    ``estimator`` (``dr``) is in the columns; every estimator's numbers in ``estimates``. With a
    ``baseline_version``, its estimate on the same decisions and the paired difference (candidate minus
    baseline, resampled together by session) are stored too.
    """

    __tablename__ = "model_evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(
        Integer, ForeignKey("model_versions.version", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    estimator: Mapped[str] = mapped_column(String(16), nullable=False)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    lower: Mapped[float | None] = mapped_column(Float, nullable=True)
    upper: Mapped[float | None] = mapped_column(Float, nullable=True)
    ess: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_decisions: Mapped[int] = mapped_column(Integer, nullable=False)
    n_sessions: Mapped[int] = mapped_column(Integer, nullable=False)
    estimates: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    warnings: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    baseline_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    baseline_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    baseline_lower: Mapped[float | None] = mapped_column(Float, nullable=True)
    baseline_upper: Mapped[float | None] = mapped_column(Float, nullable=True)
    diff_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    diff_lower: Mapped[float | None] = mapped_column(Float, nullable=True)
    diff_upper: Mapped[float | None] = mapped_column(Float, nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)


class PromotionDecision(Base):
    """The promotion gate's verdict on a new version (migration 0005): activated or held back, and why."""

    __tablename__ = "promotion_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(
        Integer, ForeignKey("model_versions.version", ondelete="CASCADE"), nullable=False, index=True
    )
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    passed: Mapped[bool] = mapped_column(Boolean, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    active_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    margin: Mapped[float | None] = mapped_column(Float, nullable=True)
    evaluation_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("model_evaluations.id", ondelete="SET NULL"), nullable=True
    )


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
