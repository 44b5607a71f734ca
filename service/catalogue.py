"""The item catalogue: string item ids ↔ action indices, and which items may be recommended."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.errors import InvalidInputError
from service.models import Item


@dataclass(frozen=True)
class Catalogue:
    """An immutable snapshot of the items table (swapped whole when it changes)."""

    item_ids: tuple[str, ...]
    active: np.ndarray
    index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, item_ids: list[str], active: list[bool]) -> Catalogue:
        """A catalogue whose action index is the position in ``item_ids``."""
        mask = np.asarray(active, dtype=bool)
        mask.setflags(write=False)
        return cls(tuple(item_ids), mask, {item: i for i, item in enumerate(item_ids)})

    @property
    def n_actions(self) -> int:
        """Number of items = number of agent actions."""
        return len(self.item_ids)

    @cached_property
    def all_active(self) -> bool:
        """Whether every item may be recommended (then a request without candidates or exclusions
        needs no mask)."""
        return bool(self.active.all())

    def indices(self, item_ids: list[str], field_name: str, require_active: bool) -> np.ndarray:
        """Action indices of ``item_ids``; unknown (or inactive, if required) ids raise InvalidInputError."""
        unknown = [item for item in item_ids if item not in self.index]
        if unknown:
            raise InvalidInputError(f"unknown item ids: {unknown[:10]}", field=field_name)
        idx = np.fromiter((self.index[item] for item in item_ids), dtype=np.int64, count=len(item_ids))
        if require_active:
            inactive = [item_ids[i] for i, j in enumerate(idx) if not self.active[j]]
            if inactive:
                raise InvalidInputError(f"inactive item ids: {inactive[:10]}", field=field_name)
        return idx


def load_catalogue(session: Session) -> Catalogue:
    """The catalogue as stored, in action-index order."""
    rows = session.execute(select(Item.item_id, Item.active).order_by(Item.action_index)).all()
    return Catalogue.build([r.item_id for r in rows], [bool(r.active) for r in rows])


def _plain(value: Any) -> Any:
    # NumPy scalars are not JSON-serialisable.
    return value.item() if hasattr(value, "item") else value


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "t", "yes", "y"}
    return bool(value)


def import_items(session: Session, source: str | Path | pd.DataFrame) -> int:
    """Append the items of ``source`` (items.csv: ``item_id``, ``active``, extra columns kept as attributes).

    Action index = row order after the items already stored; ids already stored are updated in place
    (their ``active`` flag and attributes), so re-importing the same file is harmless.
    """
    frame = source if isinstance(source, pd.DataFrame) else pd.read_csv(source, dtype={"item_id": str})
    if "item_id" not in frame.columns:
        raise InvalidInputError("the catalogue needs an item_id column", field="item_id")
    if frame["item_id"].duplicated().any():
        raise InvalidInputError("duplicate item ids in the catalogue", field="item_id")
    extra = [c for c in frame.columns if c not in {"item_id", "active"}]
    existing = {item.item_id: item for item in session.scalars(select(Item))}
    next_index = session.scalar(select(func.coalesce(func.max(Item.action_index), -1))) + 1
    added = 0
    for record in frame.to_dict("records"):
        item_id = str(record["item_id"])
        active = _as_bool(record.get("active", True))
        attributes = {c: _plain(record[c]) for c in extra if pd.notna(record[c])} or None
        if item_id in existing:
            existing[item_id].active = active
            existing[item_id].attributes = attributes
            continue
        session.add(Item(action_index=next_index, item_id=item_id, active=active, attributes=attributes))
        next_index += 1
        added += 1
    session.flush()
    return added


def set_item_active(session: Session, item_id: str, active: bool) -> None:
    """Activate or deactivate one item (a deactivated item is never recommended)."""
    from service.errors import NotFoundError

    item = session.scalar(select(Item).where(Item.item_id == item_id))
    if item is None:
        raise NotFoundError(f"unknown item {item_id!r}", field="item_id")
    item.active = active


def bootstrap_catalogue(session: Session, items_path: str | None) -> int:
    """Import ``items_path`` (the ``DQFD_ITEMS_PATH`` setting) when the catalogue is still empty."""
    if not items_path or session.scalar(select(func.count()).select_from(Item)):
        return 0
    return import_items(session, items_path)
