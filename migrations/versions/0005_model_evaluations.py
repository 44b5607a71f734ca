"""model_evaluations and promotion_decisions: off-policy estimates of model versions, and the gate's verdicts.

``model_evaluations``: one row per evaluation of a stored model version on logged decisions (an admin's
``POST /admin/evaluate`` job, or the promotion gate before activating a new version). The headline
estimator's value and 95% interval are columns (``estimator`` names it, ``dr`` by default); every
estimator's numbers are in ``estimates`` (JSON). When the evaluation compares against a baseline (the
version active at the time), ``baseline_version`` and its estimate on the same decisions are stored with
the paired difference (candidate minus baseline, resampled together by session).

``promotion_decisions``: one row per gate verdict on a new version (``passed`` or not, with the reason in
words, the margin applied, the version serving at the time and the evaluation it rests on). A version the
gate held back is stored and not served; an admin can still activate it (``model_activations`` records
that as ``manual``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 13:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_evaluations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        # "admin" (POST /admin/evaluate) or "gate" (the promotion gate's own evaluation).
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("estimator", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("lower", sa.Float(), nullable=True),
        sa.Column("upper", sa.Float(), nullable=True),
        sa.Column("ess", sa.Float(), nullable=True),
        sa.Column("n_decisions", sa.Integer(), nullable=False),
        sa.Column("n_sessions", sa.Integer(), nullable=False),
        sa.Column("estimates", sa.JSON(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("baseline_version", sa.Integer(), nullable=True),
        sa.Column("baseline_value", sa.Float(), nullable=True),
        sa.Column("baseline_lower", sa.Float(), nullable=True),
        sa.Column("baseline_upper", sa.Float(), nullable=True),
        sa.Column("diff_value", sa.Float(), nullable=True),
        sa.Column("diff_lower", sa.Float(), nullable=True),
        sa.Column("diff_upper", sa.Float(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["version"], ["model_versions.version"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("model_evaluations", schema=None) as batch_op:
        batch_op.create_index("ix_model_evaluations_version", ["version"], unique=False)
    op.create_table(
        "promotion_decisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("active_version", sa.Integer(), nullable=True),
        sa.Column("margin", sa.Float(), nullable=True),
        sa.Column("evaluation_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["version"], ["model_versions.version"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["evaluation_id"], ["model_evaluations.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("promotion_decisions", schema=None) as batch_op:
        batch_op.create_index("ix_promotion_decisions_version", ["version"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("promotion_decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_promotion_decisions_version")
    op.drop_table("promotion_decisions")
    with op.batch_alter_table("model_evaluations", schema=None) as batch_op:
        batch_op.drop_index("ix_model_evaluations_version")
    op.drop_table("model_evaluations")
