"""Apprentice and shadow modes: what an incumbent recommender chose, what the model and a shadow version
would have served, and which live transitions are the incumbent's demonstrations.

``decisions`` gains (all nullable, NULL on rows written before this revision and on ordinary traffic):

- ``baseline_item_id`` / ``baseline_propensity``: the incumbent's own choice sent with ``/act``
  (``baseline_item``) and, when the client knows it, its probability under the incumbent
  (``baseline_propensity``; off-policy evaluation against the incumbent needs it).
- ``apprentice``: the baseline item was served (apprentice mode); ``item_id`` is then the baseline's.
  Not nullable, server default false: every earlier decision was served by the model.
- ``model_item_id`` / ``model_propensity``: on an apprentice decision, the item the model would have
  served and the model's probability of the served (baseline) item, π_model(served | state).
- ``shadow_version`` / ``shadow_item_id`` / ``shadow_propensity``: the shadow version scored beside the
  served one, its choice, and π_shadow(served item | state), what inverse propensity scoring needs.

``live_transitions.demonstration`` (server default false): the transition of an apprentice decision,
which the trainer adds to the demonstration part of the replay, never to the agent part.

Columns rather than a side table: the decision writer inserts one row per request in one statement,
and a side table would add a second insert to every shadowed request. NULL columns cost a few bytes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode as in 0003: on SQLite an added column is a plain ALTER TABLE ADD COLUMN.
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("baseline_item_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("baseline_propensity", sa.Float(), nullable=True))
        batch.add_column(sa.Column("apprentice", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("model_item_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("model_propensity", sa.Float(), nullable=True))
        batch.add_column(sa.Column("shadow_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("shadow_item_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("shadow_propensity", sa.Float(), nullable=True))
    with op.batch_alter_table("live_transitions") as batch:
        batch.add_column(sa.Column("demonstration", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("live_transitions") as batch:
        batch.drop_column("demonstration")
    with op.batch_alter_table("decisions") as batch:
        for column in (
            "shadow_propensity",
            "shadow_item_id",
            "shadow_version",
            "model_propensity",
            "model_item_id",
            "apprentice",
            "baseline_propensity",
            "baseline_item_id",
        ):
            batch.drop_column(column)
