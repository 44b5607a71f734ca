"""Saving the online agent's weights outside the periodic schedule: now, on request (``POST /admin/save``),
and on stop, when online updates made since the last save would otherwise be lost.

Only the online loop's thread reads and replaces its agent (:mod:`service.learning.online`), so a request
from another thread (the API's) is queued here and answered by that thread between two iterations; the
stop-time save runs on it too, as it leaves its loop. Both save exactly as the periodic save does
(:meth:`service.learning.online.OnlineLoop.save_online_version`): a new, active version with source
``online``. It must be active: the loop follows the active version and would otherwise go back to it,
dropping what it learned since. With the promotion gate on (:mod:`service.learning.promotion`) a save is
judged instead, and the loop keeps learning from a held one; the stop-time save is held unjudged.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

from service.errors import ConflictError, NoModelError, UnavailableError

if TYPE_CHECKING:
    from service.learning.online import OnlineLoop

log = logging.getLogger(__name__)

# How long a request waits for the online loop to take it up: one poll interval normally, but adopting a
# new version reloads every demonstration (about a minute for millions of rows). A request not taken up
# by then is withdrawn (nothing is saved) and answered 503.
PICKUP_WAIT_S = 30.0
# Once taken up, the save itself: serialising the weights and one commit.
SAVE_WAIT_S = 30.0


class SaveRequests:
    """Save requests from other threads, answered on the online loop's thread. Requests waiting
    together are answered by one save: each asked for the weights as they are now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[Future[int]] = []

    def submit(self) -> Future[int]:
        """Queue a request; its future resolves to the saved version (or raises why it was not)."""
        future: Future[int] = Future()
        with self._lock:
            self._waiting.append(future)
        return future

    def wait(self, future: Future[int]) -> int:
        """The requester's side: the saved version, once the online loop answered ``future``.

        Raises:
            UnavailableError: the loop did not take the request up in time (withdrawn: nothing saved)
                or the save did not finish in time.
            ServiceError: the save was refused (see :func:`save_now`).
        """
        try:
            return future.result(timeout=PICKUP_WAIT_S)
        except FutureTimeout:
            if future.cancel():
                raise UnavailableError(
                    f"the trainer did not take the save up within {PICKUP_WAIT_S:g} s (busy, e.g. loading "
                    "a new version's demonstrations): nothing was saved"
                ) from None
        try:
            return future.result(timeout=SAVE_WAIT_S)
        except FutureTimeout:
            raise UnavailableError(f"the save did not finish within {SAVE_WAIT_S:g} s") from None

    def answer(self, loop: OnlineLoop) -> None:
        """The online loop's side: answer every waiting request with one save (see :func:`save_now`)."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        taken = [future for future in waiting if future.set_running_or_notify_cancel()]
        if not taken:
            return
        try:
            version = save_now(loop)
        except Exception as exc:
            for future in taken:
                future.set_exception(exc)
            return
        for future in taken:
            future.set_result(version)


def save_now(loop: OnlineLoop) -> int:
    """Save the online agent's current weights as a new, active version (on the loop's thread); returns it.

    Raises:
        NoModelError: no agent yet (no model version, or the first pretraining still runs): 503.
        ConflictError: the agent diverged; its weights are not worth keeping (the last good ones stay
            served and active): 409.
        UnavailableError: a retrained agent waits to be adopted and its version is the active one: 503
            (a save after the adoption saves that agent).
    """
    if loop.agent is None:
        raise NoModelError("the trainer has no model yet (none saved, or the first pretraining still runs)")
    if getattr(loop.agent, "diverged", False):
        raise ConflictError(
            "the trainer diverged (its recent updates were non-finite): its weights are not saved; the last "
            "good version stays active"
        )
    version = loop.save_online_version()
    if version is None:
        raise UnavailableError("a retrained version is being adopted by the trainer; retry in a few seconds")
    return version


def save_unsaved(loop: OnlineLoop) -> int | None:
    """Save the online updates made since the last save, if any, as a new active version (on the loop's
    thread, as it stops); returns the version, or None when there was nothing to save or it could not be
    saved (logged either way: this runs during shutdown, where raising would help nobody)."""
    unsaved = loop.updates_since_save
    if loop.agent is None or unsaved == 0:
        return None
    if getattr(loop.agent, "diverged", False):
        log.warning("trainer stopping diverged: its %d unsaved online update(s) are not saved", unsaved)
        return None
    try:
        version = loop.save_online_version(judge=False)  # the gate, when on, holds it unjudged
    except Exception:
        log.exception("trainer stopping: %d online update(s) since the last save could not be saved", unsaved)
        return None
    if version is None:
        log.info("trainer stopping: a retrained version is active; %d online update(s) not saved", unsaved)
        return None
    log.info("trainer stopping: saved %d unsaved online update(s) as model version %s", unsaved, version)
    return version
