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
  the file's; it must agree with the width stored by earlier imports (:mod:`service.store.shape`, recorded in
  the import's transaction), and every row must have it.

How: on PostgreSQL every chunk goes in with binary ``COPY`` straight into ``logged_interactions``; only
when the unique ``(session_id, step)`` constraint rejects a chunk (a re-import, or duplicates inside the
file) is the transaction rolled back and the file read again through a staging table (``TEMP``, no
schema change) that the rule above is applied to with a few set-based statements. On SQLite the staging
table is always used: it lives in SQLite's temporary database, so the service's database is only
locked for the final ``INSERT ... SELECT``, not for the whole import.

This module runs an import; its parts are :mod:`service.ingest.reading` (file → chunks),
:mod:`service.ingest.validation` (chunk → checked columns, errors naming row and column) and
:mod:`service.ingest.writing` (columns → database, the direct and the staged path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from service.errors import InvalidInputError
from service.ingest.reading import iter_frames, source_name
from service.ingest.validation import check_header, chunk_columns, width_of_first_row
from service.ingest.writing import ChunkWriter, DirectWriter, DuplicateKeysError, StagedWriter
from service.progress import progress_bar
from service.store import catalogue_revision, shape
from service.store.models import Item


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


def _run(
    engine: Engine,
    source: str | Path | pd.DataFrame,
    state_dim: int | None,
    chunk_rows: int,
    create_items: bool,
    progress: bool,
    staged: bool,
) -> LogImport:
    name = source_name(source)
    why = (
        "the width of row 1"
        if state_dim is None
        else "DQFD_STATE_DIM; unset it to learn the width from the file"
    )
    width = state_dim
    new_items: list[str] | None = [] if create_items else None
    with engine.connect() as conn:
        writer: ChunkWriter | None = None
        try:
            known = {r.item_id: r.action_index for r in conn.execute(select(Item.item_id, Item.action_index))}
            frames, total = iter_frames(source, chunk_rows)
            writer = StagedWriter(conn) if staged else DirectWriter(conn)
            seen = 0
            with progress_bar(total, desc="import", unit="rows", disable=not progress) as bar:
                for frame, states in frames:
                    check_header(frame)
                    if frame.empty:
                        continue
                    frame = frame.reset_index(drop=True)
                    if seen == 0:
                        width = width or width_of_first_row(frame, states, 1)
                    assert width is not None
                    columns = chunk_columns(frame, width, known, seen + 1, states, why, new_items)
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
                catalogue_revision.bump(conn)
            imported, skipped = writer.finish()
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            if isinstance(writer, StagedWriter):
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
        except DuplicateKeysError:
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
