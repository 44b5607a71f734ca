"""Smoke test of benchmarks/item_updates.py: one arm and its bare reference in-process, and the report
(rates not asserted; the checkpoint size is)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import item_updates  # noqa: E402


def test_an_arm_and_its_bare_reference_measure_and_report() -> None:
    threads = torch.get_num_threads()
    try:
        small = item_updates.child({"arm": "sampled", "n_items": 1_000, "width": 64, "steps": 2})
        large = item_updates.child({"arm": "sampled", "n_items": 3_000, "width": 64, "steps": 2})
        bare = item_updates.child({"arm": "bare", "n_items": 1_000, "width": 64, "steps": 2})
    finally:
        torch.set_num_threads(threads)
    # Features only: the checkpoint holds no item data, so it is the same size at 1,000 and 3,000 items.
    assert small["checkpoint_bytes"] == large["checkpoint_bytes"] > 100_000
    assert bare["checkpoint_bytes"] is None
    for row in (small, large, bare):
        assert (
            math.isfinite(row["cpu_rate"])
            and row["cpu_rate"] > 0
            and row["peak_rss_kb"] >= row["rss_before_kb"]
        )
    small["bare"] = bare
    small["cpu_ratio"] = small["cpu_rate"] / bare["cpu_rate"]
    small["memory_ratio"] = small["peak_rss_kb"] / bare["peak_rss_kb"]
    text = item_updates.report({"rows": [small], "machine": "test"}, "the command", 1.0)
    assert text.startswith("# Feature DQfD: pretraining updates") and "Command: `the command`" in text
    assert "| 1,000 | sampled |" in text
