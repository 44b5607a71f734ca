"""``python -m service report``: the dashboard's numbers as a PNG or HTML report, and one-line errors."""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from service.cli import main
from service.store.db import make_engine
from service.store.models import Decision, Feedback
from tests.service.test_dashboard_data import T0, _decision, _feedback

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def served(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Four decisions of version 1 in [T0, T0 + 60 s): rewards 1, 0, 1 and none; one finished session."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    d = [
        _decision(1.0, 1, session="a"),
        _decision(2.0, 1, session="a", explored=True),
        _decision(40.0, 1, session="b"),
        _decision(41.0, 1, session="b"),
    ]
    f = [
        _feedback(d[0]["event_id"], 1.0),
        _feedback(d[1]["event_id"], 0.0, done=True),
        _feedback(d[2]["event_id"], 1.0),
    ]
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(Decision), d)
            conn.execute(insert(Feedback), f)
    finally:
        engine.dispose()
    return database_url


def _since_until() -> list[str]:
    return ["--since", T0.isoformat(), "--until", (T0 + timedelta(seconds=60)).isoformat()]


def test_html_report_holds_the_numbers_and_the_plots(
    served: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    assert main(["report", *_since_until(), "--buckets", "6", "--out", str(out)]) == 0
    assert f"report: {out} (4 decisions, 1 model versions)" in capsys.readouterr().out
    page = out.read_text()
    # Version 1: 4 decisions, 1 explored, 3 rewarded with 2 in all (0.6667 a decision); session a
    # finished with return 1 (session b has no done).
    assert "<tr><td>1</td><td>4</td><td>1</td><td>0.6667</td><td>1</td><td>1</td></tr>" in page
    image = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert image is not None and base64.b64decode(image.group(1)).startswith(PNG_MAGIC)


def test_png_report(served: str, tmp_path: Path) -> None:
    out = tmp_path / "report.png"
    assert main(["report", *_since_until(), "--out", str(out)]) == 0
    import matplotlib.image

    assert out.read_bytes().startswith(PNG_MAGIC)
    assert matplotlib.image.imread(out).shape[:2] == (1100, 1300)  # 13 × 11 inches at 100 dpi


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--since", "yesterday", "--out", "r.png"],
            "error: --since: 'yesterday' is not a time (use ISO 8601",
        ),
        (["--until", "2026-13-01", "--out", "r.png"], "error: --until: '2026-13-01' is not a time"),
        (["--out", "report.pdf"], "error: --out: 'report.pdf' must end in .html or .png"),
        (["--out", "/no/such/folder/r.png"], "error: --out: the folder '/no/such/folder' does not exist"),
        ([*_since_until()[2:], *_since_until()[:2], "--out", "r.png"], None),  # --until first: fine
        (
            ["--since", "2026-12-02T12:00:00Z", "--until", "2026-12-02T11:00:00Z", "--out", "r.png"],
            "error: until must be later than since",
        ),
        (
            ["--since", "2026-10-01T00:00:00Z", "--until", "2026-12-02T00:00:00Z", "--out", "r.png"],
            "error: since: the window may span at most 31 days",
        ),
    ],
)
def test_bad_arguments_are_one_line(
    served: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str | None,
) -> None:
    monkeypatch.chdir(tmp_path)
    status = main(["report", *args])
    err = capsys.readouterr().err
    if message is None:
        assert status == 0 and err == ""
        return
    assert status == 2
    assert err.startswith(message) and err.count("\n") == 1, err
