"""Smoke test of benchmarks/churn.py: the --quick run end to end, its files and the sanity of its numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import churn as bench  # noqa: E402

from simulator import SimulatorConfig  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("churn")
    lines = bench.main(["--quick", "--out-dir", str(out), "--stem", "smoke"])
    return out, lines


def test_quick_run_writes_the_three_files(quick_run: tuple[Path, list[str]]) -> None:
    out, lines = quick_run
    md = (out / "smoke.md").read_text()
    assert ".venv/bin/python benchmarks/churn.py --quick" in md
    assert "## Targets" in md and "## New items on their first day" in md
    assert (out / "smoke.png").stat().st_size > 10_000
    data = json.loads((out / "smoke.json").read_text())
    assert data["command"].endswith("--quick --out-dir " + str(out) + " --stem smoke")
    assert data["settings"]["quick"] is True and data["target_lines"] == lines
    expected_arms = list(bench.ARMS) if bench.feature_available() is None else ["expert", "oracle", "fixed"]
    assert data["summary"]["arms"] == expected_arms
    s = bench.quick_settings()
    assert sorted((r["arm"], r["seed"]) for r in data["runs"]) == sorted(
        (a, k) for a in expected_arms for k in range(s.seeds)
    )
    for line in lines:
        assert line.startswith(("PASS", "FAIL", "SKIPPED"))


def test_quick_run_numbers_are_sane(quick_run: tuple[Path, list[str]]) -> None:
    out, _ = quick_run
    data = json.loads((out / "smoke.json").read_text())
    s = bench.quick_settings()
    curves = data["summary"]["curves"]
    for arm, points in curves.items():
        assert [p["day"] for p in points] == list(range(1, s.days + 1))
        for p in points:
            assert 0.0 < p["return"][0] < 50.0  # clicks per session, sessions at most 50 steps
            for key in ("new_rec_share", "new_return_share", "new_items_served", "unlogged_rec_share"):
                assert 0.0 <= p[key][0] <= 1.0, (arm, key)
            assert p["ratio"][0] > 0
    for p in curves["expert"]:
        assert p["ratio"] == [1.0, 0.0]
        # The expert knows only logged items, the fixed head only the items of its last retrain.
        assert p["new_rec_share"][0] == 0.0 and p["new_items_served"][0] == 0.0
    for p in curves["fixed"]:
        assert p["new_rec_share"][0] == 0.0
    # On day 1 both know only day 0's items (the logs' catalogue); the oracle also serves newer ones.
    assert curves["expert"][0]["unlogged_rec_share"][0] == curves["fixed"][0]["unlogged_rec_share"][0] == 0.0
    oracle = np.mean([p["return"][0] for p in curves["oracle"]])
    expert = np.mean([p["return"][0] for p in curves["expert"]])
    assert oracle > 1.1 * expert
    assert max(p["new_rec_share"][0] for p in curves["oracle"]) > 0  # new items are worth serving
    # Same users for every arm: each day has sessions_per_day sessions; per-session steps add up.
    for run in data["runs"]:
        for day in run["days"]:
            assert len(day["returns"]) == len(day["steps"]) == s.sessions_per_day
            assert all(n <= t for n, t in zip(day["new_steps"], day["steps"], strict=True))
            assert set(day["served_new"]) <= set(day["new_items"])


def test_rerender_rebuilds_the_same_report(quick_run: tuple[Path, list[str]], tmp_path: Path) -> None:
    out, lines = quick_run
    again = bench.main(["--rerender", str(out / "smoke.json"), "--out-dir", str(tmp_path), "--stem", "smoke"])
    assert again == lines
    assert (tmp_path / "smoke.md").read_text() == (out / "smoke.md").read_text()


def test_arms_are_deterministic_per_seed() -> None:
    s = bench.quick_settings()
    s.days, s.sessions_per_day = 2, 6
    config = SimulatorConfig()
    for arm in ("expert", "fixed"):
        a = bench.run_arm(arm, 1, s, config)
        b = bench.run_arm(arm, 1, s, config)
        assert [d["returns"] for d in a["days"]] == [d["returns"] for d in b["days"]]


def test_feature_arm_is_skipped_with_a_message_when_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bench, "feature_available", lambda: "agent.item_dqfd is missing (test)")
    lines = bench.main(
        ["--quick", "--arms", "expert", "oracle", "feature", "--seeds", "1", "--out-dir", str(tmp_path)]
    )
    assert lines == ["SKIPPED: the feature arm did not run, so the issue's targets were not measured"]
    md = (tmp_path / "churn_quick.md").read_text()
    assert "Note: agent.item_dqfd is missing (test)." in md


def test_widen_pads_with_false() -> None:
    wide = bench.widen(np.array([[True, False], [False, True]]), 4)
    assert wide.tolist() == [[True, False, False, False], [False, True, False, False]]


def test_service_agent_builds_the_services_configs() -> None:
    from agent.item_dqfd import ItemNetworkConfig
    from service.learning import agents, item_agents
    from service.settings import Settings as ServiceSettings

    service = ServiceSettings(_env_file=None)
    s, _ = bench.parse_args(["--service-agent", "--days", "2"])
    assert s.service_agent and s.days == 2
    # The fixed head's and the feature network's DQfDConfig: the service's, whatever the run's budget.
    assert bench._agent_config(s, 123) == agents.agent_config(service)
    config = bench._agent_config(s, 123)
    assert (config.hidden_sizes, config.batch_size, config.learning_rate) == ((256, 256), 32, 1e-4)
    assert config.q_filter is True and config.target_update_period == 1000  # min(1000, 20_000 // 2)
    # The item network: the service's rule, exact up to 64 items, 64 sampled above; no learned embedding.
    config_100, network_100, updates = bench.service_agent_configs(100)
    assert config_100 == config and network_100 == item_agents.network_config(service, 100)
    assert network_100 == ItemNetworkConfig(loss_items=64)
    assert bench.service_agent_configs(64)[1] == ItemNetworkConfig(loss_items=None)
    # One update per online transition, and the report's agent fields are the service's.
    assert updates == service.updates_per_transition == 1
    assert (s.train_every, s.updates_per_step, s.pretrain_steps) == (1, 1, 20_000)  # DQFD_PRETRAIN_STEPS
    assert (s.hidden_sizes, s.batch_size, s.embedding_dim, s.loss_items) == ((256, 256), 32, 64, 64)
    # Without the flag, offline_to_online.py's settings.
    plain, _ = bench.parse_args([])
    assert not plain.service_agent and bench._agent_config(plain, 10).batch_size == 64
