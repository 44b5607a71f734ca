"""Progress of ``DQfDAgent.pretrain(progress=True)``: a live bar on a terminal, a few lines in a log.

A tqdm bar redraws itself up to ten times a second; on a terminal that is one line updated in place,
but in a log file, a pipe or a container's log every redraw stays, and a long pretraining run leaves
thousands of them. So the bar is tqdm's only when its stream is a terminal (or a Jupyter kernel, where
tqdm draws a widget); otherwise :class:`LineProgress` writes a plain line each time another
:data:`LINE_FRACTION` of the updates is done, or when :data:`LINE_SECONDS` have passed without one (so a
slow run still shows it is alive), and one at the end: about ten lines for a short run, one every half
minute for a long one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

LINE_FRACTION = 0.1
"""Share of the total between two progress lines when the stream is not a terminal."""

LINE_SECONDS = 30.0
"""Longest wait between two progress lines when the stream is not a terminal."""


class LineProgress:
    """The part of tqdm's interface that ``pretrain`` uses (``update``, ``set_postfix``, ``close``),
    written as plain, complete lines at most every :data:`LINE_FRACTION` or :data:`LINE_SECONDS`."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        stream: TextIO,
        fraction: float = LINE_FRACTION,
        seconds: float = LINE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit, self.stream = int(total), desc, unit, stream
        self.seconds, self.clock = seconds, clock
        self.stride = max(1, int(self.total * fraction))
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.started = self.last_time = clock()
        self.next_n = self.stride
        self.written_n = -1

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.next_n or self.clock() - self.last_time >= self.seconds:
            self._write()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        if self.n != self.written_n:
            self._write()

    def _write(self) -> None:
        now = self.clock()
        elapsed = now - self.started
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:,.0f} {self.unit}s/s" if elapsed > 0 else ""
        extra = "".join(f", {key}={value}" for key, value in self.postfix.items())
        self.stream.write(
            f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}s{percent}, {elapsed:.1f} s{rate}{extra}\n"
        )
        self.stream.flush()
        self.last_time, self.written_n = now, self.n
        self.next_n = (self.n // self.stride + 1) * self.stride


def is_interactive(stream: Any) -> bool:
    """A terminal, or a Jupyter kernel's output (where tqdm.auto draws a widget, not lines)."""
    if type(stream).__module__.startswith("ipykernel"):
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


def progress_bar(total: int, desc: str, unit: str = "it", stream: TextIO | None = None) -> Any:
    """A tqdm bar on a terminal, else a :class:`LineProgress` (on stderr unless ``stream`` is given)."""
    stream = sys.stderr if stream is None else stream
    if is_interactive(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream)
    return LineProgress(total, desc, unit, stream)
