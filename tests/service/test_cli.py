"""The command line: migrate, import, pretrain, status, and the quickstart's --check path end to end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from service.cli import main
from service.synthetic import generate_logs, make_items
from tests.service.conftest import STATE_DIM

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DQFD_STATE_DIM", str(STATE_DIM))
    monkeypatch.setenv("DQFD_HIDDEN_SIZES", "[16]")
    monkeypatch.setenv("DQFD_BATCH_SIZE", "8")
    monkeypatch.setenv("DQFD_N_STEP", "3")
    return database_url


def test_import_pretrain_status(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = tmp_path / "items.csv"
    make_items(5).to_csv(items, index=False)
    logs = tmp_path / "logs.csv"
    generate_logs(10, STATE_DIM, 5, seed=0, json_columns=True).to_csv(logs, index=False)
    monkeypatch.setenv("DQFD_ITEMS_PATH", str(items))
    assert main(["migrate"]) == 0  # imports the catalogue source into the empty items table
    assert "catalogue: 5 items imported" in capsys.readouterr().out
    assert main(["import", str(logs), "--items", str(items), "--chunk-rows", "16", "--quiet"]) == 0
    assert "catalogue: 0 new items" in capsys.readouterr().out
    assert main(["pretrain", "--steps", "20"]) == 0
    capsys.readouterr()
    assert main(["status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["revision"] == "0001"
    assert status["items"] == 5
    assert status["logged_interactions"] == len(generate_logs(10, STATE_DIM, 5, seed=0))
    assert status["active_model_version"] == 1
    assert status["jobs"] == 1


def test_import_of_a_bad_file_fails_cleanly(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate"]) == 0
    bad = tmp_path / "logs.txt"
    bad.write_text("nothing")
    assert main(["import", str(bad), "--quiet"]) == 2
    assert "unsupported file type" in capsys.readouterr().err
    wrong = tmp_path / "logs.csv"
    frame = generate_logs(2, STATE_DIM + 1, 5, seed=0, json_columns=True)
    frame.to_csv(wrong, index=False)
    assert main(["import", str(wrong), "--create-items", "--quiet"]) == 2
    assert "error (field state)" in capsys.readouterr().err


def test_quickstart_check_end_to_end(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What scripts/main.sh runs, with a tiny pretrain: example data, pretrain, serve, one round trip.

    In-process (the kill -9 test covers a server subprocess): the command serves on a free port,
    sends one /act and one /feedback over HTTP and stops.
    """
    for name in [k for k in os.environ if k.startswith("DQFD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DQFD_PRETRAIN_STEPS", "20")
    monkeypatch.setenv("DQFD_HIDDEN_SIZES", "[16]")
    monkeypatch.setenv("DQFD_BATCH_SIZE", "8")
    assert main(["quickstart", "--check", "--sessions", "5"]) == 0
    out = capsys.readouterr().out
    assert "check: OK" in out
    assert "/feedback stored" in out
    assert "curl -s -X POST" in out
    assert "model version 1 is active" in out
    # A second run finds the data and the model and goes straight to serving.
    assert main(["quickstart", "--check", "--sessions", "5"]) == 0
    again = capsys.readouterr().out
    assert "importing" not in again and "pretraining" not in again and "check: OK" in again


def test_main_sh_passes_flags_to_the_quickstart() -> None:
    script = (ROOT / "scripts" / "main.sh").read_text()
    assert "bash scripts/setup.sh" in script
    assert 'python -m service quickstart "$@"' in script
    result = subprocess.run(
        ["bash", "-n", str(ROOT / "scripts" / "main.sh")], capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
