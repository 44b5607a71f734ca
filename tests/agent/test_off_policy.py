"""agent/off_policy.py: against Open Bandit Pipeline's numbers (the committed fixture made by
benchmarks/ope_reference.py) and against small cases computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.off_policy import (
    bootstrap_means,
    doubly_robust,
    effective_sample_size,
    importance_weights,
    ips,
    session_importance_sampling,
    snips,
)

FIXTURE = Path(__file__).parent / "fixtures" / "ope_obp_reference.json"
REFERENCE = json.loads(FIXTURE.read_text())


def _arrays(case: dict[str, Any]) -> dict[str, np.ndarray]:
    """Our estimators' inputs from OBP's: per-decision arrays from the full distributions."""
    inp = case["inputs"]
    action = np.asarray(inp["action"])
    rows = np.arange(action.shape[0])
    target = np.asarray(inp["target_dist"])
    q_hat = np.asarray(inp["q_hat"])
    return {
        "rewards": np.asarray(inp["reward"]),
        "mu": np.asarray(inp["pscore"]),
        "pi": target[rows, action],
        "q_logged": q_hat[rows, action],
        "q_target": (target * q_hat).sum(axis=1),
        "logging_dist": np.asarray(inp["logging_dist"]),
        "target_dist": target,
    }


CASES = [pytest.param(c, id=c["name"]) for c in REFERENCE["cases"]]
BOOT = {
    "alpha": REFERENCE["alpha"],
    "n_bootstrap": REFERENCE["n_bootstrap"],
    "seed": REFERENCE["bootstrap_seed"],
}


def test_the_fixture_is_obps() -> None:
    assert REFERENCE["obp_version"] == "0.5.7"
    assert [c["name"] for c in REFERENCE["cases"]] == ["near", "far", "clipped", "deficient"]


@pytest.mark.parametrize("case", CASES)
def test_point_estimates_match_open_bandit_pipeline(case: dict[str, Any]) -> None:
    a, obp = _arrays(case), case["obp"]
    clip = case["clip"]
    got_ips = ips(a["rewards"], a["mu"], a["pi"], clip=clip, **BOOT)
    got_snips = snips(a["rewards"], a["mu"], a["pi"], **BOOT)
    got_dr = doubly_robust(a["rewards"], a["mu"], a["pi"], a["q_logged"], a["q_target"], clip=clip, **BOOT)
    assert got_ips.value == pytest.approx(obp["ips"], rel=1e-12, abs=1e-14)
    assert got_snips.value == pytest.approx(obp["snips"], rel=1e-12, abs=1e-14)
    assert got_dr.value == pytest.approx(obp["dr"], rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("case", CASES)
def test_ips_and_dr_intervals_match_open_bandit_pipeline(case: dict[str, Any]) -> None:
    # Same resampling stream (RandomState(seed).randint) and percentiles: the same interval.
    a, obp = _arrays(case), case["obp"]
    clip = case["clip"]
    got_ips = ips(a["rewards"], a["mu"], a["pi"], clip=clip, **BOOT)
    got_dr = doubly_robust(a["rewards"], a["mu"], a["pi"], a["q_logged"], a["q_target"], clip=clip, **BOOT)
    assert [got_ips.interval.lower, got_ips.interval.upper] == pytest.approx(obp["ips_interval"], rel=1e-12)
    assert [got_dr.interval.lower, got_dr.interval.upper] == pytest.approx(obp["dr_interval"], rel=1e-12)
    assert got_ips.interval.level == 0.95 and got_ips.interval.n_resamples == REFERENCE["n_bootstrap"]


@pytest.mark.parametrize("case", CASES)
def test_snips_interval_nests_inside_obps(case: dict[str, Any]) -> None:
    # OBP resamples w·r / mean(w) with the full sample's mean weight, ignoring that a resample's numerator
    # and denominator move together; we recompute the ratio per resample. On every reference case ours is
    # the narrower interval, inside OBP's, and (unlike OBP's on "clipped": upper 1.06) within the rewards'
    # range [0, 1].
    a, obp = _arrays(case), case["obp"]
    got = snips(a["rewards"], a["mu"], a["pi"], **BOOT)
    lower, upper = obp["snips_interval"]
    assert lower <= got.interval.lower <= got.value <= got.interval.upper <= upper
    assert got.interval.lower >= 0.0 and got.interval.upper <= 1.0


def test_support_warnings_on_the_reference_cases() -> None:
    cases = {c["name"]: _arrays(c) for c in REFERENCE["cases"]}
    deficient = cases["deficient"]
    est = ips(
        deficient["rewards"],
        deficient["mu"],
        deficient["pi"],
        logging_dist=deficient["logging_dist"],
        target_dist=deficient["target_dist"],
    )
    # The mean target mass on the actions the logging policy cannot take, computed directly.
    expected = (deficient["target_dist"] * (deficient["logging_dist"] == 0)).sum(axis=1).mean()
    assert expected > 0.1
    assert est.support.unsupported_mass == pytest.approx(expected)
    assert any("never takes" in w for w in est.support.warnings)
    near = cases["near"]
    ok = ips(
        near["rewards"],
        near["mu"],
        near["pi"],
        logging_dist=near["logging_dist"],
        target_dist=near["target_dist"],
    )
    assert ok.support.unsupported_mass == 0.0 and ok.support.ok
    clipped = next(c for c in REFERENCE["cases"] if c["name"] == "clipped")
    c = cases["clipped"]
    n_over = int((c["pi"] / c["mu"] > clipped["clip"]).sum())
    est = ips(c["rewards"], c["mu"], c["pi"], clip=clipped["clip"])
    assert n_over > 0 and est.support.n_clipped == n_over
    assert any(
        f"{n_over} of {c['rewards'].shape[0]} importance weights were clipped" in w
        for w in est.support.warnings
    )


def test_hand_computed_small_case() -> None:
    # Three decisions: μ = (0.5, 0.25, 0.8), π = (1.0, 0.5, 0.2), r = (1, 0, 1)
    # w = (2, 2, 0.25); IPS = (2 + 0 + 0.25) / 3 = 0.75; SNIPS = 2.25 / 4.25; ESS = 4.25² / 8.0625
    r, mu, pi = [1.0, 0.0, 1.0], [0.5, 0.25, 0.8], [1.0, 0.5, 0.2]
    assert ips(r, mu, pi, min_ess=1).value == pytest.approx(0.75)
    assert snips(r, mu, pi, min_ess=1).value == pytest.approx(2.25 / 4.25)
    assert effective_sample_size([2.0, 2.0, 0.25]) == pytest.approx(4.25**2 / 8.0625)
    # DR with q̂(x, a_logged) = (0.5, 0.5, 0.5) and q̂(x, π) = (0.6, 0.4, 0.9):
    # (0.6 + 2·0.5 + 0.4 + 2·(−0.5) + 0.9 + 0.25·0.5) / 3 = 2.025 / 3
    dr = doubly_robust(r, mu, pi, [0.5, 0.5, 0.5], [0.6, 0.4, 0.9], min_ess=1)
    assert dr.value == pytest.approx(2.025 / 3)
    weights, n_clipped = importance_weights(mu, pi, clip=1.5)
    assert weights.tolist() == [1.5, 1.5, 0.25] and n_clipped == 2
    assert ips(r, mu, pi, clip=1.5, min_ess=1).value == pytest.approx(1.75 / 3)


def test_on_policy_ips_is_the_mean_reward_and_its_interval_is_the_bootstrap_of_the_mean() -> None:
    rng = np.random.default_rng(3)
    r = rng.random(500)
    mu = rng.uniform(0.1, 1.0, 500)
    est = ips(r, mu, mu, n_bootstrap=500, seed=5)
    assert est.value == pytest.approx(r.mean())
    assert est.ess == pytest.approx(500) and est.support.ok
    # The percentile interval of 500 resampled means drawn with RandomState(5), computed here directly.
    draws = np.random.RandomState(5)
    means = [r[draws.randint(0, 500, size=500)].mean() for _ in range(500)]
    assert est.interval.lower == pytest.approx(np.percentile(means, 2.5))
    assert est.interval.upper == pytest.approx(np.percentile(means, 97.5))


def test_bootstrap_ratio_recomputes_per_resample() -> None:
    num, den = np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0])
    draws = np.random.RandomState(0).randint(0, 3, size=(4, 3))
    expected = num[draws].sum(axis=1) / den[draws].sum(axis=1)
    assert bootstrap_means(num, den, n_resamples=4, seed=0) == pytest.approx(expected)


def test_cluster_bootstrap_resamples_whole_sessions() -> None:
    r = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    mu = np.array([0.5, 0.5, 0.25, 0.5, 0.5])
    pi = np.array([0.5, 1.0, 0.5, 0.25, 0.5])  # w = (1, 2, 2, 0.5, 1)
    sessions = ["b", "b", "a", "a", "a"]  # sorted ids: a = cluster 0, b = cluster 1
    w = pi / mu
    est = ips(r, mu, pi, clusters=sessions, n_bootstrap=50, seed=3, min_ess=1)
    assert est.value == pytest.approx((1 + 0 + 2 + 0.5 + 0) / 5)  # the point estimate is unchanged
    # By hand: cluster sums of w·r, a = 2 + 0.5 + 0 = 2.5 over 3 decisions, b = 1 + 0 = 1 over 2; each
    # resample draws 2 clusters and takes Σ sums / Σ sizes.
    draws = np.random.RandomState(3).randint(0, 2, size=(50, 2))
    sums, sizes = np.array([2.5, 1.0]), np.array([3.0, 2.0])
    means = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    assert est.interval.method == "cluster-bootstrap-percentile"
    assert est.interval.lower == pytest.approx(np.percentile(means, 2.5))
    assert est.interval.upper == pytest.approx(np.percentile(means, 97.5))
    # SNIPS: cluster sums of w·r over cluster sums of w (a: 2.5 / 3.5, b: 1 / 3).
    sn = snips(r, mu, pi, clusters=sessions, n_bootstrap=50, seed=3, min_ess=1)
    ratios = sums[draws].sum(axis=1) / np.array([3.5, 3.0])[draws].sum(axis=1)
    assert sn.value == pytest.approx(np.dot(w, r) / w.sum())
    assert sn.interval.upper == pytest.approx(np.percentile(ratios, 97.5))
    # One decision per cluster, ids in decision order: exactly the decision bootstrap.
    one_each = ips(r, mu, pi, clusters=np.arange(5), n_bootstrap=50, seed=3, min_ess=1)
    plain = ips(r, mu, pi, n_bootstrap=50, seed=3, min_ess=1)
    assert (one_each.interval.lower, one_each.interval.upper) == pytest.approx(
        (plain.interval.lower, plain.interval.upper)
    )
    with pytest.raises(ValueError, match="clusters must have 5 entries"):
        ips(r, mu, pi, clusters=["a"])


def test_greedy_logs_and_zero_support_warn() -> None:
    # A deterministic logging policy: every propensity 1; the target agrees on one decision in three.
    est = ips([1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], min_ess=1)
    assert est.value == pytest.approx(1 / 3)
    assert any("deterministic logging policy" in w for w in est.support.warnings)
    nothing = snips([1.0, 0.0], [0.5, 0.5], [0.0, 0.0], min_ess=1)
    assert math.isnan(nothing.value) and any("SNIPS is undefined" in w for w in nothing.support.warnings)
    low = ips([1.0] * 10, [0.5] * 10, [0.5] * 10)
    assert low.ess == pytest.approx(10) and any(
        "effective sample size 10.0" in w for w in low.support.warnings
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"logged_propensities": [0.0, 0.5]}, "logged_propensities must be in"),
        ({"logged_propensities": [0.5, 1.5]}, "logged_propensities must be in"),
        ({"target_probs": [0.5, -0.1]}, "target_probs must be probabilities"),
        ({"rewards": [1.0, float("nan")]}, "rewards must contain only finite"),
        ({"target_probs": [0.5]}, "target_probs must have 2 entries"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs: dict[str, Any], message: str) -> None:
    args = {"rewards": [1.0, 0.0], "logged_propensities": [0.5, 0.5], "target_probs": [0.5, 0.5]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ips(**args)


def test_session_estimates_by_hand() -> None:
    # Session "a": steps 0, 1 with w = (2, 0.5), r = (1, 1); session "b": one step, w = 0.5, r = 2.
    # Given out of order: the steps argument puts them right.
    r = [1.0, 2.0, 1.0]
    mu = [0.5, 0.8, 0.5]
    pi = [0.25, 0.4, 1.0]  # w = (0.5, 0.5, 2.0): row 0 is a's step 1, row 2 is a's step 0
    ids = ["a", "b", "a"]
    steps = [1, 0, 0]
    est = session_importance_sampling(r, mu, pi, ids, steps, gamma=0.9, min_ess=1, n_bootstrap=50)
    # Trajectory: a: ρ = 2·0.5 = 1, return 1 + 0.9·1 = 1.9 → 1.9; b: ρ = 0.5, return 2 → 1.0. Mean 1.45.
    assert est.trajectory.value == pytest.approx((1.9 + 1.0) / 2)
    # Per-decision: a: 2·1 + 0.9·(2·0.5)·1 = 2.9; b: 0.5·2 = 1.0. Mean 1.95.
    assert est.per_decision.value == pytest.approx((2.9 + 1.0) / 2)
    assert est.n_sessions == 2 and est.trajectory.n == 2
    assert est.trajectory.ess == pytest.approx(1.5**2 / 1.25)


def test_session_estimates_zero_weight_ends_the_product() -> None:
    # One session of three steps; the target never takes the logged action at step 1.
    est = session_importance_sampling(
        [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.5, 0.0, 1.0], ["s", "s", "s"], min_ess=0, n_bootstrap=10
    )
    assert est.per_decision.value == pytest.approx(1.0)  # only step 0 counts (ρ_0 = 1)
    assert est.trajectory.value == 0.0


def test_per_decision_is_unbiased_on_a_two_step_bandit_chain() -> None:
    # Two steps, two actions, reward 1 for action 1 at each step, no dependence on the state: the
    # target (P(a=1) = 0.8) earns 1.6 per session; logged under P(a=1) = 0.5.
    rng = np.random.default_rng(0)
    m = 20_000
    actions = rng.random((m, 2)) < 0.5
    rewards = actions.astype(float).ravel()
    mu = np.full(2 * m, 0.5)
    pi = np.where(actions.ravel(), 0.8, 0.2)
    ids = np.repeat(np.arange(m), 2)
    est = session_importance_sampling(rewards, mu, pi, ids, n_bootstrap=200, seed=1)
    for e in (est.trajectory, est.per_decision):
        assert e.interval.lower < 1.6 < e.interval.upper
        assert e.value == pytest.approx(1.6, abs=0.05)
