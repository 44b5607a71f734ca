"""Group commit of served decisions: one writer thread, one transaction per batch of requests.

``/act`` enqueues its decision row and awaits a future; the writer drains whatever is queued (up to
``max_batch`` rows), assigns the per-session steps, inserts the batch in one transaction, commits, and
only then resolves every waiting future. A response is therefore still sent only after its decision is
committed (a 2xx means durable), but the commit and the insert round trips are shared by every request
that arrived meanwhile, and no request holds a threadpool worker or blocks the event loop while it waits.
A failed batch fails each of its requests (the database error is re-raised in the handler: 503). The
queue, thread and settling machinery is :class:`service.group_commit.GroupCommitWriter`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from service.group_commit import GroupCommitWriter, MultiRowInsert
from service.models import Decision

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
)


class _RowWriter(MultiRowInsert):
    """The decisions' multi-row ``INSERT``, plus the raw per-session step lookup of a batch."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, Decision.__table__, COLUMNS)  # type: ignore[arg-type]

    def steps_sql(self, n: int) -> str:
        return (
            f"SELECT session_id, max(step) FROM decisions WHERE session_id IN ({self.marks(n)})"
            " GROUP BY session_id"
        )


def assign_steps(conn: Any, rows: list[dict[str, Any]], writer: _RowWriter | None = None) -> None:
    """Set each row's ``step``: one past the session's stored maximum, in queue order within a batch."""
    sessions = list({row["session_id"] for row in rows if row["session_id"] is not None})
    following: dict[str, int] = {}
    if sessions:
        if writer is not None:
            stored = conn.exec_driver_sql(writer.steps_sql(len(sessions)), tuple(sessions))
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
        """Assign the batch's steps and insert it: one transaction, one multi-row ``INSERT``."""
        with self.engine.begin() as conn:
            assign_steps(conn, items, self._rows)
            self._rows.insert(conn, items)
        return [None] * len(items)
