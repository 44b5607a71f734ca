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
and one writer that never waits. A request waits at most ``timeout_s`` for its commit, then gets a 503;
a batch stuck on a database that hangs is interrupted (:meth:`GroupCommitWriter._timed_out`).

Gathering on the loop matters because the writer thread shares the process's core and GIL with the
loop: handed each item as it came, it woke for nearly every request and committed batches of one or
two, each paying a transaction's fixed cost (about 200 µs of CPU on SQLite, against about 60 µs a row
in a batch of 32).

The writer keeps its database connection while batches follow one another
(:meth:`GroupCommitWriter.transaction`), and on SQLite the WAL checkpoints, which SQLite would otherwise
run inside a commit every thousand pages, run in a thread of their own
(:class:`service.store.wal_checkpoints.WalCheckpoints`).

``/act`` (:class:`service.serving.decision_log.DecisionWriter`) and ``/feedback``
(:class:`service.feedback.feedback_log.FeedbackWriter`) are the two subclasses;
:class:`service.store.multirow_insert.MultiRowInsert` is their shared fast ``INSERT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

from service.errors import UnavailableError
from service.metrics import DATABASE_ERRORS
from service.store.batch_gathering import schedule_flush
from service.store.db import database_unavailable, interrupt_connections, rejected_row
from service.store.wal_checkpoints import WalCheckpoints

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

_STOP = None

Entry = tuple[Any, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class GroupCommitWriter(Generic[ItemT, ResultT]):
    """A daemon writer thread (started and stopped by the API's lifespan) that commits in batches.

    Subclasses implement :meth:`commit_batch`; an item's outcome is either its result or the
    exception its request must raise (a domain error such as a 409). An exception escaping
    ``commit_batch`` fails every request of the batch, since nothing of it was committed.
    """

    name = "group-commit"
    max_gather_s = 0.005  # the longest a batch is gathered on a busy loop before it is handed over
    timeout_s: float | None = None  # the longest a request waits for its commit, then 503 (None: no bound)

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
        self._busy_since: float | None = None  # when the batch being committed began (monotonic)
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
            schedule_flush(loop, self)
        if self.timeout_s is None:
            return await future
        try:
            async with asyncio.timeout(self.timeout_s):  # cancels ``future``: ``_resolve`` skips it
                return await future
        except TimeoutError:
            self._timed_out()
            raise UnavailableError(f"the database did not answer within {self.timeout_s:g} s") from None

    def _timed_out(self) -> None:
        # A request waited past its bound. A batch committing for over half of it waits on a database
        # that hangs: interrupting its connections frees the writer (that batch fails, the next one
        # connects afresh). Its rows may still commit after their requests got a 503.
        since, bound = self._busy_since, self.timeout_s or 0.0
        if since is not None and time.monotonic() - since >= bound / 2:
            log.warning("%s: no commit within %g s; interrupting the database connections", self.name, bound)
            interrupt_connections(self.engine)

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
        self._busy_since = time.monotonic()
        try:
            outcomes, committed = self._isolated(items)
        finally:
            self._busy_since = None
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
            if (away := database_unavailable(exc)) or len(items) == 1:
                DATABASE_ERRORS.labels(self.name).inc(1 if away else 0)  # a refused row is no database error
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


def _resolve(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in settled:
        if future.done():  # the request was cancelled (client gone): its write stands all the same
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
