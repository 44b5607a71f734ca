"""Smoke test of benchmarks/ope_coverage.py: a quick run writes a complete report whose truths and
estimates are consistent (coverage itself is measured by the full run, not asserted here)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import ope_coverage  # noqa: E402


def test_quick_run_writes_the_coverage_report(tmp_path: Path) -> None:
    out = tmp_path / "coverage"
    report = ope_coverage.main(["--quick", "--out", str(out)])
    names = [row["target"] for row in report["targets"]]
    assert names == ["T=0.3", "T=0.2", "T=0.1", "T=0.05", "greedy", "uniform", "T=-0.3"]
    assert len(report["per_seed"]) == 6
    for seed in report["per_seed"]:
        same = seed[0]  # the target identical to the logging policy: every weight is 1
        assert same["kl"] == 0.0
        assert same["ips"]["ess"] == same["n"]
        assert math.isclose(same["ips"]["value"], same["snips"]["value"], rel_tol=1e-12)
        assert math.isclose(same["trajectory_is"]["value"], same["per_decision_is"]["value"], rel_tol=1e-12)
    truths = {row["target"]: row["truth_one_step"] for row in report["targets"]}
    # The rollout truths order as the policies do: greedy on the click model clicks most, anti-expert least.
    assert truths["T=-0.3"] < truths["uniform"] < truths["T=0.3"] < truths["T=0.1"] < truths["greedy"]
    kls = [row["kl"] for row in report["targets"]]
    assert kls == sorted(kls)  # ordered by distance from the logging policy
    for row in report["targets"]:
        for est in row["estimators"].values():
            assert 0.0 <= est["coverage"] <= 1.0
            lo, hi = est["coverage_ci"]
            assert 0.0 <= lo <= est["coverage"] <= hi <= 1.0
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# Off-policy estimators: coverage of the 95% interval on the simulator")
    assert "benchmarks/ope_coverage.py --quick" in text
    assert json.loads(out.with_suffix(".json").read_text())["targets"] == report["targets"]
    assert out.with_suffix(".png").stat().st_size > 5_000
