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


# ------------------------------------------------------------------------------------ feature network
def _feature_adapter(seed: int = 0) -> tuple[object, object]:
    """The adapter over the simulator's catalogue with the service's DQfDConfig (small replay), and the
    simulator config."""
    import dataclasses

    import feature_adapter

    from service.learning.agents import agent_config
    from simulator import SimulatorConfig

    sim = SimulatorConfig()
    config = dataclasses.replace(agent_config(feature_adapter.service_settings()), replay_capacity=1000)
    return feature_adapter.build_feature_agent(sim, sim.obs_dim, config, seed), sim


def test_feature_adapter_is_the_services_item_agent_over_z_scored_simulator_items():
    import numpy as np

    from agent.item_dqfd import ItemDQfDAgent
    from service.learning import item_agents
    from simulator import generate_catalogue

    adapter, sim = _feature_adapter()
    item_agent = adapter.agent
    assert isinstance(item_agent, ItemDQfDAgent) and len(item_agent.items) == sim.n_items == 100
    # The service's network for 100 items: ItemNetworkConfig's defaults, sampled loss items past 64.
    expected = item_agents.network_config(__import__("feature_adapter").service_settings(), 100)
    assert item_agent.network_config == expected and expected.loss_items == 64
    # Item features: items.csv's numeric columns (appeal, quality and the topic mix topic_0..topic_4,
    # rounded to 6 decimals; the dominant-topic label "t3" is text), each z-scored with the catalogue's
    # mean and population std, in name order.
    c = generate_catalogue(sim)
    raw = np.column_stack([c.appeal, c.quality, np.round(c.topics, 6)])
    z = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    np.testing.assert_allclose(item_agent.items.features.numpy(), z, rtol=1e-5, atol=1e-6)
    topic_columns = [f"topic_{t}" for t in range(sim.n_topics)]
    assert [col["name"] for col in item_agent.metadata["item_features"]["columns"]] == [
        "appeal",
        "quality",
        *topic_columns,
    ]


def test_feature_adapter_q_values_are_the_item_agents_scores_with_disallowed_items_minus_inf():
    import numpy as np

    adapter, sim = _feature_adapter()
    rng = np.random.default_rng(0)
    states = rng.standard_normal((3, sim.obs_dim)).astype(np.float32)
    masks = rng.random((3, sim.n_items)) < 0.3
    masks[:, 7] = True
    scores = adapter.agent.q_values(states, np.arange(sim.n_items))
    q = adapter.q_values(states, masks)
    assert q.shape == (3, 100) and q.dtype == np.float32
    np.testing.assert_array_equal(q[masks], scores[masks])
    assert np.all(np.isneginf(q[~masks]))
    np.testing.assert_array_equal(adapter.q_values(states), scores)  # no mask: every item
    # The greedy pick is the best allowed item by the item agent's own scores.
    best = [int(np.flatnonzero(m)[np.argmax(s[m])]) for s, m in zip(scores, masks, strict=True)]
    assert np.argmax(q, axis=1).tolist() == best


def test_feature_adapter_observe_stores_each_states_allowed_set():
    import numpy as np

    adapter, sim = _feature_adapter()
    s0, s1, s2 = (np.full(sim.obs_dim, v, dtype=np.float32) for v in (0.1, 0.2, 0.3))
    m0 = np.zeros(100, dtype=bool)
    m0[[3, 5, 9]] = True  # few allowed: stored as candidates
    m1 = np.ones(100, dtype=bool)
    m1[[5, 40]] = False  # few excluded: stored as the catalogue less exclusions
    m2 = np.zeros(100, dtype=bool)
    adapter.observe(s0, 5, 1.0, s1, False, mask=m0, next_mask=m1, truncated=False)
    adapter.observe(s1, 7, 0.0, s2, True, mask=m1, next_mask=m2, truncated=False)
    assert adapter.n_agent_transitions == 2
    stored = adapter.agent.replay.agent_allowed
    assert stored[0].items().tolist() == [3, 5, 9] and stored[0].candidates == (3, 5, 9)
    assert stored[1].items().tolist() == [i for i in range(100) if i not in (5, 40)]
    assert stored[1].exclusions == frozenset({5, 40})
    np.testing.assert_array_equal(adapter.agent.replay.agent.actions[:2], [5, 7])  # s0's and s1's items


def test_quick_feature_run_writes_feature_rows_and_a_stem_never_mixes_networks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    import offline_to_online as o2o

    tiny = o2o.Settings(
        demo_sessions=8,
        pretrain_steps=5,
        online_sessions=8,
        eval_sessions=3,
        parallel_envs=4,
        pdd_epsilon_sessions=2,
        quick=True,
    )
    monkeypatch.setattr(o2o, "quick_settings", lambda: tiny)
    common = ["--quick", "--service-agent", "--out-dir", str(tmp_path), "--stem", "feat"]
    summary = bench.main([*common, "--network", "feature"])
    assert set(summary["variants"]) == {"faithful", "q_filter"}
    rows = [json.loads(r) for r in (tmp_path / "feat_runs.jsonl").read_text().splitlines()]
    assert [(r["variant"], r.get("network")) for r in rows] == [
        ("references", None),
        ("faithful", "feature"),
        ("q_filter", "feature"),
    ]
    assert [p["sessions"] for p in rows[1]["curve"]] == [0, 8]
    assert rows[1]["curve"][0]["updates"] == 0  # only pretraining before the first checkpoint
    assert rows[1]["curve"][1]["updates"] > 0  # online updates through the adapter
    meta = json.loads((tmp_path / "feat_meta.json").read_text())
    assert (meta["network"], meta["item_network"]["loss_items"], meta["n_items"]) == ("feature", 64, 100)
    assert "the service's feature network" in (tmp_path / "feat.md").read_text()
    with pytest.raises(SystemExit, match="holds feature network runs"):
        bench.main(common)  # the fixed head into the feature stem
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--network", "feature", "--out-dir", str(tmp_path)])  # needs --service-agent


def test_feature_pdd_is_the_same_feature_network_without_margin_or_demonstrations(
    monkeypatch: pytest.MonkeyPatch,
):
    import feature_adapter
    import offline_to_online as o2o

    from agent.item_dqfd import ItemDQfDAgent

    built: dict[str, object] = {}
    factory = feature_adapter.feature_factory

    def recording(sim_config: object) -> object:
        make = factory(sim_config)

        def build(*args: object, **kwargs: object) -> object:
            built[variant] = make(*args, **kwargs)
            return built[variant]

        return build

    monkeypatch.setattr(feature_adapter, "feature_factory", recording)
    tiny = o2o.Settings(
        demo_sessions=4, pretrain_steps=3, online_sessions=1, checkpoints=(0,), eval_sessions=1
    )
    tiny.hidden_sizes, tiny.batch_size, tiny.learning_rate, tiny.train_every = (256, 256), 32, 1e-4, 1
    for variant in ("q_filter", "pdd"):
        row = bench.run_variant(variant, 0, tiny, bench.SERVICE_AGENT, network="feature")
        assert row["network"] == "feature"
    dqfd, pdd = built["q_filter"].agent, built["pdd"].agent
    assert isinstance(pdd, ItemDQfDAgent) and pdd.network_config == dqfd.network_config
    assert (pdd.n_demonstrations, pdd.n_pretrain_updates, pdd.config.lambda_margin) == (0, 0, 0.0)
    assert dqfd.n_demonstrations > 0 and dqfd.n_pretrain_updates == 3 and dqfd.config.q_filter
    assert dqfd.config.lambda_margin == 1.0  # offline_to_online's online margin
