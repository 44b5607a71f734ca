"""Group commit: one writer thread turns many concurrent requests into one transaction per batch.

A request adds its item to the batch its event loop is gathering and awaits an asyncio future. The
batch goes to the writer thread in one hand-over once the loop has nothing else ready to run (every
request that arrived meanwhile has been handled up to its write), when it reaches ``max_batch`` items,
or at the latest ``max_gather_s`` after its first item; under light load that is the next loop
iteration. The writer thread commits a batch (up to ``max_batch`` items) with the subclass's
:meth:`GroupCommitWriter.commit_batch` (one transaction, one commit), and only then settles every
future, one ``call_soon_threadsafe`` per event loop. A response therefore still follows its commit (a
2xx means durable), while the commit and the statement round trips are shared by every request that
arrived meanwhile, and no request holds a threadpool worker or blocks the event loop while it waits.
With SQLite's single write lock this is the difference between queueing threadpool writers on the lock
and one writer that never waits.

Gathering on the loop matters because the writer thread shares the process's core and GIL with the
loop: handed each item as it came, it woke for nearly every request and committed batches of one or
two, each paying a transaction's fixed cost (about 200 µs of CPU on SQLite, against about 60 µs a row
in a batch of 32).

The writer keeps its database connection while batches follow one another
(:meth:`GroupCommitWriter.transaction`), and on SQLite the WAL checkpoints, which SQLite would otherwise
run inside a commit every thousand pages, run in a thread of their own (:class:`WalCheckpoints`).

``/act`` (:class:`service.decision_log.DecisionWriter`) and ``/feedback``
(:class:`service.feedback_log.FeedbackWriter`) are the two subclasses; :class:`MultiRowInsert` is
their shared fast ``INSERT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import queue
import threading
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from sqlalchemy import JSON, Connection, Engine, Table
from sqlalchemy.exc import DataError, DBAPIError, OperationalError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service.errors import InvalidInputError, UnavailableError

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

_STOP = None

Entry = tuple[Any, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]

# Event loops with an idle check scheduled, and the writers whose gathered batches it hands over. Only
# the loop's own thread touches its entry; an entry lives from a loop's first gathered item to the
# check that flushes it.
_flush_pending: dict[asyncio.AbstractEventLoop, list[GroupCommitWriter[Any, Any]]] = {}


def _schedule_flush(loop: asyncio.AbstractEventLoop, writer: GroupCommitWriter[Any, Any]) -> None:
    writers = _flush_pending.get(loop)
    if writers is None:
        _flush_pending[loop] = [writer]
        loop.call_soon(_flush_when_idle, loop, loop.time() + writer.max_gather_s)
    elif writer not in writers:
        writers.append(writer)


def _flush_when_idle(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    # ``_ready`` holds the callbacks the loop runs before it next waits for I/O (asyncio's own loops):
    # while there are any, more requests may still reach their write and join the batch. Loops without
    # it hand the batch over one iteration after its first item.
    ready = getattr(loop, "_ready", None)
    if ready and loop.time() < deadline:
        loop.call_soon(_flush_when_idle, loop, deadline)
        return
    for writer in _flush_pending.pop(loop, ()):
        writer._flush(loop)


class GroupCommitWriter(Generic[ItemT, ResultT]):
    """A daemon writer thread (started and stopped by the API's lifespan) that commits in batches.

    Subclasses implement :meth:`commit_batch`; an item's outcome is either its result or the
    exception its request must raise (a domain error such as a 409). An exception escaping
    ``commit_batch`` fails every request of the batch, since nothing of it was committed.
    """

    name = "group-commit"
    max_gather_s = 0.005  # the longest a batch is gathered on a busy loop before it is handed over

    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        # Whole batches (lists of entries) go to the writer thread; None stops it.
        self._queue: queue.SimpleQueue[list[Entry] | None] = queue.SimpleQueue()
        self._gathering: dict[asyncio.AbstractEventLoop, list[Entry]] = {}  # per loop, not yet handed over
        self._lock = threading.Lock()  # guards _gathering and _accepting against stop() from elsewhere
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._checkpoints = WalCheckpoints(engine) if engine.dialect.name == "sqlite" else None
        self._conn: Connection | None = None  # held from one batch to the next while they follow
        self.batches = 0  # committed batches (for tests and diagnostics)
        self.rows = 0  # items of the committed batches

    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is not None:
            return
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if self._checkpoints is not None:
            self._checkpoints.start(f"{self.name}-checkpoints")

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what is queued or gathered, then stop."""
        with self._lock:
            self._accepting = False
            gathered = list(self._gathering.values())
            self._gathering.clear()
        for batch in gathered:
            self._queue.put(batch)
        if self._thread is None:
            if gathered:  # never started: nobody will commit them
                self._settle_late()
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None
        if self._checkpoints is not None:
            self._checkpoints.stop(timeout)

    async def submit(self, item: ItemT) -> ResultT:
        """Queue ``item``; returns its result (or raises its error) once its batch is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        with self._lock:
            if not self._accepting:
                raise UnavailableError("the service is shutting down; retry shortly")
            batch = self._gathering.get(loop)
            if batch is None:
                batch = self._gathering[loop] = []
            batch.append((item, loop, future))
            full = len(batch) >= self.max_batch
        if full:
            self._flush(loop)
        else:
            _schedule_flush(loop, self)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand the batch gathered on ``loop`` to the writer thread."""
        with self._lock:
            batch = self._gathering.pop(loop, None)
        if batch:
            self._queue.put(batch)

    def commit_batch(self, items: list[ItemT]) -> list[ResultT | Exception]:
        """Write ``items`` in one transaction and commit; one outcome per item, in order."""
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction for :meth:`commit_batch`, committed on exit.

        On the writer thread its connection stays with the writer while batches follow one another
        (the thread gives it back to the pool before it waits for work), so a busy writer skips the
        pool's checkout and, on PostgreSQL, its pre-ping round trip. A failed transaction gives it
        back at once: the next batch checks out (and pings) a fresh one. Elsewhere (tests, tools)
        every transaction has its own connection. On SQLite the held connection leaves the WAL
        checkpoints to :class:`WalCheckpoints`.
        """
        held = threading.current_thread() is self._thread
        conn = self._conn if held else None
        if conn is None:
            conn = self.engine.connect()
            if held:
                self._conn = conn
                if self._checkpoints is not None:
                    self._checkpoints.hold(conn)
        try:
            with conn.begin():
                yield conn
        except BaseException:
            if held:
                self._release()
            else:
                conn.close()
            raise
        if not held:
            conn.close()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._checkpoints is not None:
            self._checkpoints.unhold(conn)
        with contextlib.suppress(Exception):  # e.g. the database went away with it
            conn.close()

    def _run(self) -> None:
        pending: list[Entry] = []  # handed over, in queue order, not yet committed
        stopping = False
        while pending or not stopping:
            if not pending:
                if self._conn is not None and self._queue.empty():
                    self._release()  # idle: the connection goes back to the pool
                first = self._queue.get()
                if first is _STOP:
                    break
                pending = first
            while not stopping and len(pending) < self.max_batch:  # whatever else is queued
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                else:
                    pending += more
            if len(pending) <= self.max_batch:
                batch, pending = pending, []
            else:
                batch, pending = pending[: self.max_batch], pending[self.max_batch :]
            self._commit(batch)
        self._release()
        self._settle_late()

    def _settle_late(self) -> None:
        # An item that raced past ``_accepting`` during shutdown must not wait forever.
        late: list[Entry] = []
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is not _STOP:
                late += entry
        if late:
            error = UnavailableError("the service is shutting down; retry shortly")
            self._settle(late, [error] * len(late))

    def _commit(self, batch: list[Entry]) -> None:
        items = [item for item, _, _ in batch]
        outcomes, committed = self._isolated(items)
        self._settle(batch, outcomes)
        if committed and self._checkpoints is not None:
            self._checkpoints.after_commit(committed)  # the batch's requests are answered already

    def _isolated(self, items: list[Any]) -> tuple[list[Any], int]:
        """Commit ``items``; returns one outcome per item and how many rows were committed.

        A batch that fails because of its rows (not because the database is away) is committed again
        in halves, recursively, so a row the database refuses fails only its own request (a 422 when
        the row is the client's fault) and every other request of the batch commits: a bad row costs
        about ``2·log2(batch)`` extra transactions. A database that is away fails the whole batch at
        once (→ 503), nothing acknowledged.
        """
        try:
            outcomes = self.commit_batch(items)
            if len(outcomes) != len(items):
                raise RuntimeError(f"{self.name}: {len(outcomes)} outcomes for {len(items)} items")
        except Exception as exc:
            if len(items) == 1 or database_unavailable(exc):
                log.warning("%s: batch of %d failed: %s", self.name, len(items), exc)
                return [rejected_row(exc)] * len(items), 0
            half = len(items) // 2
            log.warning("%s: batch of %d failed, isolating the bad row: %s", self.name, len(items), exc)
            first, first_rows = self._isolated(items[:half])
            second, second_rows = self._isolated(items[half:])
            return first + second, first_rows + second_rows
        self.batches += 1
        self.rows += len(items)
        return outcomes, len(items)

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


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database itself is away (locked, unreachable, pool exhausted) rather
    than that a statement's values were refused."""
    if isinstance(exc, OperationalError | PoolTimeout | UnavailableError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def rejected_row(exc: Exception) -> Exception:
    """The error a request gets when the database refused its row: values it cannot store (a NUL
    byte, a number out of the column's range) are the client's fault (422); anything else stays as
    it is."""
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    if isinstance(exc, DataError) or isinstance(cause, ValueError | OverflowError | TypeError):
        reason = str(cause).splitlines()[0][:200] if str(cause) else type(cause).__name__
        return InvalidInputError(f"the database cannot store a value of this request: {reason}")
    return exc


def _resolve(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in settled:
        if future.done():  # the request was cancelled (client gone): its write stands all the same
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class WalCheckpoints:
    """SQLite WAL checkpoints in a thread of their own, off the writer's and the requests' path.

    SQLite checkpoints the WAL inside the commit that takes it past ``wal_autocheckpoint`` pages (1000
    by default): that commit copies the pages into the database file and syncs both files, about
    15 ms here, and every request of its batch, and of the batches queued behind it, waits. The
    writer's connection therefore has the automatic checkpoint off while the writer holds it (set
    when it takes the connection, restored before the connection goes back to the pool, or the
    connection is discarded). Instead, after every ``rows_between`` committed rows this thread runs
    the same passive checkpoint on a connection of its own while the writer goes on committing: the
    commits are as durable as before (WAL, ``synchronous=NORMAL``), only the copying and the syncs
    move elsewhere. ``rows_between`` follows the pages a row adds (about ``3/4`` of the automatic
    threshold between two checkpoints), learnt from the WAL's size that each checkpoint reports.

    A checkpoint that overlaps a commit leaves that commit's pages for the next one, and SQLite only
    starts the WAL file over once a checkpoint has caught up with every commit. Under continuous
    load that can take a while, so when a checkpoint reports more than ``4x`` the automatic threshold
    the writer thread runs the next checkpoint itself, between two batches (after answering the
    first), which starts the WAL over: its size stays bounded.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.enabled = True
        self.limit = 0  # the connections' wal_autocheckpoint, read when the writer first holds one
        self.rows_between = 64  # committed rows from one checkpoint to the next (adapted)
        self.rows = 0  # committed since the last checkpoint was asked for
        self.asked_rows = 0  # the rows the running or last checkpoint covers
        self.wal_pages = 0  # the WAL's size at the last checkpoint
        self.checkpoints = 0  # completed (for tests and diagnostics)
        self._inline = False  # the writer runs the next checkpoint itself
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self, name: str) -> None:
        """Start the checkpoint thread."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the checkpoint thread (a running checkpoint completes first)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping = True
            self._wake.set()
            thread.join(timeout)

    def hold(self, conn: Connection) -> None:
        """The writer takes ``conn``: its commits leave the checkpoints to this thread."""
        if not self.enabled:
            return
        try:
            if not self.limit:
                self.limit = int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() or 0)
                if self.limit <= 0:  # automatic checkpoints are off by configuration: so are these
                    self.enabled = False
                    conn.rollback()
                    return
            conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
            conn.commit()  # end the implicit transaction the pragmas began (nothing to commit)
        except Exception as exc:  # the transaction that follows reports the database's state
            log.debug("could not hand the WAL checkpoints to their thread: %s", exc)
            with contextlib.suppress(Exception):
                conn.rollback()

    def unhold(self, conn: Connection) -> None:
        """The writer gives ``conn`` back: automatic checkpoints on again, or the connection goes."""
        if not self.limit:  # never read, so never switched off
            return
        try:
            conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint={self.limit}")
            conn.commit()
        except Exception:  # never back into the pool without its automatic checkpoints
            with contextlib.suppress(Exception):
                conn.invalidate()

    def after_commit(self, rows: int) -> None:
        """Count ``rows`` committed; ask for a checkpoint when enough have been (writer thread)."""
        if not self.enabled:
            return
        self.rows += rows
        if self._inline:
            self._inline = False
            self._checkpoint(inline=True)
            return
        if self.rows >= self.rows_between and not self._wake.is_set() and self._thread is not None:
            self.asked_rows, self.rows = self.rows, 0
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait()
            if self._stopping:
                return
            self._checkpoint()
            self._wake.clear()  # the writer may ask again

    def _checkpoint(self, inline: bool = False) -> None:
        try:
            with self.engine.connect() as conn:
                busy, wal_pages, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        except Exception as exc:  # e.g. the database is away: the next one tries again
            log.debug("WAL checkpoint failed: %s", exc)
            return
        if wal_pages < 0:  # not in WAL mode (an in-memory database, another journal mode)
            self.enabled = False
            return
        self.checkpoints += 1
        added = wal_pages - self.wal_pages if wal_pages >= self.wal_pages else wal_pages
        self.wal_pages = wal_pages
        if not inline and self.limit and wal_pages > 4 * self.limit:
            self._inline = True  # the WAL is not starting over: the writer catches up between batches
        if inline or busy or added <= 0 or self.asked_rows <= 0 or not self.limit:
            return
        target = self.limit * 3 // 4
        per_row = added / self.asked_rows
        self.rows_between = min(4096, max(16, int(target / per_row)))


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
