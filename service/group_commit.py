"""Group commit: one writer thread turns many concurrent requests into one transaction per batch.

A request enqueues its item and awaits an asyncio future; the writer thread drains whatever is queued
(up to ``max_batch`` items), hands the batch to the subclass's :meth:`GroupCommitWriter.commit_batch`
(one transaction, one commit), and only then settles every future, one ``call_soon_threadsafe`` per
event loop. A response therefore still follows its commit (a 2xx means durable), while the commit and
the statement round trips are shared by every request that arrived meanwhile, and no request holds a
threadpool worker or blocks the event loop while it waits. With SQLite's single write lock this is
the difference between queueing threadpool writers on the lock and one writer that never waits.

``/act`` (:class:`service.decision_log.DecisionWriter`) and ``/feedback``
(:class:`service.feedback_log.FeedbackWriter`) are the two subclasses; :class:`MultiRowInsert` is
their shared fast ``INSERT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from typing import Any, Generic, TypeVar

from sqlalchemy import JSON, Engine, Table

from service.errors import UnavailableError

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

_STOP = None


class GroupCommitWriter(Generic[ItemT, ResultT]):
    """A daemon writer thread (started and stopped by the API's lifespan) that commits in batches.

    Subclasses implement :meth:`commit_batch`; an item's outcome is either its result or the
    exception its request must raise (a domain error such as a 409). An exception escaping
    ``commit_batch`` fails every request of the batch, since nothing of it was committed.
    """

    name = "group-commit"

    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[
            tuple[ItemT, asyncio.AbstractEventLoop, asyncio.Future[ResultT]] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._accepting = False
        self.batches = 0  # committed batches (for tests and diagnostics)
        self.rows = 0  # items of the committed batches

    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is not None:
            return
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop."""
        self._accepting = False
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    async def submit(self, item: ItemT) -> ResultT:
        """Queue ``item``; returns its result (or raises its error) once its batch is committed."""
        if not self._accepting:
            raise UnavailableError("the service is shutting down; retry shortly")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        self._queue.put((item, loop, future))
        return await future

    def commit_batch(self, items: list[ItemT]) -> list[ResultT | Exception]:
        """Write ``items`` in one transaction and commit; one outcome per item, in order."""
        raise NotImplementedError

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is _STOP:
                    stopping = True
                    break
                batch.append(entry)
            self._commit(batch)
        # An item that raced past ``_accepting`` during shutdown must not wait forever.
        late = []
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is not _STOP:
                late.append(entry)
        if late:
            error = UnavailableError("the service is shutting down; retry shortly")
            self._settle(late, [error] * len(late))

    def _commit(self, batch: list[tuple[ItemT, asyncio.AbstractEventLoop, asyncio.Future[ResultT]]]) -> None:
        items = [item for item, _, _ in batch]
        try:
            outcomes = self.commit_batch(items)
            if len(outcomes) != len(items):
                raise RuntimeError(f"{self.name}: {len(outcomes)} outcomes for {len(items)} items")
            self.batches += 1
            self.rows += len(items)
        except Exception as exc:  # every waiting request gets the error (→ 503), nothing is acknowledged
            log.warning("%s: batch of %d failed: %s", self.name, len(items), exc)
            outcomes = [exc] * len(items)
        self._settle(batch, outcomes)

    @staticmethod
    def _settle(
        batch: list[tuple[Any, asyncio.AbstractEventLoop, asyncio.Future[Any]]], outcomes: list[Any]
    ) -> None:
        # One wake-up per event loop for the whole batch, not one per request.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for (_, loop, future), outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, settled)


def _resolve(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in settled:
        if future.done():  # the request was cancelled (client gone): its write stands all the same
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class MultiRowInsert:
    """One multi-row ``INSERT`` through the driver, values converted by the columns' own SQLAlchemy
    bind processors (so rows read back exactly as ORM-written ones).

    SQLAlchemy's statement construction cost about 1 ms a row here; this costs a few microseconds.
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

    def marks(self, n: int) -> str:
        """``n`` comma-separated driver placeholders (for ``IN (...)`` lists)."""
        return ", ".join([self.mark] * n)

    def insert_sql(self, n: int) -> str:
        """The ``INSERT`` of ``n`` rows (cached per ``n``)."""
        sql = self._sql.get(n)
        if sql is None:
            one = "(" + self.marks(len(self.columns)) + ")"
            sql = f"INSERT INTO {self.table.name} ({', '.join(self.columns)}) VALUES " + ", ".join([one] * n)
            self._sql[n] = sql
        return sql

    def params(self, rows: list[dict[str, Any]]) -> tuple[Any, ...]:
        """The flat parameter tuple of :meth:`insert_sql` for ``rows``."""
        flat: list[Any] = []
        for row in rows:
            for name, process in zip(self.columns, self.processors, strict=True):
                value = row[name]
                flat.append(process(value) if process is not None and value is not None else value)
        return tuple(flat)

    def insert(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` on ``conn`` (inside the caller's transaction) with one driver call."""
        if rows:
            conn.exec_driver_sql(self.insert_sql(len(rows)), self.params(rows))
