"""When a group-commit writer's gathered batch is handed over: once its event loop has nothing else
ready to run, or at the latest ``max_gather_s`` after its first item (see
:mod:`service.store.group_commit`, whose writers call :func:`schedule_flush`)."""

from __future__ import annotations

import asyncio
from typing import Any

# Event loops with an idle check scheduled, and the writers whose gathered batches it hands over. Only
# the loop's own thread touches its entry; an entry lives from a loop's first gathered item to the
# check that flushes it.
_flush_pending: dict[asyncio.AbstractEventLoop, list[Any]] = {}


def schedule_flush(loop: asyncio.AbstractEventLoop, writer: Any) -> None:
    """Hand ``writer``'s batch gathered on ``loop`` over once the loop is idle (one check per loop)."""
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
