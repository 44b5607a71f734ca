"""Streaming import of logged interactions (CSV or Parquet, the contract in docs/service.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from service.errors import InvalidInputError
from service.features import FEATURE_DTYPE
from service.models import Item, LoggedInteraction

REQUIRED = ("session_id", "step", "state", "item_id", "reward", "done")
OPTIONAL = ("propensity", "allowed_items", "timestamp")


def _arrow_states(column: Any) -> np.ndarray | None:
    """A Parquet ``list<float>`` state column as one (n, d) float32 array without per-row objects, or
    None when it has nulls or ragged rows (the row-by-row path then names the bad row)."""
    import pyarrow as pa

    if column.null_count or not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        return None
    n = len(column)
    offsets = column.offsets.to_numpy()
    if n == 0 or not (np.diff(offsets) == offsets[1] - offsets[0]).all():
        return None
    values = column.flatten()  # honours the array's slice offset
    if values.null_count or not pa.types.is_floating(values.type):
        return None
    width = int(offsets[1] - offsets[0])
    return values.to_numpy(zero_copy_only=False).astype(FEATURE_DTYPE, copy=False).reshape(n, width)


def _iter_frames(
    source: str | Path | pd.DataFrame, chunk_rows: int
) -> tuple[Iterator[tuple[pd.DataFrame, np.ndarray | None]], int | None]:
    """Chunks of the source (with their states as one array where the file stores them so) and, where
    cheap to know, its row count (for the progress bar)."""
    if isinstance(source, pd.DataFrame):
        frame = source
        chunks = ((frame.iloc[i : i + chunk_rows], None) for i in range(0, len(frame), chunk_rows))
        return chunks, len(frame)
    path = Path(source)
    if path.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)

        def parquet_chunks() -> Iterator[tuple[pd.DataFrame, np.ndarray | None]]:
            for batch in parquet.iter_batches(batch_size=chunk_rows):
                names = batch.schema.names
                states = _arrow_states(batch.column(names.index("state"))) if "state" in names else None
                if states is None:
                    yield batch.to_pandas(), None
                    continue
                # the state column becomes a placeholder; its values travel as one array
                frame = batch.drop_columns(["state"]).to_pandas()
                frame["state"] = None
                yield frame, states

        return parquet_chunks(), parquet.metadata.num_rows
    if path.suffix.lower() in {".csv", ".gz"} or path.name.endswith(".csv.gz"):
        reader = pd.read_csv(path, chunksize=chunk_rows, dtype={"session_id": str, "item_id": str})
        return ((frame, None) for frame in reader), None
    raise InvalidInputError(f"unsupported file type {path.suffix!r}: use .csv or .parquet", field="path")


def _parse_list(value: Any) -> list[Any] | None:
    """A CSV cell holding a JSON array, or a Parquet list, as a Python list (None for missing)."""
    if value is None:
        return None
    if isinstance(value, str):
        return None if value.strip() == "" else json.loads(value)
    if isinstance(value, float) and np.isnan(value):
        return None
    return list(value)


def _as_bool(series: pd.Series) -> np.ndarray:
    if series.dtype == bool:
        return series.to_numpy()
    return series.astype(str).str.strip().str.lower().isin(["1", "true", "t", "yes"]).to_numpy()


def _check_states(states: np.ndarray, state_dim: int, first_row: int) -> np.ndarray:
    """``states`` if it is (n, state_dim) and finite, else InvalidInputError naming the first bad row."""
    if states.shape[1:] != (state_dim,):
        raise InvalidInputError(f"row {first_row}: state must be {state_dim} finite floats", field="state")
    bad = ~np.isfinite(states).all(axis=1)
    if bad.any():
        raise InvalidInputError(
            f"row {first_row + int(np.argmax(bad))}: state must be {state_dim} finite floats", field="state"
        )
    return np.ascontiguousarray(states)


def _states(values: list[Any], state_dim: int, first_row: int) -> np.ndarray:
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
            bad = ~np.isfinite(stacked).all(axis=1)
            if not bad.any():
                return np.ascontiguousarray(stacked)
            raise InvalidInputError(
                f"row {first_row + int(np.argmax(bad))}: state must be {state_dim} finite floats",
                field="state",
            )
    states = np.empty((len(values), state_dim), dtype=FEATURE_DTYPE)
    for offset, value in enumerate(values):
        vector = np.asarray(_parse_list(value), dtype=FEATURE_DTYPE)
        if vector.shape != (state_dim,) or not np.isfinite(vector).all():
            raise InvalidInputError(
                f"row {first_row + offset}: state must be {state_dim} finite floats", field="state"
            )
        states[offset] = vector
    return states


def _columns(
    frame: pd.DataFrame,
    state_dim: int,
    known_items: dict[str, int],
    first_row: int,
    states: np.ndarray | None = None,
) -> dict:
    """Validated columns of one chunk (``state`` as one float32 array, the rest as lists); errors name
    the column and the file row. Optional columns absent from the file are left out (NULL)."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"missing columns {missing}", field=missing[0])
    if states is None:
        states = _states(frame["state"].tolist(), state_dim, first_row)
    else:
        states = _check_states(states, state_dim, first_row)
    item_ids = frame["item_id"].astype(str).tolist()
    unknown = sorted({item for item in set(item_ids) if item not in known_items})
    if unknown:
        raise InvalidInputError(f"item ids not in the catalogue: {unknown[:10]}", field="item_id")
    rewards = pd.to_numeric(frame["reward"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(rewards).all():
        raise InvalidInputError("rewards must be finite numbers", field="reward")
    steps = pd.to_numeric(frame["step"], errors="coerce")
    if steps.isna().any() or (steps < 0).any():
        raise InvalidInputError("step must be a non-negative integer", field="step")
    columns: dict[str, Any] = {
        "session_id": frame["session_id"].astype(str).tolist(),
        "step": steps.astype(int).tolist(),
        "state": states,
        "item_id": item_ids,
        "reward": rewards.tolist(),
        "done": _as_bool(frame["done"]).tolist(),
    }
    if "propensity" in frame:
        propensity = pd.to_numeric(frame["propensity"], errors="coerce")
        columns["propensity"] = [None if pd.isna(p) else float(p) for p in propensity.tolist()]
    if "allowed_items" in frame:
        allowed = [_parse_list(v) for v in frame["allowed_items"]]
        for offset, items in enumerate(allowed):
            if items is None:
                continue
            if any(str(i) not in known_items for i in items):
                raise InvalidInputError(
                    "allowed_items names items not in the catalogue", field="allowed_items"
                )
            if item_ids[offset] not in {str(i) for i in items}:
                raise InvalidInputError(
                    f"row {first_row + offset}: the logged item is not in its allowed_items",
                    field="allowed_items",
                )
        columns["allowed_items"] = [None if a is None else [str(x) for x in a] for a in allowed]
    if "timestamp" in frame:
        stamps = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce")
        columns["timestamp"] = [None if pd.isna(t) else t.to_pydatetime().astimezone(UTC) for t in stamps]
    return columns


def _insert_rows(columns: dict) -> list[dict]:
    """Per-row dicts of the columns (the SQLite path's executemany)."""
    names = [c for c in columns if c != "state"]
    blobs = [vector.tobytes() for vector in columns["state"]]
    return [{"state": blobs[i], **{name: columns[name][i] for name in names}} for i in range(len(blobs))]


_COPY_TYPES = {
    "session_id": "varchar",
    "step": "int4",
    "state": "bytea",
    "item_id": "varchar",
    "reward": "float8",
    "done": "bool",
    "propensity": "float8",
    "allowed_items": "json",
    "timestamp": "timestamptz",
}


def _copy_rows(engine: Engine, columns: dict) -> None:
    """PostgreSQL binary COPY of one chunk (several times cheaper per row than INSERT): typed, no
    text formatting, states sent as their float32 bytes."""
    from psycopg.types.json import Json

    names = list(columns)
    values = []
    for name in names:
        if name == "state":
            values.append([vector.tobytes() for vector in columns["state"]])
        elif name == "allowed_items":
            values.append([None if a is None else Json(a) for a in columns[name]])
        else:
            values.append(columns[name])
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY logged_interactions ({', '.join(names)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([_COPY_TYPES[name] for name in names])
            write = copy.write_row
            for row in zip(*values, strict=True):
                write(row)
        raw.commit()
    finally:
        raw.close()


def import_logs(
    engine: Engine,
    source: str | Path | pd.DataFrame,
    state_dim: int,
    chunk_rows: int = 50_000,
    create_items: bool = False,
    progress: bool = True,
) -> int:
    """Stream ``source`` into the logged-interactions table in chunks; returns the number of rows.

    Every chunk is validated before it is written (a bad row stops the import and names the
    column). Item ids must be in the catalogue unless ``create_items`` appends unknown ids to it.
    """
    with Session(engine) as session:
        known = {
            row.item_id: row.action_index for row in session.execute(select(Item.item_id, Item.action_index))
        }
    frames, total = _iter_frames(source, chunk_rows)
    written = 0
    with tqdm(total=total, desc="import", unit="rows", disable=not progress) as bar:
        for frame, states in frames:
            if frame.empty:
                continue
            if create_items:
                _append_items(engine, frame["item_id"].astype(str), known)
            columns = _columns(frame.reset_index(drop=True), state_dim, known, written, states)
            if engine.dialect.name == "postgresql":
                _copy_rows(engine, columns)
            else:
                with engine.begin() as conn:
                    conn.execute(insert(LoggedInteraction), _insert_rows(columns))
            written += len(frame)
            bar.update(len(frame))
    return written


def _append_items(engine: Engine, item_ids: pd.Series, known: dict[str, int]) -> None:
    new = [item for item in dict.fromkeys(item_ids.tolist()) if item not in known]
    if not new:
        return
    start = max(known.values(), default=-1) + 1
    rows = [{"action_index": start + i, "item_id": item, "active": True} for i, item in enumerate(new)]
    with engine.begin() as conn:
        conn.execute(insert(Item), rows)
    known.update({row["item_id"]: row["action_index"] for row in rows})
