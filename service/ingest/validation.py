"""Validating one chunk of an imported logs file (and the catalogue's cells): every error names the
file row (data rows counted from 1) and the column, e.g. ``row 3, column state: '[0.1 0.2]' is not a
JSON array of numbers``. The rules are the logged-interactions contract of docs/service.md.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import numpy as np
import pandas as pd

from service.errors import InvalidInputError
from service.store.features import FEATURE_DTYPE

REQUIRED = ("session_id", "step", "state", "item_id", "reward", "done")
OPTIONAL = ("propensity", "allowed_items", "timestamp")
ID_LENGTH = 255  # String(255): session_id and item_id
MAX_STEP = 2**31 - 1  # Integer
STATE_HINT = "write it as a JSON array with commas, e.g. [0.1, -0.2]"

TRUE = frozenset({"true", "t", "yes", "y", "1", "1.0"})
FALSE = frozenset({"false", "f", "no", "n", "0", "0.0"})


def parse_bool(value: Any) -> bool | None:
    """``value`` as a boolean (true/false, t/f, yes/no, y/n, 1/0, any case), or None when it is none
    of these (an empty cell included): callers report that instead of guessing."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().lower()
    return True if text in TRUE else False if text in FALSE else None


def describe_cell(value: Any, limit: int = 40) -> str:
    """A cell's value for an error message: quoted and shortened, or "an empty cell"."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "an empty cell"
    try:
        if not isinstance(value, str) and bool(pd.isna(value)):
            return "an empty cell"
    except (TypeError, ValueError):
        pass
    text = str(value) if not isinstance(value, np.ndarray) else str(value.tolist())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _bad(row: int, column: str, problem: str) -> InvalidInputError:
    return InvalidInputError(f"row {row}, column {column}: {problem}", field=column)


def _first(mask: Any) -> int:
    """Offset of the first True of a boolean mask."""
    return int(np.argmax(np.asarray(mask, dtype=bool)))


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays
        return False


def _json_list(value: Any, row: int, column: str, what: str, hint: str) -> list[Any] | np.ndarray | None:
    """A CSV cell holding a JSON array, or a Parquet list, as a list (None for a missing cell); anything
    else is an error naming the row and the column."""
    if isinstance(value, np.ndarray | list | tuple):
        return value if isinstance(value, np.ndarray) else list(value)
    if _missing(value):
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return parsed
    raise _bad(row, column, f"{describe_cell(value)} is not a JSON array of {what} ({hint})")


def _state_row(value: Any, state_dim: int | None, row: int, why: str) -> np.ndarray:
    """One state cell as a float32 vector of ``state_dim`` finite numbers (any width when None)."""
    parsed = _json_list(value, row, "state", "numbers", STATE_HINT)
    if parsed is None:
        raise _bad(row, "state", f"an empty cell is not a state ({STATE_HINT})")
    try:
        vector = np.asarray(parsed, dtype=FEATURE_DTYPE)
    except (TypeError, ValueError):
        vector = None
    if vector is None or vector.ndim != 1 or vector.size == 0:
        raise _bad(row, "state", f"{describe_cell(value)} is not a JSON array of numbers ({STATE_HINT})")
    if state_dim is not None and vector.shape != (state_dim,):
        raise _bad(row, "state", f"{vector.size} numbers, expected {state_dim} ({why})")
    finite = np.isfinite(vector)
    if not finite.all():
        raise _bad(
            row, "state", f"value {_first(~finite) + 1} is {vector[_first(~finite)]}: states must be finite"
        )
    return vector


def _check_states(states: np.ndarray, state_dim: int, first_row: int, why: str) -> np.ndarray:
    """``states`` (one array of a Parquet chunk) if it is (n, state_dim) and finite, else the error
    naming the first bad row."""
    if states.shape[1:] != (state_dim,):
        raise _bad(first_row, "state", f"{states.shape[1]} numbers, expected {state_dim} ({why})")
    bad = ~np.isfinite(states).all(axis=1)
    if bad.any():
        row = _first(bad)
        _state_row(states[row], state_dim, first_row + row, why)  # raises naming the value
    return np.ascontiguousarray(states)


def _states(values: list[Any], state_dim: int, first_row: int, why: str) -> np.ndarray:
    """The (n, state_dim) float32 states of one chunk; errors name the first bad file row.

    Parquet lists arrive as NumPy arrays and are stacked in one call; CSV cells (JSON strings),
    ragged or missing values go through the row-by-row path.
    """
    if values and all(isinstance(v, np.ndarray) for v in values):
        try:
            stacked = np.stack(values).astype(FEATURE_DTYPE, copy=False)
        except (ValueError, TypeError):
            stacked = None
        if stacked is not None and stacked.shape == (len(values), state_dim):
            return _check_states(stacked, state_dim, first_row, why)
    states = np.empty((len(values), state_dim), dtype=FEATURE_DTYPE)
    for offset, value in enumerate(values):
        states[offset] = _state_row(value, state_dim, first_row + offset, why)
    return states


def width_of_first_row(frame: pd.DataFrame, states: np.ndarray | None, first_row: int) -> int:
    if states is not None:
        return int(states.shape[1])
    return int(_state_row(frame["state"].iloc[0], None, first_row, "").size)


def _ids(frame: pd.DataFrame, column: str, first_row: int) -> list[str]:
    values = frame[column]
    missing = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
    if missing.any():
        raise _bad(first_row + _first(missing), column, f"an empty cell: every row needs a {column}")
    ids = values.astype(str).tolist()
    long = [len(i) > ID_LENGTH for i in ids]
    if any(long):
        raise _bad(first_row + _first(long), column, f"longer than {ID_LENGTH} characters")
    return ids


def _numbers(frame: pd.DataFrame, column: str, first_row: int, optional: bool = False) -> pd.Series:
    raw = frame[column]
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = numbers.isna().to_numpy() & ~(raw.isna().to_numpy() if optional else False)
    if not optional:
        bad |= ~np.isfinite(numbers.to_numpy(dtype=float, na_value=np.nan))
    if bad.any():
        i = _first(bad)
        raise _bad(first_row + i, column, f"{describe_cell(raw.iloc[i])} is not a finite number")
    return numbers


def _bools(frame: pd.DataFrame, column: str, first_row: int) -> list[bool]:
    values = frame[column]
    if values.dtype == bool:
        return values.tolist()
    parsed = [parse_bool(v) for v in values.tolist()]
    if None in parsed:
        i = parsed.index(None)
        raise _bad(
            first_row + i, column, f"{describe_cell(values.iloc[i])} is not a boolean (use true/false)"
        )
    return parsed  # type: ignore[return-value]


def check_header(frame: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InvalidInputError(
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} (a logs file has the "
            "columns of the logged-interactions contract, docs/service.md)",
            field=missing[0],
        )


def chunk_columns(
    frame: pd.DataFrame,
    state_dim: int,
    known_items: dict[str, int],
    first_row: int,
    states: np.ndarray | None = None,
    why: str = "",
    new_items: list[str] | None = None,
) -> dict:
    """Validated columns of one chunk (``state`` as one float32 array, the rest as lists); errors name
    the file row and the column. Optional columns absent from the file are left out (NULL).
    ``new_items`` (``create_items``): unknown item ids are appended to it (and to ``known_items``)
    instead of being an error."""
    check_header(frame)
    if states is None:
        states = _states(frame["state"].tolist(), state_dim, first_row, why)
    else:
        states = _check_states(states, state_dim, first_row, why)
    session_ids = _ids(frame, "session_id", first_row)
    item_ids = _ids(frame, "item_id", first_row)
    unknown = [item not in known_items for item in item_ids]
    if any(unknown):
        if new_items is None:
            i = _first(unknown)
            raise _bad(
                first_row + i,
                "item_id",
                f"{item_ids[i]!r} is not in the catalogue (import the catalogue first with "
                "--items items.csv, or pass --create-items)",
            )
        start = max(known_items.values(), default=-1) + 1
        for offset, item in enumerate(dict.fromkeys(i for i, u in zip(item_ids, unknown, strict=True) if u)):
            known_items[item] = start + offset
            new_items.append(item)
    rewards = _numbers(frame, "reward", first_row).to_numpy(dtype=float)
    raw_steps = frame["step"]
    steps = pd.to_numeric(raw_steps, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    bad_steps = ~np.isfinite(steps) | (steps < 0) | (steps != np.round(steps)) | (steps > MAX_STEP)
    if bad_steps.any():
        i = _first(bad_steps)
        raise _bad(first_row + i, "step", f"{describe_cell(raw_steps.iloc[i])} is not a non-negative integer")
    columns: dict[str, Any] = {
        "session_id": session_ids,
        "step": steps.astype(np.int64).tolist(),
        "state": states,
        "item_id": item_ids,
        "reward": rewards.tolist(),
        "done": _bools(frame, "done", first_row),
    }
    if "propensity" in frame:
        propensity = _numbers(frame, "propensity", first_row, optional=True)
        columns["propensity"] = [None if pd.isna(p) else float(p) for p in propensity.tolist()]
    if "allowed_items" in frame:
        allowed: list[list[str] | None] = []
        for offset, value in enumerate(frame["allowed_items"].tolist()):
            row = first_row + offset
            items = _json_list(value, row, "allowed_items", "item ids", 'e.g. ["item-1", "item-7"]')
            if items is None:
                allowed.append(None)
                continue
            names = [str(i) for i in items]
            strangers = [i for i in names if i not in known_items]
            if strangers:
                raise _bad(row, "allowed_items", f"{strangers[0]!r} is not in the catalogue")
            if item_ids[offset] not in names:
                raise _bad(row, "allowed_items", f"the logged item {item_ids[offset]!r} is not among them")
            allowed.append(names)
        columns["allowed_items"] = allowed
    if "timestamp" in frame:
        raw = frame["timestamp"]
        if pd.api.types.is_datetime64_any_dtype(raw):
            stamps = pd.to_datetime(raw, utc=True)
        else:
            stamps = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
            bad = stamps.isna().to_numpy() & ~np.array([_missing(v) for v in raw.tolist()], dtype=bool)
            if bad.any():
                i = _first(bad)
                raise _bad(
                    first_row + i,
                    "timestamp",
                    f"{describe_cell(raw.iloc[i])} is not an ISO-8601 time (e.g. 2026-01-31T12:00:00Z)",
                )
        columns["timestamp"] = [None if pd.isna(t) else t.to_pydatetime().astimezone(UTC) for t in stamps]
    return columns
