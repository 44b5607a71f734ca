"""model_activations: every activation of a model version, with its reason (the dashboard's history).

``model_versions.activated_at`` holds only a version's latest activation; a rollback and a
re-activation overwrite it. This table keeps each one: the version, when, and why (``pretrain``,
``retrain``, ``online``: a job's or the online loop's new version activated on save; ``manual``: the
admin API, rollbacks included). Existing databases get one row per version with an ``activated_at``,
with the reason ``backfill`` (what caused that activation was not recorded before this table).

Also an index on ``decisions.created_at``: the dashboard and the report read decisions by time window
every few seconds, which would otherwise scan the whole table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 13:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_activations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["version"], ["model_versions.version"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("model_activations", schema=None) as batch_op:
        batch_op.create_index("ix_model_activations_version", ["version"], unique=False)
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index("ix_decisions_created", ["created_at"], unique=False)
    # Backfill in SQL (no rows through Python): each version's latest activation, as far as it is known.
    op.execute(
        "INSERT INTO model_activations (version, activated_at, reason) "
        "SELECT version, activated_at, 'backfill' FROM model_versions "
        "WHERE activated_at IS NOT NULL ORDER BY activated_at"
    )


def downgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_decisions_created")
    with op.batch_alter_table("model_activations", schema=None) as batch_op:
        batch_op.drop_index("ix_model_activations_version")
    op.drop_table("model_activations")
