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
