"""Smoke tests of the service benchmarks (benchmarks/serving.py, benchmarks/load_demonstrations.py).

They check that the benchmarks run end to end at a tiny size and write complete reports; the timings
themselves are not asserted (benchmarks, not timed tests). The load benchmark needs PostgreSQL: skipped
without a reachable server, unless ``CI=true``, where it fails.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import load_demonstrations  # noqa: E402
import serving  # noqa: E402

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _finite(*values: float) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values)


def test_serving_benchmark_quick_run_writes_the_report(tmp_path: Path) -> None:
    # The client is chosen explicitly: the run must not depend on whether wrk happens to be on PATH
    # (the project's set-up does not install it). The report must say which client the run used.
    argv = [
        "--quick",
        "--warmup",
        "0",
        "--duration",
        "1",
        "--out",
        str(tmp_path),
        "--work",
        str(tmp_path / "w"),
    ]
    report = serving.main([*argv, "--client", "python"])
    text = (tmp_path / "serving.md").read_text()
    assert text.startswith("# Serving benchmark")
    assert "benchmarks/serving.py --quick" in text
    assert report["client_kind"] == "python"
    assert report["client"].startswith("Python asyncio client")
    assert "Python asyncio client" in text
    for name in ("bare", "act", "feedback"):
        result = report["results"][name]
        assert _finite(result["rps"], result["p50_ms"], result["p99_ms"]), (name, result)
        assert result["non2xx"] == 0 and result["errors"] == 0, (name, result)
    assert _finite(report["ratios"]["act_to_bare"], report["ratios"]["feedback_to_bare"])
    assert "ratio act/bare = " in text and "ratio feedback/bare = " in text
    assert any(line.endswith("of the bare endpoint (target >= 0.40)") for line in report["verdicts"])
    assert all(line.startswith(("PASS: ", "FAIL: ")) for line in report["verdicts"])
    assert "load average at start" in text
    assert (tmp_path / "serving.json").exists() and (tmp_path / "serving.png").exists()


def test_python_fallback_client_against_the_bare_app(tmp_path: Path) -> None:
    from service.quickstart import free_port

    port = free_port()
    log = tmp_path / "bare.log"
    proc = serving.start(
        [sys.executable, str(BENCHMARKS / "serving.py"), "--bare-app-port", str(port)],
        dict(os.environ, PYTHONPATH=str(BENCHMARKS.parent)),
        log,
    )
    try:
        serving.wait_ready(proc, f"http://127.0.0.1:{port}/readyz", log, timeout=60)
        result = serving.run_python(port, "/act", "act", 1.0, 4, None)
        # the same body the wrk script sends is valid for the schema
        ok = httpx.post(
            f"http://127.0.0.1:{port}/act",
            content=serving.act_body(serving.random.Random(0)),
            headers={"content-type": "application/json"},
        )
    finally:
        serving.stop(proc)
    assert ok.status_code == 200
    assert result["requests"] > 0 and result["non2xx"] == 0 and result["errors"] == 0
    assert _finite(result["rps"], result["p50_ms"], result["p99_ms"])


def _postgres_or_skip() -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        psycopg.connect(conninfo, connect_timeout=3).close()
    except Exception as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is required under CI: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")


def test_load_demonstrations_benchmark_quick_run_writes_the_report(tmp_path: Path) -> None:
    _postgres_or_skip()
    began = time.monotonic()
    report = load_demonstrations.main(
        [
            "--quick",
            "--rows",
            "4000",
            "--database-url",
            PG_URL,
            "--out",
            str(tmp_path),
            "--work",
            str(tmp_path),
        ]
    )
    text = (tmp_path / "load_demonstrations.md").read_text()
    assert text.startswith("# Loading demonstrations")
    assert "benchmarks/load_demonstrations.py --quick --rows 4000" in text
    results = report["results"]
    assert _finite(results["copy_s"], results["import_s"], results["load_s"], results["total_to_copy"])
    assert results["demonstrations"] > 0 and results["raw_bytes"] == 4000 * (64 * 4 + 13)
    assert results["copy_format"] in {"binary", "text"}
    assert [line.split(":")[0] for line in report["verdicts"]] in (
        [a, b] for a in ("PASS", "FAIL") for b in ("PASS", "FAIL")
    )
    assert "import + load took" in text and "raw array bytes" in text
    assert time.monotonic() - began < 120
    # the scratch database is gone
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_URL)
    with engine.connect() as conn:
        names = list(conn.execute(text("SELECT datname FROM pg_database")).scalars())
    engine.dispose()
    assert not [n for n in names if n.startswith(f"bench_load_{os.getpid()}_")]
