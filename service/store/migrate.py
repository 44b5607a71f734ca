"""Runs the Alembic migrations programmatically (the only way the schema is created)."""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from service.errors import ServiceError
from service.store.db import PROJECT_ROOT, display_url, resolve_database_url, sqlite_path

ROOT = PROJECT_ROOT
"""The folder of alembic.ini and migrations/: the source checkout, or the working directory of a plain
install (see :data:`service.store.db.PROJECT_ROOT`)."""

MIGRATE_HINT = "run `python -m service migrate` first"


class NotMigratedError(ServiceError):
    """The database has no tables, or an older schema, than this version of the service needs."""


def alembic_config(url: str) -> Config:
    """An Alembic config for this repository's migrations, pointed at ``url``."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", resolve_database_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """``alembic upgrade head`` against ``url``."""
    command.upgrade(alembic_config(url), revision)


def head(url: str) -> str | None:
    """The newest revision of the migrations (what ``upgrade`` brings a database to)."""
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current(url: str) -> str | None:
    """The revision the database is at, or None for an unmigrated database."""
    from alembic.runtime.migration import MigrationContext

    from service.store.db import make_engine

    engine = make_engine(url)
    chatty = logging.getLogger("alembic.runtime.migration")
    level = chatty.level
    chatty.setLevel(max(level, logging.WARNING))  # "Context impl SQLiteImpl." on every command is noise
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        chatty.setLevel(level)
        engine.dispose()


def require_current(url: str) -> str:
    """The database's revision when it is the newest; else :class:`NotMigratedError` saying to migrate.

    A missing SQLite file is reported without creating it."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise NotMigratedError(f"no database at {path} (DATABASE_URL={display_url(url)}): {MIGRATE_HINT}")
    revision = current(url)
    if revision is None:
        raise NotMigratedError(f"the database {display_url(url)} has no tables yet: {MIGRATE_HINT}")
    newest = head(url)
    if revision != newest:
        raise NotMigratedError(
            f"the database {display_url(url)} is at schema revision {revision}, this version of the service "
            f"needs {newest}: run `python -m service migrate`"
        )
    return revision
