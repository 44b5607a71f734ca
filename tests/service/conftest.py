"""Fixtures: every database test runs on SQLite and PostgreSQL, against a migrated schema.

PostgreSQL comes from ``TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``):
one uniquely named database is created per test session and dropped at its end. Without a reachable
server those tests are skipped, unless ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.engine import make_url

from service.ingest.catalogue import import_items
from service.ingest.importer import import_logs
from service.ingest.synthetic import generate_logs, make_items
from service.learning.trainer import Trainer
from service.settings import Settings
from service.store import migrate, registry
from service.store.db import make_engine, make_session_factory, session_scope
from service.store.features import encode_state
from service.store.models import Base, Decision, utcnow

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
STATE_DIM = 4
N_ITEMS = 5
STATE = [0.1, -0.2, 0.3, 0.0]
ADMIN_TOKEN = "test-admin-token"


def _postgres_unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI: {reason}")
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:  # fold the WAL into the main file so one copy is complete
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str | None]:
    """A fresh, migrated PostgreSQL database for this test session (None if unreachable)."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"svc_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        yield None if os.environ.get("CI", "").lower() != "true" else f"error:{exc}"
        return
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _truncate_postgres(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """The URL of an empty, migrated database of each kind."""
    if request.param == "sqlite":
        path = tmp_path / "service.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgres_database")
    if url is None or url.startswith("error:"):
        _postgres_unavailable(url or "connection refused")
    _truncate_postgres(url)
    yield url


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Tiny, fast settings for tests (real agent, small network, few steps)."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "state_dim": STATE_DIM,
        "hidden_sizes": (16,),
        "batch_size": 8,
        "n_step": 3,
        "target_update_period": 20,
        "replay_capacity": 1000,
        "learning_rate": 1e-3,
        "pretrain_steps": 30,
        "seed": 0,
        "epsilon": 0.1,
        "admin_token": ADMIN_TOKEN,
        "model_poll_s": 0.2,
        "trainer_poll_s": 0.05,
        "publish_every_updates": 5,
        "publish_every_s": 0.5,
        "save_every_updates": 1000,
        "reward_window_s": 600.0,
        "db_pool_size": 20,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings_factory(database_url: str) -> Callable[..., Settings]:
    """Build test settings for this test's database with overrides."""
    return lambda **overrides: make_settings(database_url, **overrides)


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    """Default test settings."""
    return settings_factory()


def seed_database(url: str, n_sessions: int = 20, seed: int = 0) -> int:
    """A 5-item catalogue and synthetic logged interactions; returns the number of rows."""
    engine = make_engine(url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            import_items(session, make_items(N_ITEMS))
        frame = generate_logs(n_sessions, STATE_DIM, N_ITEMS, seed=seed)
        return import_logs(engine, frame, STATE_DIM, chunk_rows=64, progress=False)
    finally:
        engine.dispose()


def pretrain_model(settings: Settings, steps: int = 30, activate: bool = True) -> int:
    """Pretrain a tiny model on the stored demonstrations; returns its version."""
    engine = make_engine(settings.database_url)
    try:
        trainer = Trainer(settings, engine, make_session_factory(engine))
        return trainer.run_job_now("pretrain", {"steps": steps, "activate": activate}, progress=False)
    finally:
        engine.dispose()


def save_version_in(
    session: Any,
    checkpoint: bytes,
    *,
    n_actions: int = N_ITEMS,
    source: str = "manual",
    activate: bool = False,
) -> int:
    """A model version with these checkpoint bytes written straight into ``model_versions`` in
    ``session`` (no training, empty config and metrics); returns its number."""
    return registry.save_version(
        session,
        checkpoint=checkpoint,
        state_dim=STATE_DIM,
        n_actions=n_actions,
        config={},
        metrics={},
        source=source,
        n_updates=0,
        activate=activate,
    ).version


def save_version(
    settings: Settings, checkpoint: bytes, *, n_actions: int = N_ITEMS, activate: bool = False
) -> int:
    """``save_version_in`` in its own session on the database of ``settings``; returns the version."""
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            return save_version_in(session, checkpoint, n_actions=n_actions, activate=activate)
    finally:
        engine.dispose()


def active_version(settings: Settings) -> int | None:
    """The number of the active model version in the database of ``settings`` (None: none is)."""
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            return registry.active_version_number(session)
    finally:
        engine.dispose()


def decision_row(
    event: str,
    *,
    state: list[float] = STATE,
    created_at: datetime | None = None,
    built: bool = False,
    **columns: Any,
) -> dict[str, Any]:
    """One ``decisions`` row of ``state`` (item 0, logged by version 1) for a direct insert;
    ``columns`` adds or overrides columns."""
    return {
        "event_id": event,
        "session_id": None,
        "step": 0,
        "state": encode_state(state),
        "ranking": [],
        "item_id": "item-0",
        "action_index": 0,
        "propensity": 1.0,
        "explored": False,
        "model_version": 1,
        "policy_revision": 0,
        "created_at": created_at or utcnow(),
        "transition_built": built,
        **columns,
    }


def insert_decisions(
    engine: Engine,
    n: int,
    *,
    created_at: datetime | None = None,
    built: bool = False,
    state: list[float] = STATE,
) -> list[str]:
    """``n`` decisions of ``state`` written straight to the database, for tests of the feedback and
    learning paths only; returns their event ids."""
    events = [uuid.uuid4().hex for _ in range(n)]
    with engine.begin() as conn:
        conn.execute(
            insert(Decision),
            [decision_row(event, state=state, created_at=created_at, built=built) for event in events],
        )
    return events


@pytest.fixture
def seeded(settings: Settings) -> Settings:
    """A database with the catalogue and demonstrations."""
    seed_database(settings.database_url)
    return settings


@pytest.fixture
def trained(seeded: Settings) -> Settings:
    """A database with demonstrations and an active pretrained model version 1."""
    pretrain_model(seeded)
    return seeded


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy (returns its value) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def admin_headers() -> dict[str, str]:
    """The admin bearer header of the test settings."""
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class LiveServer:
    """A real uvicorn server for the app on a free 127.0.0.1 port, in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        import threading

        import uvicorn

        from service.api.app import create_app
        from service.quickstart import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", limit_concurrency=200
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), timeout=60)
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
