"""The trainer's recent learning history, in memory: update counts and losses over time, for the dashboard.

A bounded ring buffer in the trainer's process (nothing is written to the database): the online loop
records a point per iteration, at most one every :data:`MIN_INTERVAL_S`, and the oldest points fall
out after :data:`MAX_POINTS`. A process restart starts it empty; a ``worker`` process keeps its own,
which the API replicas cannot read (the dashboard says so).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

MAX_POINTS = 3600
"""One hour at one point a second: a few hundred kilobytes at most."""
MIN_INTERVAL_S = 1.0
"""The online loop runs every ``DQFD_TRAINER_POLL_S`` (1 s by default, 50 ms in tests): a point a
second is as fine as the dashboard's charts show, whatever the poll interval."""


@dataclass(frozen=True)
class Point:
    """The learner at one moment: wall time, online updates so far (this process), the last update's
    losses, and the live transitions learned so far."""

    time: float
    updates_total: int
    losses: dict[str, float]
    transitions_total: int


class TrainingHistory:
    """Thread-safe ring buffer of :class:`Point`; written by the online loop, read by the API."""

    def __init__(self, max_points: int = MAX_POINTS, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self._points: deque[Point] = deque(maxlen=max_points)
        self._lock = threading.Lock()
        self._min_interval_s = min_interval_s
        self.updates_total = 0
        self.transitions_total = 0

    def record(
        self, updates: int, losses: dict[str, float], transitions: int, now: float | None = None
    ) -> None:
        """Count one iteration's ``updates`` and ``transitions``; keep a point when the last one is at
        least the minimum interval old (the counts accumulate in between, so no update is lost)."""
        now = time.time() if now is None else now
        with self._lock:
            self.updates_total += updates
            self.transitions_total += transitions
            if self._points and now - self._points[-1].time < self._min_interval_s:
                return
            self._points.append(Point(now, self.updates_total, dict(losses), self.transitions_total))

    def series(self, since: float | None = None) -> dict[str, Any]:
        """The points at or after ``since`` (wall time, seconds), as columns: ``time``, ``updates_total``,
        ``updates_per_s`` (over the interval before each point; None for the first), one list per
        loss component (None where a point has no value for it)."""
        with self._lock:
            points = [p for p in self._points if since is None or p.time >= since]
        names = sorted({name for p in points for name in p.losses})
        rates: list[float | None] = [None]
        for before, after in pairwise(points):
            elapsed = after.time - before.time
            rates.append((after.updates_total - before.updates_total) / elapsed if elapsed > 0 else None)
        return {
            "time": [p.time for p in points],
            "updates_total": [p.updates_total for p in points],
            "updates_per_s": rates[: len(points)],
            "transitions_total": [p.transitions_total for p in points],
            "losses": {name: [p.losses.get(name) for p in points] for name in names},
        }
