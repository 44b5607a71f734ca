"""Smoke test of benchmarks/offline_to_online.py: a reduced run end to end (all arms, report, plot)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "offline_to_online.py"


def _load_benchmark():
    pytest.importorskip("torch")
    pytest.importorskip("agent")
    spec = importlib.util.spec_from_file_location("offline_to_online_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_reduced_run_writes_report(tmp_path: Path) -> None:
    bench = _load_benchmark()
    args = [
        "--quick",
        "--seeds", "1",
        "--demo-sessions", "10",
        "--pretrain-steps", "10",
        "--online-sessions", "6",
        "--checkpoints", "0", "3", "6",
        "--eval-sessions", "4",
        "--workers", "1",
        "--out-dir", str(tmp_path),
    ]  # fmt: skip
    lines = bench.main(args)
    assert len(lines) == 3 and all(line.startswith(("PASS", "FAIL")) for line in lines)
    md = (tmp_path / "offline_to_online_quick.md").read_text()
    assert "benchmarks/offline_to_online.py --quick" in md.splitlines()[4]
    for arm in ("DQfD", "PDD DQN", "imitation", "expert", "oracle", "random"):
        assert arm in md
    data = json.loads((tmp_path / "offline_to_online_quick.json").read_text())
    curve = data["summary"]["curves"]["dqfd"]
    assert [p["sessions"] for p in curve] == [0, 3, 6]
    assert (tmp_path / "offline_to_online_quick.png").stat().st_size > 10_000
    # The report can be rebuilt from the saved JSON without rerunning.
    again = bench.main(
        ["--rerender", str(tmp_path / "offline_to_online_quick.json"), "--out-dir", str(tmp_path / "re")]
    )
    assert again == lines
    assert "Learning curves" in (tmp_path / "re" / "offline_to_online.md").read_text()


def test_quick_settings_are_small() -> None:
    bench = _load_benchmark()
    s, _, stem = bench.parse_args(["--quick"])
    assert stem == "offline_to_online_quick"
    assert s.seeds >= 2 and s.online_sessions <= 200 and s.pretrain_steps <= 500
    full, _, _ = bench.parse_args([])
    assert (
        full.seeds >= 5 and full.online_sessions == 20_000 and {0, 1000, 5000, 20_000} <= set(full.report_at)
    )
