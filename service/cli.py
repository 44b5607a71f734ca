"""Command line: ``python -m service migrate|import|pretrain|serve|worker|status|quickstart``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from service.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "database_url", None):
        os.environ["DATABASE_URL"] = args.database_url
    return Settings()


def _migrate_and_bootstrap(settings: Settings) -> None:
    """alembic upgrade head, then the catalogue from DQFD_ITEMS_PATH if the items table is empty."""
    from service import migrate
    from service.catalogue import bootstrap_catalogue
    from service.db import make_engine, make_session_factory, session_scope

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
    from service import migrate

    settings = _settings(args)
    _migrate_and_bootstrap(settings)
    print(f"database at revision {migrate.current(settings.database_url)}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import a catalogue and/or logged interactions."""
    from service.catalogue import import_items
    from service.db import make_engine, make_session_factory, session_scope
    from service.importer import import_logs

    settings = _settings(args)
    engine = make_engine(settings.database_url)
    try:
        if args.items:
            with session_scope(make_session_factory(engine)) as session:
                added = import_items(session, args.items)
            print(f"catalogue: {added} new items")
        if args.logs:
            rows = import_logs(
                engine,
                args.logs,
                settings.state_dim,
                args.chunk_rows,
                args.create_items,
                progress=not args.quiet,
            )
            print(f"logged interactions: {rows} rows imported")
    finally:
        engine.dispose()
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain on the stored demonstrations and save a model version."""
    from service.db import make_engine, make_session_factory
    from service.trainer import Trainer

    settings = _settings(args)
    engine = make_engine(settings.database_url)
    try:
        trainer = Trainer(settings, engine, make_session_factory(engine))
        steps = settings.pretrain_steps if args.steps is None else args.steps
        version = trainer.run_job_now("pretrain", {"steps": steps, "activate": not args.no_activate})
        print(f"model version {version} saved{'' if args.no_activate else ' and activated'}")
    finally:
        engine.dispose()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Migrate, then serve the API with uvicorn."""
    import uvicorn

    from service.api.app import create_app

    settings = _settings(args)
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    if not args.no_migrate:
        _migrate_and_bootstrap(settings)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the trainer (jobs + online learning) in this process, for multi-replica deployments."""
    from service.db import make_engine, make_session_factory
    from service.trainer import Trainer

    settings = _settings(args)
    if not args.no_migrate:
        _migrate_and_bootstrap(settings)
    engine = make_engine(settings.database_url)
    trainer = Trainer(settings, engine, make_session_factory(engine))
    signal.signal(signal.SIGTERM, lambda *_: trainer._stop.set())
    try:
        trainer.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        engine.dispose()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the schema revision and the database counts as JSON."""
    from service import migrate
    from service.db import make_engine, make_session_factory
    from service.stats import database_stats

    settings = _settings(args)
    revision = migrate.current(settings.database_url)
    out: dict = {"database_url": settings.database_url, "revision": revision}
    if revision is not None:
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--database-url", help="overrides DATABASE_URL")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="alembic upgrade head").set_defaults(func=cmd_migrate)

    p = sub.add_parser("import", help="import items.csv and/or logged interactions (CSV/Parquet)")
    p.add_argument("logs", nargs="?", help="logged interactions file (.csv or .parquet)")
    p.add_argument("--items", help="catalogue file items.csv (imported first)")
    p.add_argument("--create-items", action="store_true", help="append unknown item ids to the catalogue")
    p.add_argument("--chunk-rows", type=int, default=50_000)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("pretrain", help="pretrain on the demonstrations, save a model version")
    p.add_argument("--steps", type=int)
    p.add_argument("--no-activate", action="store_true")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("serve", help="migrate and serve the HTTP API")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--no-migrate", action="store_true")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic.runtime.plugins", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    from service.errors import ServiceError

    try:
        return int(args.func(args) or 0)
    except ServiceError as exc:  # bad input files etc.: a clear message, not a traceback
        where = f" (field {exc.field})" if exc.field else ""
        print(f"error{where}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
