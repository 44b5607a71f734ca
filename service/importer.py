"""Streaming, all-or-nothing import of logged interactions (CSV or Parquet, the contract in
docs/service.md).

- **Atomic**: a file is imported in one database transaction, or not at all. A bad row anywhere (row
  20,000 of a file read in chunks of 5,000 included) leaves nothing of the file in the database.
- **Streamed**: the file is read, validated and written chunk by chunk inside that transaction; it is
  never held in memory whole.
- **Re-importing is harmless**: a row whose ``(session_id, step)`` is already stored is skipped when it
  logs the same transition (the same ``state``, ``item_id``, ``reward`` and ``done``) and counted in
  :attr:`LogImport.skipped`; a row that contradicts the stored one, or a ``(session_id, step)`` that
  appears twice in the file, is an error naming the row, and nothing is imported.
- **Errors name the row and the column**: ``row 3, column state: '[0.1 0.2]' is not a JSON array of
  numbers ...``. Rows are the file's data rows counted from 1 (in a CSV file, row N is on line N + 1,
  after the header).
- **The state width is learned from the data**: without an explicit width, the first row's width is
  the file's; it must agree with the width stored by earlier imports (:mod:`service.shape`, recorded in
  the import's transaction), and every row must have it.

How: on PostgreSQL every chunk goes in with binary ``COPY`` straight into ``logged_interactions``; only
when the unique ``(session_id, step)`` constraint rejects a chunk (a re-import, or duplicates inside the
file) is the transaction rolled back and the file read again through a staging table (``TEMP``, no
schema change) that the rule above is applied to with a few set-based statements. On SQLite the staging
table is always used: it lives in SQLite's temporary database, so the service's database is only
locked for the final ``INSERT ... SELECT``, not for the whole import.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    exists,
    func,
    insert,
    not_,
    select,
)
from sqlalchemy.orm import Session

from service.catalogue import describe_cell, parse_bool
from service.errors import ConflictError, InvalidInputError
from service.features import FEATURE_DTYPE
from service.models import Item, LoggedInteraction
from service.progress import progress_bar

REQUIRED = ("session_id", "step", "state", "item_id", "reward", "done")
OPTIONAL = ("propensity", "allowed_items", "timestamp")
ID_LENGTH = 255  # String(255): session_id and item_id
MAX_STEP = 2**31 - 1  # Integer
STATE_HINT = "write it as a JSON array with commas, e.g. [0.1, -0.2]"

_STAGING_META = MetaData()
STAGING = Table(
    "dqfd_import_staging",
    _STAGING_META,
    Column("row_no", BigInteger, nullable=False),
    Column("session_id", String(ID_LENGTH), nullable=False),
    Column("step", Integer, nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("item_id", String(ID_LENGTH), nullable=False),
    Column("reward", Float, nullable=False),
    Column("done", Boolean, nullable=False),
    Column("propensity", Float, nullable=True),
    Column("allowed_items", JSON(none_as_null=True), nullable=True),
    Column("timestamp", DateTime(timezone=True), nullable=True),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
"""The staging table of the re-import path: a TEMP table (per connection, no migration), with the
columns of ``logged_interactions`` plus the file row for error messages."""


@dataclass(frozen=True)
class LogImport:
    """What an import did: rows written, rows skipped as already stored, the state width of the file,
    and the item ids appended to the catalogue (``create_items``)."""

    imported: int
    skipped: int
    state_dim: int | None
    items_created: int = 0

    @property
    def rows(self) -> int:
        """Rows of the file (imported + skipped)."""
        return self.imported + self.skipped


class _DuplicateKeysError(Exception):
    """The unique (session_id, step) constraint rejected a chunk on the direct path."""


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

        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow's ArrowInvalid and friends
            raise InvalidInputError(f"{path}: not a readable Parquet file ({exc})", field="path") from exc

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
        try:
            reader = pd.read_csv(path, chunksize=chunk_rows, dtype={"session_id": str, "item_id": str})
        except pd.errors.EmptyDataError as exc:
            raise InvalidInputError(f"{path} is empty: no header row", field="path") from exc
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{path}: not a readable CSV file ({exc})", field="path") from exc

        def csv_chunks() -> Iterator[tuple[pd.DataFrame, np.ndarray | None]]:
            try:
                for frame in reader:
                    yield frame, None
            except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
                raise InvalidInputError(f"{path}: not a readable CSV file ({exc})", field="path") from exc

        return csv_chunks(), None
    raise InvalidInputError(f"unsupported file type {path.suffix!r}: use .csv or .parquet", field="path")


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


def _width_of_first_row(frame: pd.DataFrame, states: np.ndarray | None, first_row: int) -> int:
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


def _columns(
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
    _check_header(frame)
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


def _check_header(frame: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InvalidInputError(
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} (a logs file has the "
            "columns of the logged-interactions contract, docs/service.md)",
            field=missing[0],
        )


def _insert_rows(columns: dict, first_row: int | None = None) -> list[dict]:
    """Per-row dicts of the columns (the SQLite path's executemany); ``row_no`` from ``first_row``."""
    names = [c for c in columns if c != "state"]
    blobs = [vector.tobytes() for vector in columns["state"]]
    rows = [{"state": blobs[i], **{name: columns[name][i] for name in names}} for i in range(len(blobs))]
    if first_row is not None:
        for offset, row in enumerate(rows):
            row["row_no"] = first_row + offset
    return rows


_COPY_TYPES = {
    "row_no": "int8",
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


def _copy_rows(conn: Connection, table: str, columns: dict, first_row: int | None = None) -> None:
    """PostgreSQL binary COPY of one chunk on the import's connection, inside its transaction (several
    times cheaper per row than INSERT): typed, no text formatting, states sent as their float32 bytes."""
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
    if first_row is not None:
        names.insert(0, "row_no")
        values.insert(0, range(first_row, first_row + len(columns["state"])))
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([_COPY_TYPES[name] for name in names])
            write = copy.write_row
            for row in zip(*values, strict=True):
                write(row)
    finally:
        cursor.close()


class _Writer:
    """Writes validated chunks on the import's connection; :meth:`finish` returns (imported, skipped)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.written = 0

    def write(self, columns: dict, first_row: int) -> None:
        raise NotImplementedError

    def finish(self) -> tuple[int, int]:
        return self.written, 0


class _DirectWriter(_Writer):
    """PostgreSQL: COPY straight into logged_interactions (the first import of a file)."""

    def write(self, columns: dict, first_row: int) -> None:
        from psycopg.errors import UniqueViolation

        try:
            _copy_rows(self.conn, "logged_interactions", columns)
        except UniqueViolation as exc:
            raise _DuplicateKeysError from exc
        self.written += len(columns["state"])


class _StagedWriter(_Writer):
    """The staging table; :meth:`finish` applies the re-import rule and moves the new rows over."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.postgres = conn.dialect.name == "postgresql"
        if not self.postgres:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{STAGING.name}")  # left by a crashed run
        STAGING.create(conn)

    def write(self, columns: dict, first_row: int) -> None:
        if self.postgres:
            _copy_rows(self.conn, STAGING.name, columns, first_row)
        else:
            self.conn.execute(insert(STAGING), _insert_rows(columns, first_row))
        self.written += len(columns["state"])

    def finish(self) -> tuple[int, int]:
        conn, s, logs = self.conn, STAGING, LoggedInteraction.__table__
        if self.postgres:
            conn.exec_driver_sql(f"ANALYZE {STAGING.name}")
        twice = conn.execute(
            select(s.c.session_id, s.c.step)
            .group_by(s.c.session_id, s.c.step)
            .having(func.count() > 1)
            .order_by(func.min(s.c.row_no))
            .limit(1)
        ).first()
        if twice is not None:
            rows = conn.scalars(
                select(s.c.row_no)
                .where(s.c.session_id == twice.session_id, s.c.step == twice.step)
                .order_by(s.c.row_no)
                .limit(2)
            ).all()
            raise InvalidInputError(
                f"row {rows[1]}, columns session_id/step: session {twice.session_id!r} step {twice.step} "
                f"is also row {rows[0]} (each step of a session once)",
                field="step",
            )
        same_key = and_(logs.c.session_id == s.c.session_id, logs.c.step == s.c.step)
        same_row = and_(
            logs.c.state == s.c.state,
            logs.c.item_id == s.c.item_id,
            logs.c.reward == s.c.reward,
            logs.c.done == s.c.done,
        )
        conflict = conn.execute(
            select(s.c.row_no, s.c.session_id, s.c.step)
            .select_from(s.join(logs, same_key))
            .where(not_(same_row))
            .order_by(s.c.row_no)
            .limit(1)
        ).first()
        if conflict is not None:
            raise ConflictError(
                f"row {conflict.row_no}, columns session_id/step: session {conflict.session_id!r} step "
                f"{conflict.step} is already stored with a different state, item_id, reward or done "
                "(a re-import may repeat stored rows only unchanged: give the session a new id, or "
                "leave the row out)",
                field="step",
            )
        stored = exists().where(same_key)
        # counted, not taken from the INSERT's rowcount: psycopg may report -1 for it
        skipped = int(conn.scalar(select(func.count()).select_from(s).where(stored)) or 0)
        names = [c.name for c in s.columns if c.name != "row_no"]
        conn.execute(
            insert(logs).from_select(
                names, select(*(s.c[n] for n in names)).where(~stored).order_by(s.c.row_no)
            )
        )
        return self.written - skipped, skipped

    def drop(self) -> None:
        """Drop the staging table (SQLite; PostgreSQL drops it with the transaction: ON COMMIT DROP)."""
        if not self.postgres:
            self.conn.rollback()
            self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{STAGING.name}")
            self.conn.commit()


def _source_name(source: str | Path | pd.DataFrame) -> str:
    return "the imported data frame" if isinstance(source, pd.DataFrame) else str(source)


def _run(
    engine: Engine,
    source: str | Path | pd.DataFrame,
    state_dim: int | None,
    chunk_rows: int,
    create_items: bool,
    progress: bool,
    staged: bool,
) -> LogImport:
    from service import shape

    name = _source_name(source)
    why = (
        "the width of row 1"
        if state_dim is None
        else "DQFD_STATE_DIM; unset it to learn the width from the file"
    )
    width = state_dim
    new_items: list[str] | None = [] if create_items else None
    with engine.connect() as conn:
        writer: _Writer | None = None
        try:
            known = {r.item_id: r.action_index for r in conn.execute(select(Item.item_id, Item.action_index))}
            frames, total = _iter_frames(source, chunk_rows)
            writer = _StagedWriter(conn) if staged else _DirectWriter(conn)
            seen = 0
            with progress_bar(total, desc="import", unit="rows", disable=not progress) as bar:
                for frame, states in frames:
                    _check_header(frame)
                    if frame.empty:
                        continue
                    frame = frame.reset_index(drop=True)
                    if seen == 0:
                        width = width or _width_of_first_row(frame, states, 1)
                    assert width is not None
                    columns = _columns(frame, width, known, seen + 1, states, why, new_items)
                    if seen == 0:
                        with Session(bind=conn) as session:
                            stored = shape.stored_state_dim(session)
                            if not staged or stored not in (None, width):
                                # the direct path records the width before it writes a row; a different
                                # stored width fails here, before the rest of the file is read
                                shape.record_state_dim(session, width, name)
                    writer.write(columns, seen + 1)
                    seen += len(frame)
                    bar.update(len(frame))
            if seen == 0:
                conn.rollback()
                return LogImport(0, 0, width)
            if staged and conn.dialect.name == "sqlite":
                # The staged rows are in SQLite's temporary database: committing them writes nothing to
                # the service's database. The rest is one write transaction, taken at once (IMMEDIATE)
                # so that no other writer can slip in between its checks and its INSERT.
                conn.commit()
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            with Session(bind=conn) as session:
                if staged:
                    shape.record_state_dim(session, width, name)
            if new_items:
                conn.execute(
                    insert(Item),
                    [{"action_index": known[i], "item_id": i, "active": True} for i in new_items],
                )
            imported, skipped = writer.finish()
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            if isinstance(writer, _StagedWriter):
                writer.drop()
    return LogImport(imported, skipped, width, len(new_items or ()))


def import_logs_report(
    engine: Engine,
    source: str | Path | pd.DataFrame,
    state_dim: int | None = None,
    chunk_rows: int = 50_000,
    create_items: bool = False,
    progress: bool = True,
) -> LogImport:
    """Import ``source`` into the logged-interactions table, all or nothing (the module's rules).

    ``state_dim`` None learns the width from the file (and checks it against the stored one). Item ids
    must be in the catalogue unless ``create_items`` appends unknown ids to it (in the same
    transaction). Raises :class:`~service.errors.InvalidInputError` naming the row and the column, or
    :class:`~service.errors.ConflictError` for a row that contradicts a stored one.
    """
    if chunk_rows < 1:
        raise InvalidInputError(f"chunk_rows must be at least 1, got {chunk_rows}", field="chunk_rows")
    if not isinstance(source, pd.DataFrame):
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(
                f"no such file: {source}" if not path.exists() else f"not a file: {source}", field="path"
            )
    if engine.dialect.name == "postgresql":
        try:
            return _run(engine, source, state_dim, chunk_rows, create_items, progress, staged=False)
        except _DuplicateKeysError:
            pass  # rows already stored, or a (session_id, step) twice in the file: the staged path decides
    return _run(engine, source, state_dim, chunk_rows, create_items, progress, staged=True)


def import_logs(
    engine: Engine,
    source: str | Path | pd.DataFrame,
    state_dim: int | None = None,
    chunk_rows: int = 50_000,
    create_items: bool = False,
    progress: bool = True,
) -> int:
    """:func:`import_logs_report`, returning the number of rows written (0 when every row was already
    stored)."""
    return import_logs_report(engine, source, state_dim, chunk_rows, create_items, progress).imported
