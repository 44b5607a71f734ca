"""The item catalogue: string item ids ↔ action indices, and which items may be recommended."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.errors import ConflictError, InvalidInputError, NotFoundError
from service.ingest.validation import describe_cell, parse_bool
from service.store import catalogue_revision
from service.store.models import Item


@dataclass(frozen=True)
class Catalogue:
    """An immutable snapshot of the items table (swapped whole when it changes)."""

    item_ids: tuple[str, ...]
    active: np.ndarray
    index: dict[str, int] = field(default_factory=dict)
    full: Catalogue | None = field(default=None, repr=False, compare=False)
    """For a :meth:`prefix` view: the whole catalogue it was cut from (None: this is the whole one)."""
    attributes: tuple[dict[str, Any] | None, ...] | None = field(default=None, repr=False, compare=False)
    """Each item's stored attributes (the extra columns of items.csv), for a feature model's item features
    (service.ingest.item_features); None when loaded without them (``load_catalogue(attributes=False)``)."""

    @classmethod
    def build(
        cls, item_ids: list[str], active: list[bool], attributes: list[dict[str, Any] | None] | None = None
    ) -> Catalogue:
        """A catalogue whose action index is the position in ``item_ids``."""
        mask = np.asarray(active, dtype=bool)
        mask.setflags(write=False)
        index = {item: i for i, item in enumerate(item_ids)}
        return cls(tuple(item_ids), mask, index, attributes=None if attributes is None else tuple(attributes))

    @property
    def n_actions(self) -> int:
        """Number of items = number of agent actions."""
        return len(self.item_ids)

    @cached_property
    def all_active(self) -> bool:
        """Whether every item may be recommended (then a request without candidates or exclusions
        needs no mask)."""
        return bool(self.active.all())

    def prefix(self, n: int) -> Catalogue:
        """The first ``n`` items: the actions a fixed-head model trained on an ``n``-item catalogue knows.

        Action indices are append-only, so index ``i < n`` names the same item the model learned; the
        items added since are not in the view (it remembers them in ``full``) and are never served by it.
        """
        if n >= self.n_actions:
            return self
        view = Catalogue.build(list(self.item_ids[:n]), self.active[:n].tolist())
        return replace(view, full=self)

    def split_newer(self, item_ids: list[str]) -> tuple[list[str], list[str]]:
        """``item_ids`` split into (the ids this view knows or the catalogue does not hold at all, the
        catalogue's items added after this view's model was trained), each in request order."""
        full = self.full
        if full is None:
            return item_ids, []
        newer = {item for item in item_ids if item not in self.index and item in full.index}
        if not newer:
            return item_ids, []
        return [i for i in item_ids if i not in newer], [i for i in item_ids if i in newer]

    def indices(self, item_ids: list[str], field_name: str, require_active: bool) -> np.ndarray:
        """Action indices of ``item_ids``; unknown (or inactive, if required) ids raise InvalidInputError;
        items added after a :meth:`prefix` view's model was trained raise ConflictError (409)."""
        newer = self.split_newer(item_ids)[1]
        if newer:
            raise ConflictError(
                f"item ids added to the catalogue after the served model was trained (it knows the first "
                f"{self.n_actions} items; a retrain serves the others): {newer[:10]}",
                field=field_name,
            )
        unknown = [item for item in item_ids if item not in self.index]
        if unknown:
            raise InvalidInputError(f"unknown item ids: {unknown[:10]}", field=field_name)
        idx = np.fromiter((self.index[item] for item in item_ids), dtype=np.int64, count=len(item_ids))
        if require_active:
            inactive = [item_ids[i] for i, j in enumerate(idx) if not self.active[j]]
            if inactive:
                raise InvalidInputError(f"inactive item ids: {inactive[:10]}", field=field_name)
        return idx


def load_catalogue(session: Session, attributes: bool = False) -> Catalogue:
    """The catalogue as stored, in action-index order; with ``attributes``, each item's attributes too
    (one JSON value per item: read when the catalogue changed, not on every poll)."""
    if not attributes:
        rows = session.execute(select(Item.item_id, Item.active).order_by(Item.action_index)).all()
        return Catalogue.build([r.item_id for r in rows], [bool(r.active) for r in rows])
    rows = session.execute(
        select(Item.item_id, Item.active, Item.attributes).order_by(Item.action_index)
    ).all()
    return Catalogue.build(
        [r.item_id for r in rows], [bool(r.active) for r in rows], [r.attributes for r in rows]
    )


def _plain(value: Any) -> Any:
    # NumPy scalars are not JSON-serialisable.
    return value.item() if hasattr(value, "item") else value


def item_attributes(frame: pd.DataFrame) -> list[dict[str, Any] | None]:
    """Each row's attributes as :func:`import_items` stores them: its non-missing cells outside ``item_id``
    and ``active`` (NumPy scalars as Python values), or None when it has none."""
    extra = [c for c in frame.columns if c not in {"item_id", "active"}]
    return [
        {c: _plain(record[c]) for c in extra if pd.notna(record[c])} or None
        for record in frame.to_dict("records")
    ]


def _read_items(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"no such file: {source}", field="items")
    try:
        return pd.read_csv(path, dtype={"item_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{source}: not a readable CSV file ({exc})", field="items") from exc


def import_items(session: Session, source: str | Path | pd.DataFrame) -> int:
    """Append the items of ``source`` (items.csv: ``item_id``, ``active``, extra columns kept as attributes).

    Action index = row order after the items already stored; ids already stored are updated in place
    (their ``active`` flag and attributes), so re-importing the same file is harmless. ``active`` must be
    a boolean (true/false, yes/no, 1/0); without the column every item is active. Errors name the row
    (data rows counted from 1) and the column, and nothing of the file is applied.
    """
    frame = _read_items(source)
    if "item_id" not in frame.columns:
        raise InvalidInputError("the catalogue needs an item_id column", field="item_id")
    ids = frame["item_id"]
    empty = ids.isna().to_numpy() | (ids.astype(str).str.strip() == "").to_numpy()
    if empty.any():
        row = int(np.argmax(empty)) + 1
        raise InvalidInputError(
            f"row {row}, column item_id: an empty cell: every item needs an id", field="item_id"
        )
    long = (ids.astype(str).str.len() > 255).to_numpy()
    if long.any():
        row = int(np.argmax(long)) + 1
        raise InvalidInputError(f"row {row}, column item_id: longer than 255 characters", field="item_id")
    repeated = ids.duplicated().to_numpy()
    if repeated.any():
        row = int(np.argmax(repeated))
        first = int(np.argmax((ids == ids.iloc[row]).to_numpy()))
        raise InvalidInputError(
            f"row {row + 1}, column item_id: {ids.iloc[row]!r} is also row {first + 1} (each item once)",
            field="item_id",
        )
    if "active" in frame.columns:
        active = [parse_bool(v) for v in frame["active"].tolist()]
        if None in active:
            row = active.index(None)
            raise InvalidInputError(
                f"row {row + 1}, column active: {describe_cell(frame['active'].iloc[row])} is not a boolean "
                "(use true/false)",
                field="active",
            )
    else:
        active = [True] * len(frame)
    existing = {item.item_id: item for item in session.scalars(select(Item))}
    next_index = session.scalar(select(func.coalesce(func.max(Item.action_index), -1))) + 1
    added = 0
    for raw_id, is_active, attributes in zip(ids.tolist(), active, item_attributes(frame), strict=True):
        item_id = str(raw_id)
        if item_id in existing:
            existing[item_id].active = bool(is_active)
            existing[item_id].attributes = attributes
            continue
        session.add(
            Item(action_index=next_index, item_id=item_id, active=bool(is_active), attributes=attributes)
        )
        next_index += 1
        added += 1
    session.flush()
    catalogue_revision.bump(session)  # replicas read the catalogue again (service.store.catalogue_revision)
    return added


def set_item_active(session: Session, item_id: str, active: bool) -> None:
    """Activate or deactivate one item (a deactivated item is never recommended)."""
    item = session.scalar(select(Item).where(Item.item_id == item_id))
    if item is None:
        raise NotFoundError(f"unknown item {item_id!r}", field="item_id")
    item.active = active
    catalogue_revision.bump(session)


def bootstrap_catalogue(session: Session, items_path: str | None) -> int:
    """Import ``items_path`` (the ``DQFD_ITEMS_PATH`` setting) when the catalogue is still empty."""
    if not items_path or session.scalar(select(func.count()).select_from(Item)):
        return 0
    return import_items(session, items_path)
