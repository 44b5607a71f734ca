"""The sensitivity study of the service defaults (benchmarks/sensitivity.py): its grid and a smoke run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import sensitivity  # noqa: E402

from service.settings import derived_target_update_period  # noqa: E402

SETTINGS = ("target_period", "learning_rate", "pretrain_steps", "width", "beta_anneal")


def test_thirteen_configs_each_moving_one_setting_from_the_service_default() -> None:
    configs = sensitivity.study_configs()
    default = configs[0]
    assert len(configs) == 13
    assert (default.name, default.setting) == ("default", None)
    assert (
        default.target_period,
        default.learning_rate,
        default.pretrain_steps,
        default.width,
        default.beta_anneal,
    ) == (1000, 1e-4, 2000, 256, 1_000_000)
    moved = {}
    for c in configs[1:]:
        changed = {s for s in SETTINGS if c.value(s) != default.value(s)}
        # a pretraining budget also moves the target period, by the service's own rule
        assert changed - {"target_period"} == {c.setting} or changed == {c.setting}
        if c.setting == "pretrain_steps":
            assert c.target_period == derived_target_update_period(c.pretrain_steps)
        moved.setdefault(c.setting, []).append(c.value(c.setting))
    assert moved == {
        "target_period": [250, 4000],
        "learning_rate": [3e-5, 3e-4],
        "pretrain_steps": [1000, 4000, 10_000, 20_000],
        "width": [128, 512],
        "beta_anneal": [10_000, 100_000],
    }
    assert [c.target_period for c in configs if c.setting == "pretrain_steps"] == [500, 1000, 1000, 1000]
    assert len({c.name for c in configs}) == 13


def test_service_agent_config_is_what_the_service_builds() -> None:
    by_name = {c.name: c for c in sensitivity.study_configs()}
    cfg = sensitivity.service_agent_config(by_name["pretrain_steps_1000"], replay_capacity=100_000)
    assert (cfg.target_update_period, cfg.pretrain_steps, cfg.replay_capacity) == (500, 1000, 100_000)
    assert (cfg.batch_size, cfg.q_filter, cfg.priority_beta_anneal_updates) == (32, True, 1_000_000)
    wide = sensitivity.service_agent_config(by_name["width_512"])
    assert (wide.hidden_sizes, wide.learning_rate, wide.target_update_period) == ((512, 512), 1e-4, 1000)
    beta = sensitivity.service_agent_config(by_name["beta_anneal_10000"])
    assert (beta.priority_beta_anneal_updates, beta.hidden_sizes, beta.target_update_period) == (
        10_000,
        (256, 256),
        1000,
    )


def test_verdicts_follow_the_stated_criterion() -> None:
    tol = 0.1

    def configs(low: tuple[float, float], high: tuple[float, float]) -> dict:
        return {"default": {}, "width_128": {"end_diff": low}, "width_512": {"end_diff": high}}

    assert sensitivity.verdict(configs((0.05, 0.2), (-0.09, 0.2)), "width", "end", tol) == "flat"
    assert sensitivity.verdict(configs((-0.3, 0.1), (0.0, 0.1)), "width", "end", tol) == "default better"
    assert sensitivity.verdict(configs((0.3, 0.1), (0.0, 0.1)), "width", "end", tol) == "128 better"
    assert sensitivity.verdict(configs((0.3, 0.4), (0.0, 0.1)), "width", "end", tol) == "unclear"
    assert sensitivity.verdict(configs((0.0, 0.1), (0.0, 0.1)), "learning_rate", "end", tol) == "–"


def test_settings_and_configs_select_around_the_default() -> None:
    args = sensitivity.parse_args(
        ["--settings", "width", "learning_rate", "--configs", "width_512", "width_128"]
    )
    assert sensitivity.selected_configs(args) == ["default", "width_128", "width_512"]
    assert len(sensitivity.selected_configs(sensitivity.parse_args([]))) == 13


@pytest.mark.slow
def test_quick_run_writes_rows_table_and_plot(tmp_path: Path) -> None:
    summary = sensitivity.main(["--quick", "--out-dir", str(tmp_path)])
    rows = [json.loads(line) for line in (tmp_path / "sensitivity_quick_runs.jsonl").read_text().splitlines()]
    runs = {(r["problem"], r["config"], r["seed"]) for r in rows}
    assert runs == {
        (problem, config, seed)
        for problem, seed in (("sim100", 0), ("CartPole-v1", 0))
        for config in ("default", "learning_rate_0.0003")
    } | {("sim100", "references", 0), ("CartPole-v1", "references", None)}
    for r in rows:
        if r["config"] != "references":
            assert r["agent_config"]["pretrain_steps"] == sensitivity.QUICK_PRETRAIN
            assert r["agent_config"]["q_filter"] is True
            assert r["agent_config"]["target_update_period"] == derived_target_update_period(100)
    assert {r["agent_config"]["learning_rate"] for r in rows if "agent_config" in r} == {1e-4, 3e-4}
    assert set(summary) == {"sim100", "CartPole-v1"}
    assert summary["CartPole-v1"]["tolerance"] == sensitivity.FLAT_FRACTION
    report = (tmp_path / "sensitivity_quick.md").read_text()
    assert ".venv/bin/python benchmarks/sensitivity.py --quick" in report
    assert "| configuration | seeds | pretrained | Δ pretrained | end | Δ end |" in report
    assert "| learning_rate_0.0003 | 1 |" in report
    cpu_hours = sum(r["cpu_seconds"] for r in rows) / 3600
    assert (
        f"Compute: {cpu_hours:.2f} CPU core-hours (process time summed over the {len(rows)} runs)" in report
    )
    assert (tmp_path / "sensitivity_quick.png").stat().st_size > 0
    assert json.loads((tmp_path / "sensitivity_quick.json").read_text())["quick"] is True
    # a rerun finds every run done and only rebuilds the report
    sensitivity.main(["--quick", "--out-dir", str(tmp_path)])
    assert len((tmp_path / "sensitivity_quick_runs.jsonl").read_text().splitlines()) == len(rows)


def test_worker_pool_returns_the_rows_of_its_jobs() -> None:
    """--workers > 1 runs jobs in spawned processes (one torch thread each); a cheap job per worker."""
    job = {"problem": "CartPole-v1", "quick": True, "budget": 200, "env_steps": None, "config": "references"}
    rows = list(sensitivity.execute([{**job, "seed": None}, {**job, "seed": None}], 2, sensitivity.run_job))
    assert len(rows) == 2
    assert rows[0]["random"] == rows[1]["random"]  # seeded: the same episodes give the same returns
    assert rows[0]["demonstrator"] > rows[0]["random"]
