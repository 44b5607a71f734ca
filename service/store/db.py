"""Engine and session factory, the database URL, and what a database error means for a request
(away → 503, a refused value → 422). The request-scoped session dependency lives in api/deps.py."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
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


def make_engine(
    url: str,
    pool_size: int = 10,
    *,
    connect_timeout_s: float = 10.0,
    statement_timeout_s: float | None = None,
    pool_timeout_s: float = 30.0,
) -> Engine:
    """An engine for ``url`` (a relative SQLite path resolved by :func:`resolve_database_url`); SQLite
    files get WAL mode, a busy timeout and their folder created. A URL of an unknown database kind or a
    missing driver is a :class:`DatabaseUrlError`.

    Timeouts (docs/service.md, "Database timeouts"): ``connect_timeout_s`` bounds opening a connection
    (libpq counts whole seconds, at least 2), ``pool_timeout_s`` the wait for a pooled connection, and
    ``statement_timeout_s`` (the API's engine only; None for the importer and trainer, whose COPY and
    demonstration loading may run long) every statement: PostgreSQL's ``statement_timeout`` and
    ``lock_timeout`` plus a TCP user timeout, SQLite's busy timeout (30 s without one). A server that is
    paused answers no statement timeout: :func:`interrupt_connections` is the client-side bound."""
    url = resolve_database_url(url)
    try:
        return _create_engine(url, pool_size, connect_timeout_s, statement_timeout_s, pool_timeout_s)
    except NoSuchModuleError as exc:
        kind = _parse(url).drivername
        raise DatabaseUrlError(f"DATABASE_URL: unknown database kind {kind!r} (use {EXAMPLE_URLS})") from exc
    except ModuleNotFoundError as exc:
        kind = _parse(url).drivername
        raise DatabaseUrlError(
            f"DATABASE_URL: the driver of {kind!r} is not installed ({exc.name}): use postgresql+psycopg:// "
            "for PostgreSQL (psycopg 3 is installed) or sqlite:///"
        ) from exc


def _create_engine(
    url: str, pool_size: int, connect_s: float, statement_s: float | None, pool_s: float
) -> Engine:
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        busy_s = statement_s if statement_s is not None else 30.0
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_s}, pool_timeout=pool_s
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets readers run beside the single writer; NORMAL sync is still durable at each
            # commit in WAL mode against process crashes (kill -9), which is the guarantee we give.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_s * 1000)}")
            cursor.close()

        return engine
    # Keepalives find a peer that vanished while the connection idles; TCP_USER_TIMEOUT one that stops
    # acknowledging what was sent (a network partition, a frozen host).
    connect_args: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(connect_s)),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }
    if statement_s is not None:
        ms = max(1, int(statement_s * 1000))
        given = make_url(url).query.get("options")  # the URL's own server options are kept
        given = f"{given} " if isinstance(given, str) and given else ""
        connect_args["options"] = f"{given}-c statement_timeout={ms} -c lock_timeout={ms}"
        if _libpq_version() >= 120000:  # libpq 12 added it
            connect_args["tcp_user_timeout"] = ms
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=pool_s,
        connect_args=connect_args,
    )
    connections: weakref.WeakSet[Any] = weakref.WeakSet()
    _CONNECTIONS[engine] = connections

    @event.listens_for(engine, "connect")
    def _track(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        connections.add(dbapi_connection)

    return engine


def _libpq_version() -> int:
    try:
        import psycopg

        return psycopg.pq.version()
    except Exception:  # another driver, or none: leave the option out
        return 0


_CONNECTIONS: weakref.WeakKeyDictionary[Engine, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()
"""The open DBAPI connections of each PostgreSQL engine (for :func:`interrupt_connections`)."""


def interrupt_connections(engine: Engine) -> int:
    """Shut down the socket of every open PostgreSQL connection of ``engine``; returns how many.

    The client-side bound for a server that hangs without closing (paused, frozen): libpq has no query
    timeout and the server enforces none while it is stopped, so a thread waiting on it would wait for
    the whole outage. Each waiting statement (or pre-ping) then fails at once with a disconnect error,
    SQLAlchemy discards the connection, and the next checkout opens a fresh one (bounded by the connect
    timeout): recovery needs nothing else. Called only once something waited past its bound."""
    connections = _CONNECTIONS.get(engine, ())
    count = 0
    for dbapi_connection in list(connections):
        with contextlib.suppress(Exception):  # closed meanwhile: nothing to interrupt
            if dbapi_connection.closed:
                continue
            sock = socket.socket(fileno=os.dup(dbapi_connection.pgconn.socket))
            try:
                sock.shutdown(socket.SHUT_RDWR)
                count += 1
            finally:
                sock.close()
    return count


def database_problem(engine: Engine, timeout_s: float) -> str | None:
    """None when ``engine``'s database answers ``SELECT 1`` within ``timeout_s``, else the problem (for
    ``/readyz``). The ping runs in a thread of its own, so the caller waits at most ``timeout_s``; a ping
    left waiting on a database that hangs is freed by :func:`interrupt_connections`."""
    outcome: list[Exception | None] = []
    done = threading.Event()

    def ping() -> None:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=ping, name="database-ping", daemon=True).start()
    if not done.wait(timeout_s):
        interrupt_connections(engine)
        return f"database: no answer within {timeout_s:g} s"
    error = outcome[0]
    return None if error is None else f"database unavailable: {type(error).__name__}"


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
