"""Command line: ``python -m service migrate|import|pretrain|serve|worker|status|quickstart|report``.

Every expected failure is one line on stderr, ``error: ...``, naming the file row and column, the
setting or the command to run first, and exits with status 2 (an unexpected one: status 1, with its
type); ``--debug`` shows the Python traceback instead. Each command names the database it uses once
(``database: ...``; ``status`` has it in its JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from service.settings import Settings

EXIT_ERROR = 2
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130

_database_url: str | None = None  # the database of the running command, for error messages


def _env_name(field: str) -> str:
    """The environment variable of a settings field."""
    return "DATABASE_URL" if field == "database_url" else f"DQFD_{field.upper()}"


def _settings(args: argparse.Namespace) -> Settings:
    """The settings (``--database-url`` wins over DATABASE_URL), with a relative SQLite path resolved
    against the project (:func:`service.store.db.resolve_database_url`); a bad value names its variable."""
    from pydantic import ValidationError

    from service.errors import InvalidInputError
    from service.store.db import resolve_database_url

    if getattr(args, "database_url", None):
        os.environ["DATABASE_URL"] = args.database_url
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = _env_name(str(first["loc"][0])) if first.get("loc") else "settings"
        value = first.get("input")
        shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
        raise InvalidInputError(f"{name}: {first['msg']}{shown}", field=name) from exc
    settings.database_url = resolve_database_url(settings.database_url)
    global _database_url
    _database_url = settings.database_url
    return settings


def _announce(settings: Settings) -> None:
    """Say which database the command uses (its password hidden)."""
    from service.store.db import display_url

    print(f"database: {display_url(settings.database_url)}", flush=True)


def _require_schema(settings: Settings) -> None:
    """The database exists and is migrated to the newest revision, else: run ``migrate`` first."""
    from service.store import migrate

    migrate.require_current(settings.database_url)


def _migrate_and_bootstrap(settings: Settings) -> None:
    """alembic upgrade head, then the catalogue from DQFD_ITEMS_PATH if the items table is empty."""
    from service.ingest.catalogue import bootstrap_catalogue
    from service.store import migrate
    from service.store.db import make_engine, make_session_factory, session_scope

    migrate.upgrade(settings.database_url)
    if settings.items_path:
        engine = make_engine(settings.database_url)
        try:
            with session_scope(make_session_factory(engine)) as session:
                added = bootstrap_catalogue(session, settings.items_path)
            if added:
                print(f"catalogue: {added} items imported from {settings.items_path}")
        finally:
            engine.dispose()


def cmd_migrate(args: argparse.Namespace) -> int:
    """alembic upgrade head."""
    from service.store import migrate

    settings = _settings(args)
    _announce(settings)
    _migrate_and_bootstrap(settings)
    print(f"database at revision {migrate.current(settings.database_url)}")
    return 0


def _existing_file(path: str, what: str) -> str:
    from service.errors import InvalidInputError

    if not Path(path).exists():
        raise InvalidInputError(f"{what}: no such file: {path}", field=what)
    if not Path(path).is_file():
        raise InvalidInputError(f"{what}: not a file: {path}", field=what)
    return path


def cmd_import(args: argparse.Namespace) -> int:
    """Import a catalogue and/or logged interactions (each all or nothing)."""
    from service.errors import InvalidInputError
    from service.ingest.catalogue import import_items
    from service.ingest.importer import import_logs_report
    from service.store.db import make_engine, make_session_factory, session_scope

    if not args.items and not args.logs:
        raise InvalidInputError("nothing to import: name a logs file (LOGS) and/or --items items.csv")
    items = _existing_file(args.items, "--items") if args.items else None
    logs = _existing_file(args.logs, "LOGS") if args.logs else None
    settings = _settings(args)
    _announce(settings)
    _require_schema(settings)
    engine = make_engine(settings.database_url)
    try:
        if items:
            with session_scope(make_session_factory(engine)) as session:
                added = _in_file(items, lambda: import_items(session, items))
            print(f"catalogue: {added} new items")
        if logs:
            report = _in_file(
                logs,
                lambda: import_logs_report(
                    engine,
                    logs,
                    settings.state_dim,  # None: learned from the file
                    args.chunk_rows,
                    args.create_items,
                    progress=not args.quiet,
                ),
            )
            created = (
                f", {report.items_created} new items added to the catalogue" if report.items_created else ""
            )
            skipped = f", {report.skipped} already imported (skipped)" if report.skipped else ""
            print(
                f"logged interactions: {report.imported} rows imported{skipped}{created}"
                + (f" (states of {report.state_dim} features)" if report.rows else "")
            )
    finally:
        engine.dispose()
    return 0


def _in_file(path: str, run):  # type: ignore[no-untyped-def]
    """``run()``, with an error's message prefixed by the file it is about (unless it names it)."""
    from service.errors import ServiceError

    try:
        return run()
    except ServiceError as exc:
        if path not in exc.message:
            exc.message = f"{path}: {exc.message}"
            exc.args = (exc.message,)
        raise


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain on the stored demonstrations and save a model version."""
    from service.learning.trainer import Trainer
    from service.store.db import make_engine, make_session_factory

    settings = _settings(args)
    _announce(settings)
    _require_schema(settings)
    engine = make_engine(settings.database_url)
    try:
        _require_data(engine)
        trainer = Trainer(settings, engine, make_session_factory(engine))
        steps = settings.pretrain_steps if args.steps is None else args.steps
        version = trainer.run_job_now("pretrain", {"steps": steps, "activate": not args.no_activate})
        print(f"model version {version} saved{'' if args.no_activate else ' and activated'}")
    finally:
        engine.dispose()
    return 0


def _require_data(engine) -> None:  # type: ignore[no-untyped-def]
    """A catalogue and logged interactions to pretrain on, else what to import."""
    from sqlalchemy import func, select

    from service.errors import InvalidInputError
    from service.store.models import Item, LoggedInteraction

    with engine.connect() as conn:
        if not conn.scalar(select(func.count()).select_from(Item)):
            raise InvalidInputError(
                "the catalogue is empty: import it first (python -m service import --items items.csv)",
                field="items",
            )
        if conn.scalar(select(LoggedInteraction.id).limit(1)) is None:
            raise InvalidInputError(
                "no logged interactions to pretrain on: import them first "
                "(python -m service import logs.csv)",
                field="logs",
            )


def cmd_serve(args: argparse.Namespace) -> int:
    """Migrate, then serve the API with uvicorn."""
    import uvicorn

    from service.api.app import create_app

    settings = _settings(args)
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    if args.no_access_log:
        settings.access_log = False
    _announce(settings)
    if args.no_migrate:
        _require_schema(settings)
    else:
        _migrate_and_bootstrap(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=settings.access_log,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the trainer (jobs + online learning) in this process, for multi-replica deployments."""
    from service.learning.trainer import Trainer
    from service.store.db import make_engine, make_session_factory

    settings = _settings(args)
    _announce(settings)
    if args.no_migrate:
        _require_schema(settings)
    else:
        _migrate_and_bootstrap(settings)
    engine = make_engine(settings.database_url)
    trainer = Trainer(settings, engine, make_session_factory(engine))

    def stop_gracefully(*_: object) -> None:
        # SIGTERM or a first Ctrl-C: the loop stops at its next check and saves its unsaved online updates
        # (an interrupt in the middle of an update could not); a second Ctrl-C interrupts at once.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        trainer._stop.set()

    signal.signal(signal.SIGTERM, stop_gracefully)
    signal.signal(signal.SIGINT, stop_gracefully)
    if settings.metrics_port is not None:  # no HTTP API here: the trainer's metrics get a port of their own
        from service.metrics_exposition import configured_token, start_server

        start_server(settings.host, settings.metrics_port, configured_token(settings.metrics_token))
    try:
        trainer.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        engine.dispose()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the schema revision and the database counts as JSON."""
    from service.store.db import display_url, make_engine, make_session_factory
    from service.store.stats import database_stats

    settings = _settings(args)
    _require_schema(settings)
    from service.store import migrate

    out: dict = {"database_url": display_url(settings.database_url)}
    out["revision"] = migrate.current(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            out.update(database_stats(session))
    finally:
        engine.dispose()
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Migrate, create example data, pretrain, serve (``--check``: one round trip, then exit)."""
    from service import quickstart

    settings = _settings(args)
    if args.pretrain_steps is not None:
        settings.pretrain_steps = args.pretrain_steps
    quickstart.prepare(settings, n_sessions=args.sessions, n_items=args.items)
    return quickstart.serve(settings, check=args.check, port=args.port)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the dashboard's curves for a time range as a PNG or HTML report (``service/report.py``)."""
    from datetime import UTC, datetime

    from service import report
    from service.store.db import make_engine, make_session_factory

    now = datetime.now(UTC)
    until = report.parse_time(args.until, "--until", now)
    since = report.parse_time(args.since, "--since", now) if args.since else until - report.DEFAULT_SPAN
    out = report.check_out(args.out)
    settings = _settings(args)
    _announce(settings)
    _require_schema(settings)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            data = report.write_report(session, since, until, args.buckets, out)
    finally:
        engine.dispose()
    print(f"report: {out} ({sum(data['decisions'])} decisions, {len(data['per_version'])} model versions)")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m service", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        help="overrides DATABASE_URL (default sqlite:///data/service.db: a relative SQLite path is "
        "relative to the project folder, not to the working directory)",
    )
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="alembic upgrade head").set_defaults(func=cmd_migrate)

    p = sub.add_parser("import", help="import items.csv and/or logged interactions (CSV/Parquet)")
    p.add_argument("logs", nargs="?", help="logged interactions file (.csv or .parquet)")
    p.add_argument("--items", help="catalogue file items.csv (imported first)")
    p.add_argument("--create-items", action="store_true", help="append unknown item ids to the catalogue")
    p.add_argument("--chunk-rows", type=_positive, default=50_000, help="rows read per chunk")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("pretrain", help="pretrain on the demonstrations, save a model version")
    p.add_argument("--steps", type=_positive)
    p.add_argument("--no-activate", action="store_true")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("serve", help="migrate and serve the HTTP API")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--no-migrate", action="store_true")
    p.add_argument(
        "--no-access-log", action="store_true", help="no log line per request (DQFD_ACCESS_LOG=false)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run the trainer alone (role worker)")
    p.add_argument("--no-migrate", action="store_true")
    p.set_defaults(func=cmd_worker)

    sub.add_parser("status", help="schema revision and table counts").set_defaults(func=cmd_status)

    p = sub.add_parser("quickstart", help="example data + pretrain + serve on 127.0.0.1:8000")
    p.add_argument("--check", action="store_true", help="serve on a free port, one /act + /feedback, exit")
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--sessions", type=int, default=300, help="example sessions to generate")
    p.add_argument("--items", type=int, default=20, help="example catalogue size")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("report", help="the dashboard's curves for a time range as PNG or HTML")
    p.add_argument(
        "--since", help="start, ISO 8601 (UTC when no offset is given); default: an hour before --until"
    )
    p.add_argument("--until", default="now", help="end, ISO 8601 or 'now' (the default)")
    p.add_argument(
        "--buckets", type=_positive, default=60, help="time buckets (points per curve, at most 500)"
    )
    p.add_argument("--out", required=True, help="report.html (plots and tables) or report.png (plots)")
    p.set_defaults(func=cmd_report)
    return parser


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The one line an error is reported as (without the ``error: `` prefix) and the exit status."""
    from sqlalchemy.exc import DBAPIError

    from service.errors import ServiceError, StateWidthError
    from service.store.db import DatabaseUrlError
    from service.store.migrate import MIGRATE_HINT

    if isinstance(exc, ServiceError):
        message = exc.message
        plain = isinstance(exc, StateWidthError | DatabaseUrlError) or message.startswith(("row ", "rows "))
        if exc.field and exc.field != "path" and not plain and exc.field not in message:
            message = f"{exc.field}: {message}"
        return message, EXIT_ERROR
    if isinstance(exc, DBAPIError):
        from service.store.db import display_url

        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if "no such table" in detail or sqlstate == "42P01":  # the schema is missing
            return f"the database has no tables yet ({detail}): {MIGRATE_HINT}", EXIT_ERROR
        where = f" {display_url(_database_url)}" if _database_url else ""
        return (
            f"DATABASE_URL: cannot use the database{where}: {detail} (check the URL, and "
            "that the server is running and answers)",
            EXIT_ERROR,
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}", EXIT_ERROR
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{text} ({type(exc).__name__}; run with --debug for the traceback)", EXIT_UNEXPECTED


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; errors are one line (``--debug``: the traceback)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic.runtime.plugins", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        line, status = describe_error(exc)
        print("error: " + " ".join(line.split()), file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
