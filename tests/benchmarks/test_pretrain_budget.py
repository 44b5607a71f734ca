"""The pretraining-budget benchmark (benchmarks/pretrain_budget.py): its staged pretraining, its summary
arithmetic and a smoke run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import pretrain_budget  # noqa: E402


class _CountingAgent:
    """Stands in for DQfDAgent: counts pretraining updates; Q prefers action (updates // 10) % 2."""

    def __init__(self) -> None:
        self.updates = 0

    def pretrain(self, steps: int) -> dict:
        self.updates += steps
        return {"final": {"j_e": 1.0 / self.updates, "j_dq": 2.0}}

    def q_values(self, states: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        q = np.zeros((len(states), 2), dtype=np.float32)
        q[:, (self.updates // 10) % 2] = float(self.updates)
        return q


def test_stages_pretrain_cumulatively_and_measure_agreement_and_mean_q() -> None:
    agent = _CountingAgent()
    actions = np.array([1, 1, 0, 1])  # three of four demonstrated actions are 1
    returns = iter([5.0, 7.0])
    points = pretrain_budget._stages(agent, (10, 20), lambda: next(returns), np.zeros((4, 3)), actions, None)
    assert agent.updates == 20  # 10, then 10 more: stages, not restarts
    assert [p["updates"] for p in points] == [10, 20]
    assert [p["return"] for p in points] == [5.0, 7.0]
    # after 10 updates the greedy action is 1 (agrees on 3 of 4); after 20 it is 0 (1 of 4)
    assert [p["agreement"] for p in points] == [0.75, 0.25]
    assert [p["mean_q"] for p in points] == [10.0, 20.0]  # max_a Q, averaged over the states
    assert [p["j_e"] for p in points] == [0.1, 0.05]


def _rows() -> list[dict]:
    def run(problem: str, seed: int | None, returns: list[float]) -> dict:
        points = [
            {
                "updates": u,
                "return": r,
                "agreement": 0.5,
                "mean_q": 1.0,
                "j_e": 0.2,
                "pretrain_cpu_seconds": 1.0,
            }
            for u, r in zip((500, 2000, 4000), returns, strict=True)
        ]
        return {"problem": problem, "config": "default", "seed": seed, "points": points}

    return [
        {
            "problem": "MountainCar-v0",
            "config": "references",
            "seed": None,
            "demonstrator": -100.0,
            "random": -200.0,
        },
        run("MountainCar-v0", 0, [-200.0, -150.0, -104.0]),
        run("MountainCar-v0", 1, [-200.0, -130.0, -106.0]),
        {
            "problem": "sim100",
            "config": "references",
            "seed": 0,
            "expert": 10.0,
            "random": 6.0,
            "oracle": 12.0,
        },
        {
            "problem": "sim100",
            "config": "references",
            "seed": 1,
            "expert": 8.0,
            "random": 6.0,
            "oracle": 12.0,
        },
        run("sim100", 0, [9.0, 10.0, 9.5]),
        run("sim100", 1, [8.0, 7.6, 8.4]),
    ]


def test_summary_normalises_like_the_sensitivity_study_and_finds_the_reaching_checkpoint() -> None:
    summary = pretrain_budget.summarise(_rows())
    mc = summary["MountainCar-v0"]
    # (return − random) / (demonstrator − random): seeds (0.0, 0.0), (0.5, 0.7), (0.96, 0.94)
    assert [round(mc["points"][u]["metric"][0], 6) for u in (500, 2000, 4000)] == [0.0, 0.6, 0.95]
    assert mc["first_reaching"] == 4000
    assert mc["best"] == 4000
    sim = summary["sim100"]
    # ratio to each seed's own expert: (0.9, 1.0), (1.0, 0.95), (0.95, 1.05)
    assert [round(sim["points"][u]["metric"][0], 6) for u in (500, 2000, 4000)] == [0.95, 0.975, 1.0]
    assert sim["first_reaching"] == 500
    assert sim["best"] == 4000
    assert sim["seeds"] == [0, 1]


def test_quick_run_writes_the_report_and_resumes(tmp_path: Path) -> None:
    summary = pretrain_budget.main(["--quick", "--out-dir", str(tmp_path)])
    assert set(summary) == {"sim100", "CartPole-v1"}
    for problem in summary.values():
        assert list(problem["points"]) == list(pretrain_budget.QUICK_CHECKPOINTS)
        for point in problem["points"].values():
            assert 0.0 <= point["agreement"][0] <= 1.0
    runs = tmp_path / "pretrain_budget_quick_runs.jsonl"
    rows = [json.loads(line) for line in runs.read_text().splitlines()]
    assert sorted(r["config"] for r in rows) == ["default", "default", "references", "references"]
    run = next(r for r in rows if r["problem"] == "CartPole-v1" and r["config"] == "default")
    assert run["agent_config"]["target_update_period"] == 1000  # the service's τ for the largest budget
    assert (tmp_path / "pretrain_budget_quick.png").stat().st_size > 0
    assert "## CartPole-v1" in (tmp_path / "pretrain_budget_quick.md").read_text()
    pretrain_budget.main(["--quick", "--out-dir", str(tmp_path)])  # everything is there: nothing reruns
    assert len(runs.read_text().splitlines()) == len(rows)
    meta = json.loads((tmp_path / "pretrain_budget_quick_meta.json").read_text())
    assert len(meta["commands"]) == 2


def test_feature_network_runs_on_the_simulator_only_and_never_shares_a_stem(tmp_path: Path) -> None:
    out = ["--out-dir", str(tmp_path), "--stem", "mixed"]
    with pytest.raises(SystemExit, match="simulator problems only"):
        pretrain_budget.main(["--network", "feature", "--problems", "sim100", "CartPole-v1", *out])
    # a stem that holds fixed-head runs refuses feature-network runs, before running anything
    row = {"problem": "sim100", "config": "references", "seed": 0, "network": "fixed"}
    (tmp_path / "mixed_runs.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(SystemExit, match="holds runs on the fixed network"):
        pretrain_budget.main(["--network", "feature", "--problems", "sim100", *out])
    assert (tmp_path / "mixed_runs.jsonl").read_text().count("\n") == 1


def test_demonstration_statistics_in_chunks_equal_all_at_once() -> None:
    """The feature network scores every (state, item) pair, so the statistics are computed in row chunks
    (all ~18,000 simulator states × 1,000 items at once ran out of memory); chunking changes nothing."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(7, 5)).astype(np.float32)
    calls = []

    class TableAgent:
        def q_values(self, states: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
            calls.append(len(states))
            return table[states[:, 0].astype(int)]

    states = np.arange(7, dtype=np.float32)[:, None]
    greedy, best = pretrain_budget._greedy_and_max(TableAgent(), states, None, max_pairs=10)
    np.testing.assert_array_equal(greedy, table.argmax(axis=1))
    np.testing.assert_array_equal(best, table.max(axis=1))
    assert calls == [1, 2, 2, 2]  # one row to learn the width, then 10 // 5 = 2 rows (10 pairs) a call
