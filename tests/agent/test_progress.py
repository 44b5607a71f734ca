"""pretrain(progress=True): a tqdm bar on a terminal, a few plain lines in a log file or a pipe."""

import io

import numpy as np
from tqdm.auto import tqdm

from agent import DQfDAgent, DQfDConfig
from agent.progress import LineProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def small_agent() -> DQfDAgent:
    agent = DQfDAgent(3, 4, DQfDConfig(hidden_sizes=(8,), batch_size=4, n_step=2), seed=0)
    rng = np.random.default_rng(0)
    agent.add_demonstrations(
        rng.normal(size=(20, 3)).astype(np.float32),
        rng.integers(0, 4, 20),
        rng.normal(size=20),
        np.arange(20) % 5 == 4,
    )
    return agent


def test_pretrain_progress_in_a_log_writes_a_line_per_tenth_not_per_refresh(monkeypatch):
    log = io.StringIO()  # stderr redirected to a file: not a terminal
    monkeypatch.setattr("sys.stderr", log)
    small_agent().pretrain(1000, progress=True)
    lines = log.getvalue().splitlines()
    assert "\r" not in "".join(lines)
    assert len(lines) == 10, lines  # 100, 200, ..., 1,000 (the last also on close, not twice)
    assert lines[0].startswith("pretraining: 100/1,000 updates (10%), ")
    assert lines[-1].startswith("pretraining: 1,000/1,000 updates (100%), ")
    assert "updates/s" in lines[-1] and "loss=" in lines[-1] and "j_e=" in lines[-1]


def test_line_progress_also_writes_after_30_seconds_without_a_line_and_at_close():
    stream, clock = io.StringIO(), Clock()
    bar = LineProgress(1000, "pretraining", "update", stream, clock=clock)
    for _ in range(40):
        clock.now += 1.0  # slow: 40 updates in 40 s, far from the first tenth
        bar.update()
    bar.set_postfix(loss="0.5000")
    bar.update(5)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "pretraining: 30/1,000 updates (3%), 30.0 s, 1 updates/s",
        "pretraining: 45/1,000 updates (4%), 40.0 s, 1 updates/s, loss=0.5000",
    ]


def test_progress_bar_is_tqdm_on_a_terminal_and_lines_elsewhere():
    terminal = progress_bar(10, "pretraining", "update", stream=Terminal())
    try:
        assert isinstance(terminal, tqdm)
    finally:
        terminal.close()
    assert isinstance(progress_bar(10, "pretraining", "update", stream=io.StringIO()), LineProgress)
