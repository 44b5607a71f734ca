"""Smoke test of benchmarks/overrule_demonstrator.py: a tiny run end to end, resumed, and re-reported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import overrule_demonstrator as bench  # noqa: E402


def test_variant_names_set_the_target_period_and_unknown_ones_fail():
    assert bench.variant_spec("q_filter")["settings"] == {"target_update_period": 1000}
    assert bench.variant_spec("q_filter_tau10k")["settings"] == {"target_update_period": 10_000}
    assert bench.variant_spec("faithful_tau250")["settings"] == {"target_update_period": 250}
    assert bench.variant_spec("decay")["agent"] == {"margin_decay_demo_ratio": 1.0}
    with pytest.raises(ValueError, match="unknown variant"):
        bench.variant_spec("qfilter")


def test_quick_run_writes_report_and_a_second_call_reuses_the_finished_runs(tmp_path: Path):
    summary = bench.main(["--quick", "--out-dir", str(tmp_path), "--stem", "smoke"])
    assert set(summary["variants"]) == {"faithful", "q_filter"}
    rows = (tmp_path / "smoke_runs.jsonl").read_text().splitlines()
    assert [json.loads(r)["variant"] for r in rows] == ["references", "faithful", "q_filter"]
    md = (tmp_path / "smoke.md").read_text()
    assert "benchmarks/overrule_demonstrator.py --quick" in md
    assert "| DQfD + Q-filter, τ = 1,000 | 1 |" in md
    assert (tmp_path / "smoke.png").stat().st_size > 10_000
    # Both variants start from the same pretrained agent (the filter is off in pretraining).
    faithful, q_filter = summary["variants"]["faithful"], summary["variants"]["q_filter"]
    assert faithful[0]["return"][0] == q_filter[0]["return"][0]
    # Finished runs are not repeated; --report rebuilds the same tables from the saved runs.
    bench.main(["--quick", "--out-dir", str(tmp_path), "--stem", "smoke"])
    assert len((tmp_path / "smoke_runs.jsonl").read_text().splitlines()) == 3
    bench.main(["--report", "--out-dir", str(tmp_path), "--stem", "smoke"])
    rebuilt = (tmp_path / "smoke.md").read_text()
    assert rebuilt.count("benchmarks/overrule_demonstrator.py --quick") == 2  # both commands listed

    def tables(text: str) -> str:
        return text.split("Budget per run")[1].split("Wall time")[0]

    assert tables(rebuilt) == tables(md)


class _BuiltError(Exception):
    """Raised by the stand-in agent once offline_to_online.run_rl has built its config."""


def _configs_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variants: list[str]) -> dict[str, object]:
    """The DQfDConfig that offline_to_online.run_rl builds for each variant under ``--service-agent``
    (through the real run_rl and run_variant; the agent is stopped at construction)."""
    import offline_to_online as o2o

    import agent

    built: dict[str, object] = {}

    class Recorder:
        def __init__(self, obs_dim: int, n_actions: int, config: object, seed: int) -> None:
            built[variant] = config
            raise _BuiltError

    monkeypatch.setattr(agent, "DQfDAgent", Recorder)
    monkeypatch.setattr(
        o2o, "run_references", lambda seed, s, c: {"seed": seed, "expert": 9.0, "random": 7.0, "oracle": 12.0}
    )
    common = ["--service-agent", "--seeds", "0", "--pretrain-steps", "2000", "--out-dir", str(tmp_path)]
    for variant in variants:
        with pytest.raises(_BuiltError):
            bench.main([*common, "--stem", "configs", "--variants", variant])
    return built


def test_service_agent_pdd_arm_has_the_dqfd_arms_network_and_budget_and_dqfd_is_the_services(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    import dataclasses

    from service.learning.agents import agent_config
    from service.settings import Settings

    built = _configs_built(monkeypatch, tmp_path, ["q_filter", "pdd"])
    dqfd, pdd = (dataclasses.asdict(built[v]) for v in ("q_filter", "pdd"))
    # PDD DQN differs from the DQfD arm only in the margin loss (off: λ2 = 0, and so no Q-filter either).
    assert {k for k in dqfd if dqfd[k] != pdd[k]} == {"lambda_margin", "q_filter"}
    assert (pdd["lambda_margin"], pdd["q_filter"], dqfd["q_filter"]) == (0.0, False, True)
    assert (pdd["hidden_sizes"], pdd["batch_size"], pdd["learning_rate"]) == ((256, 256), 32, 1e-4)
    assert (pdd["target_update_period"], pdd["priority_beta_anneal_updates"]) == (1000, 1_000_000)
    # The DQfD arm is the service's default agent (DQFD_PRETRAIN_STEPS = 2000), except the replay size
    # (the benchmark's holds the whole run), the pretraining count (passed to pretrain() by both) and the
    # input bounds (no simulator state or reward comes near them).
    service = dataclasses.asdict(agent_config(Settings(_env_file=None)))
    apart = {"replay_capacity", "pretrain_steps", "max_abs_state", "max_abs_reward"}
    assert {k for k in service if service[k] != dqfd[k]} <= apart
