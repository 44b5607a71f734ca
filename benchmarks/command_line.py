"""The command line a benchmark report records: the script and its arguments as they were given, with the
``nice`` level the process ran at (so a report says ``nice -n 10`` only when the run was niced)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence


def niceness() -> int:
    """This process's nice value (0 when it was not niced)."""
    return os.nice(0)


def command_line(script: str, argv: Sequence[str], python: str = ".venv/bin/python") -> str:
    """``[nice -n N ]<python> <script> <argv...>``, each argument shell-quoted."""
    level = niceness()
    prefix = [f"nice -n {level}"] if level else []
    return " ".join([*prefix, python, script, *map(shlex.quote, argv)])
