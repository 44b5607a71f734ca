"""The command line: migrate, import, pretrain, status, and the quickstart's --check path end to end."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import service.store.db
from service.cli import main
from service.ingest.synthetic import generate_logs, make_items
from service.store.db import resolve_database_url
from service.store.migrate import NotMigratedError, alembic_config
from tests.service.conftest import PG_URL, STATE_DIM, _postgres_unavailable

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
    # the newest migration (0003 added decisions.learn; later ones may follow)
    head = ScriptDirectory.from_config(alembic_config(cli_env)).get_current_head()
    assert status["revision"] == head and head >= "0003"
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
    line = _one_error(capsys, f"{wrong}: row 1, column state: 5 numbers, expected 4 (DQFD_STATE_DIM")
    assert "unset it to learn the width from the file" in line


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


# ---------------------------------------------------------------- one-line errors (issue 9)


def _one_error(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    """The single ``error:`` line on stderr (no traceback), checked to contain ``words``."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An unmigrated database of each kind (SQLite: an empty file; PostgreSQL: a fresh database)."""
    if request.param == "sqlite":
        path = tmp_path / "empty.db"
        sqlite3.connect(path).close()
        yield f"sqlite:///{path}"
        return
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"svc_empty_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        _postgres_unavailable(str(exc))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize("empty_database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize(
    "command",
    [
        ["import", "LOGS", "--quiet"],
        ["pretrain"],
        ["status"],
        ["serve", "--no-migrate"],
        ["worker", "--no-migrate"],
    ],
)
def test_commands_before_migrate_say_to_migrate(
    empty_database_url: str,
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    logs = tmp_path / "logs.csv"
    generate_logs(2, STATE_DIM, 5, seed=0, json_columns=True).to_csv(logs, index=False)
    argv = [str(logs) if arg == "LOGS" else arg for arg in command]
    assert main(argv) == 2
    _one_error(capsys, "has no tables yet", "run `python -m service migrate` first")


def test_a_missing_sqlite_file_is_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nowhere" / "service.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    assert main(["status"]) == 2
    _one_error(capsys, f"no database at {path}", "run `python -m service migrate` first")
    assert main(["import", "--items", str(tmp_path / "x.csv")]) == 2
    _one_error(capsys, "--items: no such file: ")
    assert not path.exists() and not path.parent.exists()


def test_import_errors_are_one_line(cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"]) == 0
    items = tmp_path / "items.csv"
    make_items(5).to_csv(items, index=False)
    assert main(["import", str(tmp_path / "nope.csv")]) == 2
    _one_error(capsys, f"error: LOGS: no such file: {tmp_path / 'nope.csv'}")
    assert main(["import", "--quiet"]) == 2
    _one_error(capsys, "nothing to import")
    frame = generate_logs(3, STATE_DIM, 5, seed=1, json_columns=True).astype({"done": object})
    frame.loc[2, "state"] = "[0.1 0.2]"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    assert main(["import", str(bad), "--items", str(items), "--quiet"]) == 2
    _one_error(capsys, f"error: {bad}: row 3, column state: '[0.1 0.2]' is not a JSON array of numbers")
    frame.loc[2, "state"] = frame.loc[1, "state"]
    frame.loc[1, "done"] = "maybe"
    frame.to_csv(bad, index=False)
    assert main(["import", str(bad), "--quiet"]) == 2
    _one_error(capsys, f"error: {bad}: row 2, column done: 'maybe' is not a boolean (use true/false)")
    items_bad = tmp_path / "items_bad.csv"
    make_items(5).astype({"active": object}).assign(active=["true", "false", "maybe", "1", "0"]).to_csv(
        items_bad, index=False
    )
    assert main(["import", "--items", str(items_bad)]) == 2
    _one_error(capsys, f"error: {items_bad}: row 3, column active: 'maybe' is not a boolean (use true/false)")
    frame.loc[1, "item_id"] = "nope"
    frame.loc[1, "done"] = "false"
    frame.to_csv(bad, index=False)
    assert main(["import", str(bad), "--quiet"]) == 2
    _one_error(capsys, "row 2, column item_id: 'nope' is not in the catalogue", "--create-items")
    with pytest.raises(SystemExit) as exit_:  # argparse: its usage line, then the error
        main(["import", str(bad), "--chunk-rows", "0"])
    assert exit_.value.code == 2
    assert "argument --chunk-rows: '0' is not a positive integer" in capsys.readouterr().err


def test_reimport_and_the_learned_width(
    cli_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DQFD_STATE_DIM")  # import needs no width: it is learned from the file
    assert main(["migrate"]) == 0
    items = tmp_path / "items.csv"
    make_items(5).to_csv(items, index=False)
    logs = tmp_path / "logs.csv"
    frame = generate_logs(10, 6, 5, seed=0, json_columns=True)
    frame.to_csv(logs, index=False)
    capsys.readouterr()
    assert main(["import", str(logs), "--items", str(items), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"logged interactions: {len(frame)} rows imported (states of 6 features)" in out
    assert main(["import", str(logs), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"logged interactions: 0 rows imported, {len(frame)} already imported (skipped)" in out
    narrow = tmp_path / "narrow.csv"
    generate_logs(2, 5, 5, seed=1, json_columns=True).assign(
        session_id=lambda f: "n" + f["session_id"]
    ).to_csv(narrow, index=False)
    assert main(["import", str(narrow), "--quiet"]) == 2
    _one_error(capsys, f"the imported logs have 6 features (from {logs}), {narrow} has 5")
    assert main(["status"]) == 0
    assert json.loads(capsys.readouterr().out)["logged_interactions"] == len(frame)


def test_pretrain_without_data_says_what_to_import(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"]) == 0
    assert main(["pretrain", "--steps", "5"]) == 2
    _one_error(capsys, "the catalogue is empty: import it first (python -m service import --items items.csv)")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("xyz", ["error: DATABASE_URL 'xyz' is not a database URL (use sqlite:///"]),
        ("foo://a/b", ["error: DATABASE_URL: unknown database kind 'foo'"]),
        (
            "postgresql+psycopg://someone:secret@127.0.0.1:1/db",
            ["error: DATABASE_URL: cannot use the database postgresql+psycopg://someone:***@127.0.0.1:1/db"],
        ),
    ],
)
def test_a_bad_database_url_is_one_line(
    url: str, words: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    for command in (["status"], ["import", "--items", __file__], ["migrate"]):
        assert main(command) == 2
        line = _one_error(capsys, *words)
        assert "secret" not in line


def test_a_bad_setting_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DQFD_PRETRAIN_STEPS", "many")
    assert main(["status"]) == 2
    _one_error(capsys, "error: DQFD_PRETRAIN_STEPS: ", "'many'")


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'none.db'}")
    with pytest.raises(NotMigratedError):
        main(["--debug", "status"])


def test_the_sqlite_path_is_relative_to_the_project_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert resolve_database_url("sqlite:///data/service.db") == f"sqlite:///{ROOT / 'data' / 'service.db'}"
    assert resolve_database_url("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    project = tmp_path / "project"
    monkeypatch.setattr(service.store.db, "PROJECT_ROOT", project)
    monkeypatch.setenv("DATABASE_URL", "sqlite:///data/service.db")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "deeper").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert main(["migrate"]) == 0
    assert f"database: sqlite:///{project / 'data' / 'service.db'}" in capsys.readouterr().out
    items = tmp_path / "items.csv"
    make_items(5).to_csv(items, index=False)
    monkeypatch.chdir(elsewhere / "deeper")
    assert main(["import", "--items", str(items)]) == 0
    assert f"database: sqlite:///{project / 'data' / 'service.db'}" in capsys.readouterr().out
    assert main(["status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["items"] == 5
    assert status["database_url"] == f"sqlite:///{project / 'data' / 'service.db'}"
    assert not (elsewhere / "data").exists() and not (elsewhere / "deeper" / "data").exists()
