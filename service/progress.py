"""Progress bars that suit both a terminal and a log file.

On a terminal a tqdm bar redraws in place. When the stream is a file or a pipe (a container's log, CI,
``nohup``), every redraw would become a line of the log, so the bar then refreshes at most every
:data:`LOG_INTERVAL_S` seconds (and once at the end): a long job leaves a few dozen lines, not thousands.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
"""Seconds between two progress lines when the output is not a terminal."""


def progress_bar(total: int | None, desc: str, unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr: live on a terminal, one line per :data:`LOG_INTERVAL_S` otherwise."""
    stream = kwargs.pop("file", sys.stderr)
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    if not interactive:
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S * 2)
        kwargs.setdefault("ncols", 100)
        kwargs.setdefault("ascii", True)  # plain characters in a log file
    return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=interactive, **kwargs)
