"""The schema comes only from the Alembic migrations, and they agree with the ORM models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from service.store import migrate
from service.store.db import make_engine
from service.store.models import Base


def test_models_and_migrations_agree(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert diff == []
    assert {t.name for t in Base.metadata.sorted_tables} <= tables


def test_database_is_at_head(database_url: str) -> None:
    head = ScriptDirectory.from_config(migrate.alembic_config(database_url)).get_current_head()
    assert migrate.current(database_url) == head
    migrate.upgrade(database_url)  # a second upgrade is a no-op
    assert migrate.current(database_url) == head
