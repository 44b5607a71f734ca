"""Item features from the catalogue's attributes (the extra columns of items.csv), for the feature network.

A :class:`FeatureSpec` names the columns that are features and how each is scaled. It is fitted once, on
the catalogue a model is trained on (:func:`fit_feature_spec`), saved with the model (``to_json``, in
the checkpoint's metadata) and applied unchanged to every item served later (:func:`feature_matrix`):
a new item is scaled exactly as the training items were, so its features mean what the network learned.

Rules (docs/service.md, "Item features"):

- A column is a feature candidate when every stored value is a number or a boolean and at least one is
  present. A column with any text or list value is not a feature (a category name or a tag list has no
  order a network could read off a single number); naming it in ``DQFD_ITEM_FEATURES`` is an error.
- Numbers are z-scored: ``(x - mean) / std`` with the mean and (population) standard deviation of the
  training catalogue; a column whose std is 0 (or not finite) is divided by 1, so a constant column
  becomes 0 rather than NaN. A scaled value is clipped to ±10⁶ (:data:`MAX_ABS_FEATURE`).
- Booleans become 1/0 and are not rescaled (they are already on the unit scale). In a column of numbers a
  boolean counts as 1/0 and is z-scored with the rest.
- A missing value (no cell, an empty cell, a non-finite number, or text in a feature column) becomes the
  column's training mean: 0 after z-scoring, the training share of ``true`` for a boolean column. With
  ``missing_indicators`` each column also gets a 1/0 "was missing" feature after the values, so the
  network can tell a missing value from an average one.
- Default: every feature-candidate column, in name order; ``DQFD_ITEM_FEATURES`` (comma-separated)
  narrows the list and fixes its order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from service.errors import InvalidInputError

SETTING = "DQFD_ITEM_FEATURES"

MAX_ABS_FEATURE = 1e6
"""A z-scored value is clipped to ±this: the bound the service puts on state values (DQFD_MAX_ABS_STATE's
default), so one mistyped attribute (1e300) cannot make an item's Q-values overflow float32."""

Attributes = Mapping[str, Any] | None
"""One item's stored attributes (``Item.attributes``): column → JSON value; None when it has none."""


@dataclass(frozen=True)
class FeatureColumn:
    """One feature column and the statistics of the catalogue it was fitted on."""

    name: str
    kind: Literal["number", "boolean"]
    mean: float
    """Training mean (the share of true for a boolean column); a missing value becomes this."""
    std: float
    """Divisor of a number column (1.0 where the training std was 0); 1.0 for a boolean column."""


@dataclass(frozen=True)
class FeatureSpec:
    """Which attributes are features and how each is scaled; JSON-able, saved with the model."""

    columns: tuple[FeatureColumn, ...]
    missing_indicators: bool = False

    @property
    def names(self) -> list[str]:
        """The feature columns, in feature order."""
        return [c.name for c in self.columns]

    @property
    def width(self) -> int:
        """F, the length of an item's feature vector."""
        return len(self.columns) * (2 if self.missing_indicators else 1)

    def to_json(self) -> dict[str, Any]:
        """A plain dict (JSON types only) that :meth:`from_json` turns back into this spec."""
        return {
            "columns": [{"name": c.name, "kind": c.kind, "mean": c.mean, "std": c.std} for c in self.columns],
            "missing_indicators": self.missing_indicators,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """The spec :meth:`to_json` wrote."""
        columns = tuple(
            FeatureColumn(str(c["name"]), c["kind"], float(c["mean"]), float(c["std"]))
            for c in data["columns"]
        )
        for column in columns:
            if column.kind not in ("number", "boolean") or not column.std > 0:
                raise ValueError(f"item feature column {column.name!r}: invalid kind or std in the spec")
        return cls(columns, bool(data.get("missing_indicators", False)))


def parse_feature_names(value: str | None) -> list[str] | None:
    """The column names of a ``DQFD_ITEM_FEATURES`` value (comma-separated); None when unset or blank."""
    if value is None or not value.strip():
        return None
    names = [name.strip() for name in value.split(",")]
    if any(not name for name in names):
        raise InvalidInputError(f"{SETTING}={value!r} has an empty column name", field=SETTING)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidInputError(f"{SETTING} names {repeated[0]!r} twice", field=SETTING)
    return names


def _kind(value: Any) -> str:
    """'boolean', 'number', 'missing' or 'text' (anything else: strings, lists, objects)."""
    if value is None:
        return "missing"
    if isinstance(value, bool | np.bool_):
        return "boolean"
    if isinstance(value, int | float | np.integer | np.floating):
        try:
            return "number" if math.isfinite(float(value)) else "missing"
        except OverflowError:  # an int past float range: no usable value
            return "missing"
    return "text"


def column_kinds(attributes: Sequence[Attributes]) -> dict[str, str]:
    """Every attribute column and what it holds: 'number', 'boolean', or 'text' (not a feature)."""
    seen: dict[str, set[str]] = {}
    for item in attributes:
        for name, value in (item or {}).items():
            seen.setdefault(str(name), set()).add(_kind(value))
    kinds = {}
    for name, found in seen.items():
        present = found - {"missing"}
        if "text" in present:
            kinds[name] = "text"
        elif present == {"boolean"}:
            kinds[name] = "boolean"
        elif present:
            kinds[name] = "number"
        else:
            kinds[name] = "text"  # never a usable value: nothing to learn from
    return kinds


_PLAIN = {float, int, bool, type(None)}
"""The Python types of a column that NumPy converts as the rules say (None → NaN, bool → 1/0)."""


def _values(attributes: Sequence[Attributes], name: str) -> np.ndarray:
    """A column as float64, NaN where missing (text in a feature column counts as missing)."""
    raw = [None if item is None else item.get(name) for item in attributes]
    if set(map(type, raw)) <= _PLAIN:  # the usual column, converted at C speed (100,000 items: ms)
        try:
            out = np.array(raw, dtype=np.float64)
        except OverflowError:
            pass
        else:
            out[~np.isfinite(out)] = np.nan
            return out
    out = np.full(len(raw), np.nan)
    for i, value in enumerate(raw):
        if _kind(value) in ("number", "boolean"):
            out[i] = float(value)
    return out


def fit_feature_spec(
    attributes: Sequence[Attributes], names: Sequence[str] | None = None, missing_indicators: bool = False
) -> FeatureSpec:
    """The spec of a training catalogue: its feature columns (all numeric ones, or ``names``) and scaling.

    Raises :class:`InvalidInputError` naming the column when ``names`` holds one the catalogue does not
    have, or one that is not numeric (the message lists the columns that are).
    """
    kinds = column_kinds(attributes)
    usable = sorted(name for name, kind in kinds.items() if kind != "text")
    if names is None:
        chosen = usable
    else:
        chosen = list(names)
        for name in chosen:
            if name not in kinds:
                raise InvalidInputError(
                    f"{SETTING} names {name!r}, which is not a column of the catalogue "
                    f"(numeric columns: {', '.join(usable) or 'none'})",
                    field=SETTING,
                )
            if kinds[name] == "text":
                raise InvalidInputError(
                    f"{SETTING} names {name!r}, which holds text or lists, not numbers "
                    f"(numeric columns: {', '.join(usable) or 'none'})",
                    field=SETTING,
                )
    columns = []
    for name in chosen:
        values = _values(attributes, name)
        present = values[~np.isnan(values)]
        mean = float(present.mean())
        if kinds[name] == "boolean":
            columns.append(FeatureColumn(name, "boolean", mean, 1.0))
            continue
        std = float(present.std())
        columns.append(FeatureColumn(name, "number", mean, std if std > 0 and math.isfinite(std) else 1.0))
    return FeatureSpec(tuple(columns), missing_indicators)


def feature_matrix(spec: FeatureSpec, attributes: Sequence[Attributes]) -> np.ndarray:
    """Float32 (n, F): the items' features under ``spec``, one row per item in the given order.

    Never fails on an item: a missing or non-numeric value becomes the column's training mean (see the
    module docstring), so every row is finite and a new item with odd attributes is still servable.
    """
    n, m = len(attributes), len(spec.columns)
    out = np.zeros((n, spec.width), dtype=np.float32)
    for j, column in enumerate(spec.columns):
        values = _values(attributes, column.name)
        missing = np.isnan(values)
        if column.kind == "number":
            scaled = np.clip((values - column.mean) / column.std, -MAX_ABS_FEATURE, MAX_ABS_FEATURE)
            scaled[missing] = 0.0
        else:
            scaled = np.where(missing, column.mean, values)
        out[:, j] = scaled
        if spec.missing_indicators:
            out[:, m + j] = missing
    return out
