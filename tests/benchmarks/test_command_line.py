"""benchmarks/command_line.py: a report's command says ``nice -n N`` exactly when the run was niced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from command_line import command_line  # noqa: E402

PRINT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from command_line import command_line; "
    "print(command_line('b.py', ['--x', 'a b']))"
)


def test_a_process_that_is_not_niced_records_no_nice_prefix() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PRINT, str(BENCHMARKS)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ".venv/bin/python b.py --x 'a b'"


def test_a_niced_process_records_its_own_level() -> None:
    out = subprocess.run(
        ["nice", "-n", "7", sys.executable, "-c", PRINT, str(BENCHMARKS)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "nice -n 7 .venv/bin/python b.py --x 'a b'"


def test_arguments_are_shell_quoted_and_the_interpreter_can_be_named() -> None:
    assert command_line("benchmarks/x.py", ["--seeds", "0", "1", "--stem", "a;b"], python="python").endswith(
        "python benchmarks/x.py --seeds 0 1 --stem 'a;b'"
    )
