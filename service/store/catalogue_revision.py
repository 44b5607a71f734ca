"""A token in ``service_meta`` that changes whenever the items table does, so that a replica's poller reads
the catalogue only when it changed.

Reading a 100,000-item catalogue takes 0.3-0.5 s of Python (3 s with the attributes a feature model
needs), holding the GIL against ``/act`` requests; reading it every ``DQFD_MODEL_POLL_S`` put that stall
into the p99 of every replica (benchmarks/results/serving_catalogue.md). Every writer of the items table
(:func:`service.ingest.catalogue.import_items`, ``set_item_active``, the log importer's
``--create-items``) calls :func:`bump` in its own transaction; the poller compares one short row.

The token is random, not a counter: two writers committing at the same time cannot both write the same
"next" value, so no change can hide behind another. A database written before the token existed has no
row until the first write.

A hand edit of the ``items`` table in SQL bumps no token, so :func:`fingerprint` adds what one aggregate
query over the table can tell: the item count, the active count and two sums over the active items'
indices. Items added or (de)activated by any means are then seen at the next poll; only a hand edit of
attributes alone waits for the next write through the service (docs/service.md).
"""

from __future__ import annotations

import os

from sqlalchemy import Connection, case, func, insert, select, update
from sqlalchemy.orm import Session

from service.store.models import Item, ServiceMeta

KEY = "catalogue_revision"


def bump(connection: Session | Connection) -> None:
    """Give the catalogue a new revision token, in the caller's transaction (the caller commits)."""
    token = os.urandom(8).hex()
    # An UPDATE waits for a concurrent writer's row and then overwrites it (a delete-then-insert would
    # collide on the key); only the very first token is inserted.
    if not connection.execute(update(ServiceMeta).where(ServiceMeta.key == KEY).values(value=token)).rowcount:
        connection.execute(insert(ServiceMeta).values(key=KEY, value=token))


def read(session: Session) -> str | None:
    """The current revision token; None when no writer has set one yet."""
    return session.scalar(select(ServiceMeta.value).where(ServiceMeta.key == KEY))


Fingerprint = tuple[str | None, int, int, int, int]
"""(token, items, active items, Σ (i + 1) and Σ (i + 1)² over the active items' indices i)."""


def fingerprint(session: Session) -> Fingerprint:
    """The token and an aggregate of the items table in one round trip: a changed value means the
    catalogue changed (added or (de)activated items, or a write through the service)."""
    index = Item.action_index + 1
    active = case((Item.active, index), else_=0)
    row = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((Item.active, 1), else_=0)), 0),
            func.coalesce(func.sum(active), 0),
            func.coalesce(func.sum(active * active), 0),
        ).select_from(Item)
    ).one()
    return (read(session), *(int(v) for v in row))
