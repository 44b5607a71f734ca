"""Smoke test of benchmarks/fixed_head_scaling.py: a tiny run writes a full report (times not asserted)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import fixed_head_scaling  # noqa: E402


def test_a_tiny_run_measures_every_variant_and_the_dense_matrix_bytes(tmp_path: Path) -> None:
    out = tmp_path / "scaling"
    report = fixed_head_scaling.main(["--sizes", "20", "50", "--updates", "4", "--out", str(out)])
    cases = {(c["variant"], c["n_actions"]): c for c in report["cases"]}
    assert set(cases) == {(v, n) for v in ("dense", "linear", "autograd") for n in (20, 50)}
    for case in cases.values():
        assert case["skipped"] == 0 and case["updates"] == 4
        assert math.isfinite(case["update_over_trunk"]) and case["update_over_trunk"] > 0
    for n in (20, 50):
        # The old network's extra memory is exactly its (n+1)×n float32 dueling matrix.
        extra = cases[("dense", n)]["network_mb"] - cases[("linear", n)]["network_mb"]
        assert extra * 2**20 == (n + 1) * n * 4
        assert report["max_abs_q_difference_dense_vs_linear"][str(n)] < 1e-5
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# Fixed-head dueling network")
    assert "python benchmarks/fixed_head_scaling.py --sizes 20 50 --updates 4" in text
    assert json.loads(out.with_suffix(".json").read_text())["cases"] == report["cases"]
