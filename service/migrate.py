"""Runs the Alembic migrations programmatically (the only way the schema is created)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config


def _root() -> Path:
    # The source checkout (editable install, or `python -m service` from it); a non-editable install
    # run elsewhere finds alembic.ini and migrations/ in the working directory.
    source = Path(__file__).resolve().parent.parent
    return source if (source / "alembic.ini").exists() else Path.cwd()


ROOT = _root()


def alembic_config(url: str) -> Config:
    """An Alembic config for this repository's migrations, pointed at ``url``."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """``alembic upgrade head`` against ``url``."""
    command.upgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    """The revision the database is at, or None for an unmigrated database."""
    from alembic.runtime.migration import MigrationContext

    from service.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
