"""Smoke test of benchmarks/pretrain_rate.py: a quick run writes a complete report (rates not asserted)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import pretrain_rate  # noqa: E402


def test_quick_run_writes_windows_for_both_arms(tmp_path: Path) -> None:
    out = tmp_path / "rate"
    report = pretrain_rate.main(["--quick", "--out", str(out)])
    assert report["steps"] == 800 and report["window"] == 200
    for arm in ("flush", "no-flush"):
        windows = report["windows"][arm]
        assert [w["updates"] for w in windows] == [200, 400, 600, 800]
        assert all(math.isfinite(w["wall_rate"]) and w["wall_rate"] > 0 for w in windows)
        assert set(windows[-1]["subnormal"]) == {"weights", "grad", "adam_m", "adam_v"}
        summary = report["summary"][arm]
        assert summary["wall_rate_ratio"] > 0 and summary["cpu_rate_ratio"] > 0
    # the fixed arm never holds a subnormal; the comparison of the two arms is reported
    assert all(sum(w["subnormal"].values()) == 0 for w in report["windows"]["flush"])
    assert all(math.isfinite(w["max_weight_difference"]) for w in report["windows"]["flush"])
    assert 0.0 <= report["greedy_agreement"] <= 1.0 and math.isfinite(report["q_relative_max_difference"])
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# Pretraining rate over a long run")
    assert "python benchmarks/pretrain_rate.py --quick" in text
    assert json.loads(out.with_suffix(".json").read_text())["summary"] == report["summary"]
    assert out.with_suffix(".png").stat().st_size > 5_000
