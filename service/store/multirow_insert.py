"""The group-commit writers' fast ``INSERT``: one driver call per batch (see :class:`MultiRowInsert`)."""

from __future__ import annotations

import operator
from typing import Any

from sqlalchemy import JSON, Engine, Table
from sqlalchemy.exc import DBAPIError


class MultiRowInsert:
    """One ``INSERT`` driver call for a batch, values converted by the columns' own SQLAlchemy bind
    processors (so rows read back exactly as ORM-written ones).

    SQLAlchemy's statement construction cost about 1 ms a row here; this costs a few microseconds. On
    SQLite it is one multi-row ``INSERT``. On PostgreSQL it is one ``COPY ... FROM STDIN`` on the
    transaction's psycopg connection (psycopg formats the rows in C): a multi-row ``INSERT`` of a
    batch has hundreds of placeholders, which psycopg re-parses in Python for every batch (it caches
    statements of up to 50 parameters only) and the server plans again; ``COPY`` took about 35 µs of
    this process's CPU a row against about 60 for either ``INSERT``. Its errors are raised as
    SQLAlchemy's (e.g. ``IntegrityError``), like every other statement's. For the same reason
    :meth:`in_list` gives PostgreSQL one array parameter (``= ANY(%s)``) rather than one per value.
    """

    def __init__(self, engine: Engine, table: Table, columns: tuple[str, ...]) -> None:
        dialect = engine.dialect
        self.table = table
        self.columns = columns
        self.postgres = dialect.name == "postgresql"
        self.mark = "%s" if self.postgres else "?"
        self.processors: list[Any] = []
        for name in columns:
            column_type = table.c[name].type
            if self.postgres and isinstance(column_type, JSON):
                from psycopg.types.json import Json

                self.processors.append(Json)
            elif self.postgres:
                self.processors.append(None)  # psycopg adapts str, int, float, bool, bytes, datetime
            else:  # e.g. SQLite's DATETIME text and its 0/1 booleans
                self.processors.append(column_type.dialect_impl(dialect).bind_processor(dialect))
        self._sql: dict[int, str] = {}
        self.copy_sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        # A row's values in column order with one C call, then only the columns with a processor.
        self._values = operator.itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)
        self._processed = tuple((i, p) for i, p in enumerate(self.processors) if p is not None)

    def marks(self, n: int) -> str:
        """``n`` comma-separated driver placeholders."""
        return ", ".join([self.mark] * n)

    def in_list(self, column: str, values: list[Any]) -> tuple[str, tuple[Any, ...]]:
        """The condition ``column IN (values)`` and its parameters."""
        if self.postgres:
            return f"{column} = ANY(%s)", (values,)
        return f"{column} IN ({self.marks(len(values))})", tuple(values)

    def insert_sql(self, n: int) -> str:
        """The ``INSERT`` of ``n`` rows (cached per ``n``)."""
        sql = self._sql.get(n)
        if sql is None:
            one = "(" + self.marks(len(self.columns)) + ")"
            sql = f"INSERT INTO {self.table.name} ({', '.join(self.columns)}) VALUES " + ", ".join([one] * n)
            self._sql[n] = sql
        return sql

    def row_params(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """Each row's parameters, in column order."""
        values_of, processed = self._values, self._processed
        if not processed:
            return [values_of(row) for row in rows]
        out: list[tuple[Any, ...]] = []
        for row in rows:
            values = list(values_of(row))
            for i, process in processed:
                value = values[i]
                if value is not None:
                    values[i] = process(value)
            out.append(tuple(values))
        return out

    def params(self, rows: list[dict[str, Any]]) -> tuple[Any, ...]:
        """The flat parameter tuple of :meth:`insert_sql` for ``rows``."""
        values_of, processed = self._values, self._processed
        flat: list[Any] = []
        for row in rows:
            values = list(values_of(row))
            for i, process in processed:
                value = values[i]
                if value is not None:
                    values[i] = process(value)
            flat += values
        return tuple(flat)

    def insert(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` on ``conn`` (inside the caller's transaction) with one driver call."""
        if not rows:
            return
        if self.postgres:
            self._copy(conn, rows)
        else:
            conn.exec_driver_sql(self.insert_sql(len(rows)), self.params(rows))

    def _copy(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        import psycopg

        driver = conn.connection.driver_connection  # in the transaction SQLAlchemy began
        try:
            with driver.cursor() as cursor, cursor.copy(self.copy_sql) as copy:
                for values in self.row_params(rows):
                    copy.write_row(values)
        except psycopg.Error as exc:
            dialect = conn.dialect
            invalidated = dialect.is_disconnect(exc, driver, None)
            if invalidated:
                conn.invalidate(exc)
            raise DBAPIError.instance(
                self.copy_sql,
                None,
                exc,
                psycopg.Error,
                connection_invalidated=invalidated,
                dialect=dialect,
            ) from exc
