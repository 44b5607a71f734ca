"""The hand-off of a finished job's agent from the job thread to the online loop.

A job trains a fresh agent of its own while the online loop goes on learning with the current one. When
the job's version is activated, the job thread commits that version *and* leaves its agent here in one
step under one lock, and the online loop reads the active version *and* takes the waiting agent under
the same lock. The loop therefore never sees the job's version active without its agent waiting, so it
adopts that agent instead of loading the same version back from the database; and while an agent
waits, the loop saves no online version of its own (that would put the older agent's weights in front
of the retrained ones).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from service.ingest.catalogue import Catalogue
from service.learning.replay import Filled

T = TypeVar("T")


@dataclass
class TrainedAgent:
    """A finished job's agent, with what the online loop needs to adopt it."""

    agent: Any
    catalogue: Catalogue
    version: int
    activate: bool
    filled: Filled


class Handoff:
    """One slot for a finished job's agent, and the lock that ties it to the active version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: TrainedAgent | None = None

    @property
    def pending(self) -> bool:
        """Whether a finished job's agent waits to be adopted (read without the lock: a hint)."""
        return self._waiting is not None

    def deliver(self, commit: Callable[[], TrainedAgent], hand_over: bool) -> TrainedAgent:
        """Job side: run ``commit`` (it saves the job's version) and, with ``hand_over`` and an activated
        version, leave its agent for the online loop, in one step. A job that finishes before the loop
        adopted the previous one replaces it: the newer version wins."""
        with self._lock:
            trained = commit()
            if hand_over and trained.activate:
                self._waiting = trained
            return trained

    def take(self, read_active: Callable[[], int | None]) -> tuple[TrainedAgent | None, int | None]:
        """Online side: the waiting agent (and None), or no agent and ``read_active()`` (the active
        version number, read under the lock)."""
        with self._lock:
            trained, self._waiting = self._waiting, None
            if trained is not None:
                return trained, None
            return None, read_active()

    def unless_pending(self, commit: Callable[[], T]) -> T | None:
        """Online side: run ``commit`` (it saves an online version) unless a job's agent is waiting
        (None: the job's version stays the active one)."""
        with self._lock:
            if self._waiting is not None:
                return None
            return commit()
