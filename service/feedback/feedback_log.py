"""Group commit of feedback: the posts queued meanwhile are judged and stored in one transaction.

``/feedback`` enqueues its post and awaits a future. The writer thread takes a batch, reads the batch's
decisions and their stored feedback with one ``SELECT`` each, judges every post in queue order in
memory (:func:`service.feedback.recording.judge`, the verdict ``record_feedback`` uses; a later post of
the same event sees the earlier ones, as if they had been sent one after the other), inserts the new
rows with one multi-row ``INSERT``, commits, and only then answers each request with its result or its
domain error (404, 409). One request held a threadpool worker, a session and SQLite's write lock for two
``SELECT``s, an ``INSERT`` and a commit; a batch now shares them.

Another process (a replica) may store the same ``(event_id, dedup_key)`` between the reads and the
insert: the unique constraint then rejects the batch, which is rolled back and re-judged post by post
with :func:`service.feedback.recording.record_feedback`, so nothing is lost or stored twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import ConflictError, NotFoundError
from service.feedback.recording import (
    Aggregation,
    FeedbackResult,
    FeedbackRow,
    StoredFeedback,
    dedup_key,
    judge,
    record_feedback,
    stored_result,
)
from service.store.group_commit import GroupCommitWriter
from service.store.models import Decision, Feedback, utcnow
from service.store.multirow_insert import MultiRowInsert

log = logging.getLogger(__name__)

COLUMNS = ("event_id", "dedup_key", "reward", "done", "created_at")


@dataclass(frozen=True)
class FeedbackPost:
    """One ``/feedback`` request's body."""

    event_id: str
    reward: float
    done: bool = False
    feedback_id: str | None = None


class FeedbackWriter(GroupCommitWriter[FeedbackPost, FeedbackResult]):
    """The process's single feedback writer (a daemon thread started by the API's lifespan)."""

    name = "feedback-writer"

    def __init__(
        self, engine: Engine, aggregation: Aggregation, reward_window_s: float, max_batch: int = 256
    ) -> None:
        super().__init__(engine, max_batch)
        self.aggregation: Aggregation = aggregation
        self.reward_window_s = reward_window_s
        self._rows = MultiRowInsert(engine, Feedback.__table__, COLUMNS)  # type: ignore[arg-type]
        self.fallbacks = 0  # batches re-judged one post at a time after a unique-key race

    async def write(self, post: FeedbackPost) -> FeedbackResult:
        """Record ``post``; returns its result once committed, or raises its 404/409 error."""
        return await self.submit(post)

    def commit_batch(self, items: list[FeedbackPost]) -> list[FeedbackResult | Exception]:
        """Judge and store ``items`` in one transaction; a lost unique-key race re-judges them singly."""
        try:
            with self.transaction() as conn:
                outcomes, rows = self.judge_batch(conn, items, utcnow())
                self._rows.insert(conn, rows)
            return outcomes
        except IntegrityError as exc:  # rolled back: nothing of the batch is stored
            log.info("feedback batch of %d lost a unique-key race, re-judging singly: %s", len(items), exc)
            self.fallbacks += 1
            return self._one_by_one(items)

    def judge_batch(
        self, conn: Any, items: list[FeedbackPost], now: datetime
    ) -> tuple[list[FeedbackResult | Exception], list[dict[str, Any]]]:
        """Each post's outcome, in queue order, and the feedback rows to insert (reads only)."""
        events = list(dict.fromkeys(post.event_id for post in items))
        decisions = {
            row.event_id: row
            for row in conn.execute(
                select(
                    Decision.event_id, Decision.created_at, Decision.transition_built, Decision.learn
                ).where(Decision.event_id.in_(events))
            )
        }
        stored: dict[str, list[StoredFeedback]] = {event: [] for event in events}
        for row in conn.execute(
            select(Feedback.event_id, Feedback.dedup_key, Feedback.reward, Feedback.done)
            .where(Feedback.event_id.in_(events))
            .order_by(Feedback.id)  # the order record_feedback sums in
        ):
            stored[row.event_id].append(row)
        outcomes: list[FeedbackResult | Exception] = []
        new_rows: list[dict[str, Any]] = []
        for post in items:
            key = dedup_key(self.aggregation, post.reward, post.done, post.feedback_id)
            rows = stored[post.event_id]
            try:
                verdict = judge(
                    post.event_id,
                    post.reward,
                    post.done,
                    key,
                    decisions.get(post.event_id),
                    rows,
                    aggregation=self.aggregation,
                    reward_window_s=self.reward_window_s,
                    now=now,
                )
            except (NotFoundError, ConflictError) as exc:
                outcomes.append(exc)
                continue
            if verdict is None:  # to be stored: later posts of this event see it
                verdict = stored_result(post.event_id, rows, post.reward, post.done)
                rows.append(FeedbackRow(key, post.reward, post.done))
                new_rows.append(
                    {
                        "event_id": post.event_id,
                        "dedup_key": key,
                        "reward": post.reward,
                        "done": post.done,
                        "created_at": now,
                    }
                )
            outcomes.append(verdict)
        return outcomes, new_rows

    def _one_by_one(self, items: list[FeedbackPost]) -> list[FeedbackResult | Exception]:
        # The slow but race-proof path: each post in its own transaction, judged after the previous
        # one committed; a post's failure is its own.
        outcomes: list[FeedbackResult | Exception] = []
        for post in items:
            try:
                with Session(self.engine) as session:
                    outcomes.append(
                        record_feedback(
                            session,
                            post.event_id,
                            post.reward,
                            post.done,
                            aggregation=self.aggregation,
                            reward_window_s=self.reward_window_s,
                            feedback_id=post.feedback_id,
                        )
                    )
            except Exception as exc:
                outcomes.append(exc)
        return outcomes
