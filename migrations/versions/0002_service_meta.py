"""service_meta: facts learned from the data, first the state width of the imported logs.

Databases that already hold logged interactions get their width backfilled from the stored states
(float32 bytes: the byte length of a state / 4), with the source "the logs already in the database".

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FEATURE_BYTES = 4  # float32


def upgrade() -> None:
    meta = op.create_table(
        "service_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    logs = sa.table("logged_interactions", sa.column("id"), sa.column("state", sa.LargeBinary()))
    conn = op.get_bind()
    width = conn.scalar(sa.select(sa.func.length(logs.c.state)).limit(1))
    if width:
        op.bulk_insert(
            meta,
            [
                {"key": "state_dim", "value": str(int(width) // FEATURE_BYTES)},
                {"key": "state_dim_source", "value": "the logs already in the database"},
            ],
        )


def downgrade() -> None:
    op.drop_table("service_meta")
