"""Smoke test of the paper reproduction (benchmarks/paper.py --quick) and of its statistics."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from paper import cli  # noqa: E402
from paper.demonstrators import demonstrations  # noqa: E402
from paper.settings import BUDGETS, Budget, dqfd_config, uses_demonstrations  # noqa: E402
from paper.stats import bootstrap_ci, claim_line, claims, curve, metrics  # noqa: E402


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
        "DQfD + Q-filter beats PDD DQN over the early window",
        "DQfD + Q-filter starts higher than PDD DQN",
        "DQfD + Q-filter ends at least as high as imitation",
        "Removing the margin loss lowers the start of DQfD + Q-filter",
        "DQfD + Q-filter exceeds the demonstrator's mean on at least one task",
    ):
        assert claim in report["claims_text"]
        assert claim in text
    lines = report["claims_text"].splitlines()
    assert all(line.startswith(("CLAIM [PASS]", "CLAIM [FAIL]")) for line in lines)
    assert len(lines) == 2 * 5  # 4 claims on the one task + the demonstrator claim, for each DQfD variant
    arms = report["table"]["CartPole-v1"]
    assert set(arms) == {"dqfd", "q_filter", "pdd_dqn", "imitation", "no_margin", "no_nstep"}
    for summary in arms.values():
        assert summary["seeds"] == 2
        for key in ("start", "early", "final"):
            assert all(math.isfinite(v) for v in summary[key])
    assert (tmp_path / "smoke_cartpole.png").stat().st_size > 10_000
    notes = tmp_path / "notes.md"
    notes.write_text("The runs were made on one tree.\n")
    rerender = ["--rerender", str(tmp_path / "smoke_raw.json"), "--out", str(tmp_path), "--name", "re"]
    again = cli.main([*rerender, "--notes", str(notes)])
    assert again["claims_text"] == report["claims_text"]
    rebuilt = (tmp_path / "re.md").read_text()
    assert f"python benchmarks/paper.py --rerender {tmp_path / 'smoke_raw.json'}" in rebuilt
    assert "## Notes\n\nThe runs were made on one tree.\n" in rebuilt

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


def _summary(start: float, early: float, final: float) -> dict[str, object]:
    """A :func:`paper.stats.summarize` row with a degenerate interval (only the means matter to claims)."""
    return {"seeds": 5, "start": (start, start, start), "early": (early, early, early), "final": (final,) * 3}


def test_q_filter_claims_use_the_q_filter_arms_own_numbers() -> None:
    """Hand-made table where the two variants disagree on every claim: each variant's rows must follow its
    own numbers, and the faithful DQfD's rows keep the wording of the results files written before."""
    table = {
        "Acrobot-v1": {
            "dqfd": _summary(start=-85.0, early=-90.0, final=-106.0),
            "q_filter": _summary(start=-300.0, early=-400.0, final=-80.0),
            "pdd_dqn": _summary(start=-250.0, early=-350.0, final=-100.0),
            "imitation": _summary(start=-83.0, early=-83.0, final=-83.0),
            "no_margin": _summary(start=-200.0, early=-300.0, final=-90.0),
        },
        "CartPole-v1": {  # PDD DQN did not run here: no claims on this task
            "q_filter": _summary(start=500.0, early=500.0, final=500.0),
        },
    }
    rows = claims(table, {"Acrobot-v1": -84.0, "CartPole-v1": 190.0})
    by_variant = {v: [r for r in rows if r["variant"] == v] for v in ("dqfd", "q_filter")}
    assert [r["pass"] for r in by_variant["dqfd"]] == [True, True, False, True, False]
    assert [r["pass"] for r in by_variant["q_filter"]] == [False, False, True, False, True]
    assert [claim_line(r) for r in by_variant["dqfd"]] == [
        "CLAIM [PASS] Acrobot-v1: DQfD beats PDD DQN over the early window (DQfD -90.0 vs PDD DQN -350.0)",
        "CLAIM [PASS] Acrobot-v1: DQfD starts higher than PDD DQN (DQfD -85.0 vs PDD DQN -250.0)",
        "CLAIM [FAIL] Acrobot-v1: DQfD ends at least as high as imitation (DQfD -106.0 vs imitation -83.0)",
        "CLAIM [PASS] Acrobot-v1: Removing the margin loss lowers the start (λ2=0 -200.0 vs DQfD -85.0)",
        "CLAIM [FAIL] DQfD exceeds the demonstrator's mean on at least one task "
        "(final DQfD vs demonstrator: Acrobot-v1: -106.0 vs -84.0)",
    ]
    assert [claim_line(r) for r in by_variant["q_filter"]] == [
        "CLAIM [FAIL] Acrobot-v1: DQfD + Q-filter beats PDD DQN over the early window "
        "(DQfD + Q-filter -400.0 vs PDD DQN -350.0)",
        "CLAIM [FAIL] Acrobot-v1: DQfD + Q-filter starts higher than PDD DQN "
        "(DQfD + Q-filter -300.0 vs PDD DQN -250.0)",
        "CLAIM [PASS] Acrobot-v1: DQfD + Q-filter ends at least as high as imitation "
        "(DQfD + Q-filter -80.0 vs imitation -83.0)",
        "CLAIM [FAIL] Acrobot-v1: Removing the margin loss lowers the start of DQfD + Q-filter "
        "(λ2=0 -200.0 vs DQfD + Q-filter -300.0)",
        "CLAIM [PASS] DQfD + Q-filter exceeds the demonstrator's mean on at least one task "
        "(final DQfD + Q-filter vs demonstrator: Acrobot-v1: -80.0 vs -84.0)",
    ]
    # Without the faithful arm only the Q-filter's claims remain, and the other way round.
    only_q = claims(
        {"Acrobot-v1": {k: v for k, v in table["Acrobot-v1"].items() if k != "dqfd"}}, {"Acrobot-v1": -84.0}
    )
    assert [r["variant"] for r in only_q] == ["q_filter"] * 5


def test_q_filter_arm_is_dqfd_with_the_q_filter_only() -> None:
    """The arm differs from the faithful DQfD in the one switch the service turns on, and gets the demos."""
    faithful, filtered = dqfd_config("dqfd", 1_000), dqfd_config("q_filter", 1_000)
    assert filtered.q_filter and not faithful.q_filter
    assert replace(filtered, q_filter=False) == faithful
    assert uses_demonstrations("q_filter")
