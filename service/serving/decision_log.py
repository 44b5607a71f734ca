"""Group commit of served decisions: one writer thread, one transaction per batch of requests.

``/act`` enqueues its decision row and awaits a future; the writer drains whatever is queued (up to
``max_batch`` rows), assigns the per-session steps, inserts the batch in one transaction, commits, and
only then resolves every waiting future. A response is therefore still sent only after its decision is
committed (a 2xx means durable), but the commit and the insert round trips are shared by every request
that arrived meanwhile, and no request holds a threadpool worker or blocks the event loop while it waits.
A failed batch fails each of its requests (the database error is re-raised in the handler: 503). The
queue, thread and settling machinery is :class:`service.store.group_commit.GroupCommitWriter`.

A session's next step is one past the largest stored step. ``max(step)`` reads every stored row of the
session (no index holds ``step``); the writer therefore remembers, per session, the row count and the
largest step as of its own last commit, and asks the database only for the sessions' row counts, which
SQLite answers from the ``(session_id, created_at)`` index alone. A session whose count is not the
remembered one (another replica wrote to it, or it is not remembered) has its ``max(step)`` read as
before. Decisions are never deleted, so an unchanged count means an unchanged largest step.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from service.serving.choice import NO_MODES
from service.store.group_commit import GroupCommitWriter
from service.store.models import Decision
from service.store.multirow_insert import MultiRowInsert

COLUMNS = (
    "event_id",
    "session_id",
    "step",
    "state",
    "allowed_mask",
    "ranking",
    "item_id",
    "action_index",
    "propensity",
    "explored",
    "model_version",
    "policy_revision",
    "created_at",
    "transition_built",
    "learn",
    *NO_MODES,  # apprentice and shadow modes (migration 0006)
)


# Sessions whose row count and largest step a writer remembers (the least recently written go first).
KNOWN_SESSIONS = 100_000


class _RowWriter(MultiRowInsert):
    """The decisions' ``INSERT``, plus the raw per-session step lookup of a batch."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, Decision.__table__, COLUMNS)  # type: ignore[arg-type]
        # session → (stored rows, largest stored step) after this writer's last commit with the session.
        self.known: dict[str, tuple[int, int]] = {}
        self._counted: dict[str, int] = {}  # the row counts the current batch read

    def steps_sql(self, sessions: list[str]) -> tuple[str, tuple[Any, ...]]:
        """The sessions' largest stored steps (reads every stored row of each session)."""
        where, params = self.in_list("session_id", sessions)
        return f"SELECT session_id, max(step) FROM decisions WHERE {where} GROUP BY session_id", params

    def counts_sql(self, sessions: list[str]) -> tuple[str, tuple[Any, ...]]:
        """The sessions' stored row counts (SQLite reads only the ``(session_id, created_at)`` index)."""
        where, params = self.in_list("session_id", sessions)
        return f"SELECT session_id, count(*) FROM decisions WHERE {where} GROUP BY session_id", params

    def following_steps(self, conn: Any, sessions: list[str]) -> dict[str, int]:
        """Each stored session's next step: remembered where its row count is unchanged, else read."""
        counts = dict(conn.exec_driver_sql(*self.counts_sql(sessions)).all())
        self._counted = counts
        following: dict[str, int] = {}
        unknown = []
        for session_id, count in counts.items():
            known = self.known.get(session_id)
            if known is not None and known[0] == count:
                following[session_id] = known[1] + 1
            else:
                unknown.append(session_id)
        if unknown:
            stored = conn.exec_driver_sql(*self.steps_sql(unknown))
            following.update((session_id, step + 1) for session_id, step in stored)
        return following

    def remember(self, rows: list[dict[str, Any]]) -> None:
        """After ``rows`` were committed: their sessions' row counts and largest steps."""
        counts, known = self._counted, self.known
        added: dict[str, tuple[int, int]] = {}
        for row in rows:
            session_id = row["session_id"]
            if session_id is not None:
                n, _ = added.get(session_id, (0, 0))
                added[session_id] = (n + 1, row["step"])  # steps rise in queue order
        for session_id, (n, last) in added.items():
            known.pop(session_id, None)
            known[session_id] = (counts.get(session_id, 0) + n, last)
        for _ in range(len(known) - KNOWN_SESSIONS):
            del known[next(iter(known))]


def assign_steps(conn: Any, rows: list[dict[str, Any]], writer: _RowWriter | None = None) -> None:
    """Set each row's ``step``: one past the session's stored maximum, in queue order within a batch."""
    sessions = list({row["session_id"] for row in rows if row["session_id"] is not None})
    following: dict[str, int] = {}
    if sessions:
        if writer is not None:
            following = writer.following_steps(conn, sessions)
        else:
            stored = conn.execute(
                select(Decision.session_id, func.max(Decision.step))
                .where(Decision.session_id.in_(sessions))
                .group_by(Decision.session_id)
            )
            following = {session_id: step + 1 for session_id, step in stored}
    for row in rows:
        session_id = row["session_id"]
        if session_id is None:
            row["step"] = 0
            continue
        row["step"] = following.get(session_id, 0)
        following[session_id] = row["step"] + 1


class DecisionWriter(GroupCommitWriter[dict[str, Any], None]):
    """The process's single decision writer (a daemon thread started by the API's lifespan)."""

    name = "decision-writer"

    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        super().__init__(engine, max_batch)
        self._rows = _RowWriter(engine)

    async def write(self, row: dict[str, Any]) -> None:
        """Store ``row`` (a ``decisions`` row without its ``step``); returns once it is committed."""
        await self.submit(row)

    def commit_batch(self, items: list[dict[str, Any]]) -> list[Exception | None]:
        """Assign the batch's steps and insert it: one transaction, one ``INSERT`` driver call."""
        with self.transaction() as conn:
            assign_steps(conn, items, self._rows)
            self._rows.insert(conn, items)
        self._rows.remember(items)  # committed: these are now the sessions' stored steps
        return [None] * len(items)
