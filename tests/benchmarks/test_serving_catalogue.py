"""Smoke test of benchmarks/serving_catalogue.py: it runs end to end at a tiny size and writes its report
(timings are not asserted; recall is, since retrieval of at least the whole catalogue is exact)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import serving_catalogue  # noqa: E402


def test_quick_run_writes_the_report(tmp_path: Path) -> None:
    argv = ["--items", "100", "--requests", "20", "--recall-states", "5", "--train-steps", "3"]
    report = serving_catalogue.main([*argv, "--no-pin", "--out", str(tmp_path)])
    text = (tmp_path / "serving_catalogue.md").read_text()
    assert text.startswith("# /act over the whole catalogue with item features")
    assert "benchmarks/serving_catalogue.py --items 100" in text
    for entry in report["networks"].values():
        # 100 items, 100 retrieved: every item is scored exactly, so recall is exact.
        assert entry["recall_at_10"] == 1.0
        assert set(entry["choose"]) == {
            "whole",
            "one_percent_inactive",
            "candidates_100",
            "fixed_head_1000",
            "retrieval_product",
        }
        assert all(r["p99_ms"] > 0 for r in entry["choose"].values())
