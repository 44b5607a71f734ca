"""SQLite WAL checkpoints in a thread of their own, off the group-commit writer's path (see
:class:`WalCheckpoints`)."""

from __future__ import annotations

import contextlib
import logging
import threading

from sqlalchemy import Connection, Engine

log = logging.getLogger(__name__)


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
