"""Engine and session factory, the database URL, and what a database error means for a request
(away → 503, a refused value → 422). The request-scoped session dependency lives in api/deps.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    NoSuchModuleError,
    OperationalError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from service.errors import InvalidInputError, UnavailableError

EXAMPLE_URLS = "sqlite:///data/service.db or postgresql+psycopg://user:password@host:5432/db"


def _project_root() -> Path:
    """The source checkout (the folder of pyproject.toml and alembic.ini) when the package runs from one
    (editable install, or ``python -m service`` in it); else the working directory (a plain install,
    e.g. the Docker image, run from the folder that holds alembic.ini)."""
    source = Path(__file__).resolve().parents[2]  # service/store/db.py → the checkout
    return source if (source / "alembic.ini").exists() else Path.cwd()


PROJECT_ROOT = _project_root()
"""What a relative SQLite path in ``DATABASE_URL`` is relative to (never the working directory of a
checkout: every command finds the same database wherever it is run from)."""


class DatabaseUrlError(InvalidInputError):
    """``DATABASE_URL`` is not a usable database URL; the message names the setting and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="DATABASE_URL")


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseUrlError(f"DATABASE_URL {url!r} is not a database URL (use {EXAMPLE_URLS})") from exc


def resolve_database_url(url: str) -> str:
    """``url`` with a relative SQLite path made absolute against :data:`PROJECT_ROOT`; other URLs as
    given. ``sqlite:///data/service.db`` (the default) is ``<project>/data/service.db`` whatever the
    working directory. Raises :class:`DatabaseUrlError` for a string that is not a URL."""
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite":
        return url
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:") or Path(database).is_absolute():
        return url
    return parsed.set(database=str(PROJECT_ROOT / database)).render_as_string(hide_password=False)


def display_url(url: str) -> str:
    """``url`` resolved and with its password hidden, for messages and logs."""
    try:
        return make_url(resolve_database_url(url)).render_as_string(hide_password=True)
    except InvalidInputError:
        return "<not a URL>"


def is_sqlite(url: str) -> bool:
    """Whether ``url`` names an SQLite database."""
    return _parse(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (resolved), None for other databases and in-memory SQLite."""
    parsed = _parse(resolve_database_url(url))
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    return Path(database)


def make_engine(url: str, pool_size: int = 10) -> Engine:
    """An engine for ``url`` (a relative SQLite path resolved by :func:`resolve_database_url`); SQLite
    files get WAL mode, a busy timeout and their folder created. A URL of an unknown database kind or a
    missing driver is a :class:`DatabaseUrlError`."""
    url = resolve_database_url(url)
    try:
        return _create_engine(url, pool_size)
    except NoSuchModuleError as exc:
        kind = _parse(url).drivername
        raise DatabaseUrlError(f"DATABASE_URL: unknown database kind {kind!r} (use {EXAMPLE_URLS})") from exc
    except ModuleNotFoundError as exc:
        kind = _parse(url).drivername
        raise DatabaseUrlError(
            f"DATABASE_URL: the driver of {kind!r} is not installed ({exc.name}): use postgresql+psycopg:// "
            "for PostgreSQL (psycopg 3 is installed) or sqlite:///"
        ) from exc


def _create_engine(url: str, pool_size: int) -> Engine:
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets readers run beside the single writer; NORMAL sync is still durable at each
            # commit in WAL mode against process crashes (kill -9), which is the guarantee we give.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (handlers read them after committing)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session committed on success and rolled back on error (for jobs and the trainer)."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database itself is away (locked, unreachable, pool exhausted) rather
    than that a statement's values were refused."""
    if isinstance(exc, OperationalError | PoolTimeout | UnavailableError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def rejected_row(exc: Exception) -> Exception:
    """The error a request gets when the database refused its row: values it cannot store (a NUL
    byte, a number out of the column's range) are the client's fault (422); anything else stays as
    it is."""
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    if isinstance(exc, DataError) or isinstance(cause, ValueError | OverflowError | TypeError):
        reason = str(cause).splitlines()[0][:200] if str(cause) else type(cause).__name__
        return InvalidInputError(f"the database cannot store a value of this request: {reason}")
    return exc
