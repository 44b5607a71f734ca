"""decisions.learn: whether a served decision may become a live transition (``"learn": false`` on /act
marks evaluation or QA traffic, which is stored and takes feedback but is never learned from).

Every decision stored before this revision was served for learning, so the column is added with the
server default true, which fills the existing rows on both databases (PostgreSQL 11+ records a constant
default without rewriting the table; SQLite's ALTER TABLE ADD COLUMN never rewrites it).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 13:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode as in 0001: on SQLite an added column is still a plain ALTER TABLE ADD COLUMN, and the
    # downgrade's drop recreates the table (SQLite cannot drop a column in place before 3.35).
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("learn", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("learn")
