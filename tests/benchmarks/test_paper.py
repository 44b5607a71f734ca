"""Smoke test of the paper reproduction (benchmarks/paper.py --quick) and of its statistics."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from paper import cli  # noqa: E402
from paper.demonstrators import demonstrations  # noqa: E402
from paper.settings import BUDGETS, Budget  # noqa: E402
from paper.stats import bootstrap_ci, curve, metrics  # noqa: E402


def test_quick_run_writes_report_with_claim_lines(tmp_path: Path) -> None:
    report = cli.main(["--quick", "--out", str(tmp_path), "--name", "smoke"])
    text = (tmp_path / "smoke.md").read_text()
    assert text.startswith("# DQfD paper reproduction")
    assert "python benchmarks/paper.py --quick" in text
    for claim in (
        "DQfD beats PDD DQN over the early window",
        "DQfD starts higher than PDD DQN",
        "DQfD ends at least as high as imitation",
        "Removing the margin loss lowers the start",
        "DQfD exceeds the demonstrator's mean on at least one task",
    ):
        assert claim in report["claims_text"]
        assert claim in text
    lines = report["claims_text"].splitlines()
    assert all(line.startswith(("CLAIM [PASS]", "CLAIM [FAIL]")) for line in lines)
    arms = report["table"]["CartPole-v1"]
    assert set(arms) == {"dqfd", "pdd_dqn", "imitation", "no_margin", "no_nstep"}
    for summary in arms.values():
        assert summary["seeds"] == 2
        for key in ("start", "early", "final"):
            assert all(math.isfinite(v) for v in summary[key])
    assert (tmp_path / "smoke_cartpole.png").stat().st_size > 10_000
    again = cli.main(["--rerender", str(tmp_path / "smoke_raw.json"), "--out", str(tmp_path), "--name", "re"])
    assert again["claims_text"] == report["claims_text"]

    # --resume keeps the finished runs of a stopped run and does only the missing ones.
    raw_path = tmp_path / "smoke_raw.json"
    raw = json.loads(raw_path.read_text())
    kept = [r for r in raw["runs"] if not (r["arm"] == "dqfd" and r["seed"] == 1)]
    assert len(kept) == len(raw["runs"]) - 1
    raw_path.write_text(json.dumps({**raw, "runs": kept}))
    cli.main(["--quick", "--out", str(tmp_path), "--name", "smoke", "--resume"])
    resumed = json.loads(raw_path.read_text())
    assert len(resumed["runs"]) == len(raw["runs"])
    assert resumed["runs"][: len(kept)] == kept  # the kept runs are untouched, the missing one appended
    assert (resumed["runs"][-1]["arm"], resumed["runs"][-1]["seed"]) == ("dqfd", 1)


def test_demonstrations_are_reproducible_and_keep_truncated_final_state() -> None:
    a = demonstrations("MountainCar-v0", 2)
    b = demonstrations("MountainCar-v0", 2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.states, y.states)
        np.testing.assert_array_equal(x.actions, y.actions)
        assert x.terminated  # the scripted controller reaches the flag within the time limit
    assert all(-200 < ep.ret < -90 for ep in a)


def test_bootstrap_ci_and_curve_metrics() -> None:
    mean, low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and 1.0 <= low < mean < high <= 4.0
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    budget = Budget(env_steps=100, pretrain_updates=0, early_steps=50)
    result = {
        "start_eval": [10.0],
        "final_eval": [40.0],
        "episodes": [(30, 20.0), (60, 30.0), (100, 40.0)],
        "updates": 100,
        "pretrain_seconds": 0.0,
        "online_seconds": 1.0,
    }
    grid, values = curve(result, budget)
    assert grid[0] == 0 and grid[-1] == 100 and values[0] == 10.0 and values[-1] == 40.0
    m = metrics(result, budget, demo_mean=25.0)
    assert m["start"] == 10.0 and m["final"] == 40.0 and 20.0 <= m["early"] <= 30.0
    assert m["steps_to_demo"] == 60.0  # running mean of the last five episodes: 20, then 25 at step 60
    assert set(BUDGETS) == {"CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3"}
