"""The state width is learned from the imported logs; every disagreement names both sides and the fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import delete, insert

from service import cli
from service.api.app import create_app
from service.errors import StateWidthMismatchError, StateWidthUnknownError
from service.ingest.catalogue import import_items
from service.ingest.importer import import_logs
from service.ingest.synthetic import generate_logs, make_items
from service.learning import agents
from service.settings import Settings
from service.store import migrate, registry, shape
from service.store.db import make_engine, make_session_factory, session_scope
from service.store.models import LoggedInteraction
from tests.service.conftest import admin_headers, make_settings, wait_for

WIDTH = 5
N_ITEMS = 3
RETRAIN = (
    'retrain on the imported logs (python -m service pretrain, or POST /admin/retrain {"activate": true})'
)


@pytest.fixture
def plain_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Path:
    """A working directory without .env and an environment whose only service variable is DATABASE_URL."""
    import os

    for name in list(os.environ):
        if name.startswith("DQFD_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write_dataset(folder: Path, width: int = WIDTH, name: str = "logs.csv") -> Path:
    make_items(N_ITEMS).to_csv(folder / "items.csv", index=False)
    logs = folder / name
    generate_logs(12, width, N_ITEMS, seed=0, json_columns=True).to_csv(logs, index=False)
    return logs


def _seed(url: str, width: int = WIDTH) -> None:
    """Catalogue + ``width``-feature logs, with the width recorded as learned from logs.csv."""
    engine = make_engine(url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            import_items(session, make_items(N_ITEMS))
            shape.record_state_dim(session, width, "logs.csv")
        import_logs(engine, generate_logs(12, width, N_ITEMS, seed=0), width, chunk_rows=64, progress=False)
    finally:
        engine.dispose()


def _save_model(settings: Settings, width: int) -> int:
    """An active (untrained) model version taking ``width`` features."""
    engine = make_engine(settings.database_url)
    try:
        agent = agents.new_agent(settings, N_ITEMS, width)
        with session_scope(make_session_factory(engine)) as session:
            import_items(session, make_items(N_ITEMS))  # re-importing the same items is harmless
            return registry.save_version(
                session,
                checkpoint=agents.agent_to_bytes(agent),
                state_dim=width,
                n_actions=N_ITEMS,
                config=agents.config_dict(agent.config),
                metrics={},
                source="pretrain",
                n_updates=0,
                activate=True,
            ).version
    finally:
        engine.dispose()


@pytest.fixture
def client_factory() -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(settings: Settings) -> TestClient:
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------ the README's flow
def test_readme_own_data_flow_learns_the_width(
    plain_env: Path, database_url: str, capsys: pytest.CaptureFixture[str], client_factory: Any
) -> None:
    """README "Your own data", literally, with 5-feature logs and no variable but DATABASE_URL."""
    _write_dataset(plain_env)
    assert _cli(capsys, "migrate")[0] == 0
    assert _cli(capsys, "import", "--items", "items.csv")[0] == 0
    code, err = _cli(capsys, "import", "logs.csv", "--quiet")
    assert code == 0, err
    code, err = _cli(capsys, "pretrain", "--steps", "20")
    assert code == 0, err
    _write_dataset(plain_env, width=6, name="other.csv")
    code, err = _cli(capsys, "import", "other.csv", "--quiet")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error") and line.endswith(
        ": the imported logs have 5 features (from logs.csv), other.csv has 6: import logs with 5 features, "
        "or use a new database (DATABASE_URL) for 6-feature data"
    )
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        assert shape.stored_state_dim(session) == WIDTH
        assert shape.resolve_state_dim(Settings(), session) == WIDTH
        assert registry.list_versions(session)[0].state_dim == WIDTH
    engine.dispose()

    client = client_factory(Settings())  # what `python -m service serve` builds from this environment
    assert client.get("/readyz").json() == {"status": "ready", "model_version": 1, "problems": []}
    answer = client.post("/act", json={"state": [0.1] * WIDTH, "k": 2})
    assert answer.status_code == 200, answer.text
    wrong = client.post("/act", json={"state": [0.1] * 17})
    assert wrong.status_code == 422
    assert wrong.json()["detail"][0] == {
        "msg": "state must have 5 values (the served model's state width), got 17",
        "type": "InvalidInputError",
        "loc": ["body", "state"],
        "field": "state",
    }


def test_pretrain_with_a_disagreeing_setting_is_one_line(
    plain_env: Path, database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(database_url)
    monkeypatch.setenv("DQFD_STATE_DIM", "7")
    code, err = _cli(capsys, "pretrain", "--steps", "5")
    assert code == 2
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error") and line.endswith(
        ": DQFD_STATE_DIM=7 but the imported logs have 5 features (from logs.csv): unset DQFD_STATE_DIM "
        "(the width is learned from the logs) or set it to 5"
    )
    monkeypatch.setenv("DQFD_STATE_DIM", "5")  # agreeing with the logs is fine
    code, err = _cli(capsys, "pretrain", "--steps", "5")
    assert code == 0, err


def test_pretrain_before_any_logs_says_to_import_them(settings_factory: Any) -> None:
    settings = settings_factory(state_dim=None)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            with pytest.raises(StateWidthUnknownError) as caught:
                shape.resolve_state_dim(settings, session)
            assert shape.resolve_state_dim(settings.model_copy(update={"state_dim": 4}), session) == 4
    finally:
        engine.dispose()
    assert caught.value.message == (
        "the state width is not known yet: import the logged interactions first "
        "(python -m service import logs.csv), or set DQFD_STATE_DIM"
    )


# ------------------------------------------------------------------------------ recording
def test_record_state_dim_keeps_the_first_width(database_url: str) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    try:
        with session_scope(sessions) as session:
            assert shape.stored_state_dim(session) is None
            shape.record_state_dim(session, 5, "logs.csv")
            shape.record_state_dim(session, 5, "more.csv")  # same width: nothing changes
        with sessions() as session:
            assert shape.stored_state_dim(session) == 5
            assert shape.stored_state_dim_source(session) == "logs.csv"
        with session_scope(sessions) as session:
            session.execute(insert(LoggedInteraction), [_logged_row("s", 0, 5)])
        with sessions() as session, pytest.raises(StateWidthMismatchError) as caught:
            shape.record_state_dim(session, 6, "other.csv")
        assert caught.value.message == (
            "the imported logs have 5 features (from logs.csv), other.csv has 6: import logs with 5 "
            "features, or use a new database (DATABASE_URL) for 6-feature data"
        )
        # With the old logs deleted, the next import starts over with its own width.
        with session_scope(sessions) as session:
            session.execute(delete(LoggedInteraction))
            shape.record_state_dim(session, 6, "other.csv")
        with sessions() as session:
            assert shape.stored_state_dim(session) == 6
            assert shape.stored_state_dim_source(session) == "other.csv"
    finally:
        engine.dispose()


def _logged_row(session_id: str, step: int, width: int) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "step": step,
        "state": np.full(width, 0.5, dtype=np.float32).tobytes(),
        "item_id": "item-0",
        "reward": 0.0,
        "done": False,
    }


def test_migration_backfills_the_width_of_existing_logs(database_url: str) -> None:
    config = migrate.alembic_config(database_url)
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    try:
        command.downgrade(config, "0001")
        migrate.upgrade(database_url)
        with sessions() as session:  # no logs: nothing recorded
            assert shape.stored_state_dim(session) is None
        command.downgrade(config, "0001")
        with engine.begin() as conn:
            conn.execute(insert(LoggedInteraction), [_logged_row("s", 0, 7), _logged_row("s", 1, 7)])
        migrate.upgrade(database_url)
        with sessions() as session:
            assert shape.stored_state_dim(session) == 7
            assert shape.stored_state_dim_source(session) == "the logs already in the database"
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ serving
def _not_ready(client: TestClient) -> list[str]:
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "retry-after" not in response.headers  # waiting does not fix a width disagreement
    return response.json()["problems"]


def _act_503(client: TestClient, width: int) -> str:
    response = client.post("/act", json={"state": [0.1] * width})
    assert response.status_code == 503
    assert "retry-after" not in response.headers
    message = response.json()["detail"][0]["msg"]
    assert "retry" not in message.replace("retrain", "")
    return message


def test_model_disagreeing_with_the_logs_is_reported_and_fixed_by_a_retrain(
    database_url: str, client_factory: Any
) -> None:
    settings = make_settings(database_url, state_dim=None)
    _seed(database_url)
    _save_model(settings, 4)
    client = client_factory(settings)
    expected = (
        "the active model version 1 takes 4 features but the imported logs have 5 features "
        f"(from logs.csv): {RETRAIN}"
    )
    assert _not_ready(client) == [expected]
    assert _act_503(client, 4) == expected
    assert _act_503(client, 5) == expected
    job = client.post("/admin/retrain", json={"steps": 20, "activate": True}, headers=admin_headers())
    assert job.status_code == 202
    wait_for(lambda: client.post("/act", json={"state": [0.1] * WIDTH}).status_code == 200, timeout=60)
    # A model poll that read the active version just before the retrain's commit and the version list
    # just after it reports a fallback to version 2; the next poll (DQFD_MODEL_POLL_S) sees version 2
    # active and clears it.
    wait_for(lambda: client.get("/readyz").json()["problems"] == [], timeout=30)
    assert client.get("/readyz").json() == {"status": "ready", "model_version": 2, "problems": []}


def test_model_disagreeing_with_the_setting_is_reported(database_url: str, client_factory: Any) -> None:
    settings = make_settings(database_url, state_dim=6, role="api")
    _save_model(settings, 4)  # and no logs imported: DQFD_STATE_DIM is the width
    client = client_factory(settings)
    expected = (
        "the active model version 1 takes 4 features but DQFD_STATE_DIM=6: set DQFD_STATE_DIM=4 or "
        "unset it, or import 6-feature logs and retrain"
    )
    assert _not_ready(client) == [expected]
    assert _act_503(client, 6) == expected


def test_setting_disagreeing_with_the_logs_is_reported(database_url: str, client_factory: Any) -> None:
    settings = make_settings(database_url, state_dim=7, role="api")
    _seed(database_url)
    _save_model(settings, WIDTH)
    client = client_factory(settings)
    expected = (
        "DQFD_STATE_DIM=7 but the imported logs have 5 features (from logs.csv): unset DQFD_STATE_DIM "
        "(the width is learned from the logs) or set it to 5"
    )
    assert _not_ready(client) == [expected]
    assert _act_503(client, 7) == expected


def test_before_the_first_model_the_503_is_retryable(database_url: str, client_factory: Any) -> None:
    client = client_factory(make_settings(database_url, state_dim=None, role="api"))
    response = client.post("/act", json={"state": [0.1] * WIDTH})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["detail"][0]["msg"] == "no model has been trained yet; retry shortly"
    assert client.get("/readyz").json()["problems"] == ["no model loaded"]
