"""Faults: the database going away and coming back, and feedback surviving a kill -9 of the server."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from service.api.app import create_app
from service.quickstart import free_port
from service.settings import Settings
from service.store.db import is_sqlite, make_engine, make_session_factory
from service.store.models import Decision, Feedback
from tests.service.conftest import PG_URL, STATE, insert_decisions, wait_for

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def database_outage(url: str, engine) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Make the database unreachable for new and pooled connections, then bring it back."""
    if is_sqlite(url):
        path = Path(make_url(url).database)
        aside = path.with_suffix(".away")
        shutil.move(path, aside)
        path.mkdir()  # a directory where the file was: every connect fails
        engine.dispose()
        try:
            yield
        finally:
            path.rmdir()
            shutil.move(aside, path)
        return
    name = make_url(url).database
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def test_database_outage_gives_503_and_recovers(trained: Settings) -> None:
    with TestClient(create_app(trained.model_copy(update={"role": "api"}))) as client:
        event = client.post("/act", json={"state": STATE}).json()["event_id"]
        engine = client.app.state.service.engine
        with database_outage(trained.database_url, engine):
            act = client.post("/act", json={"state": STATE})
            assert act.status_code == 503 and act.headers["retry-after"]
            feedback = client.post("/feedback", json={"event_id": event, "reward": 1.0})
            assert feedback.status_code == 503
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "database" in ready.json()["problems"][0]
            assert client.get("/healthz").status_code == 200
        engine.dispose()  # SQLite: drop connections opened on the stand-in directory
        wait_for(lambda: client.post("/act", json={"state": STATE}).status_code == 200)
        assert client.post("/feedback", json={"event_id": event, "reward": 1.0}).status_code == 200
        assert client.get("/readyz").status_code == 200


def _server_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DQFD_")}
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "DQFD_STATE_DIM": str(settings.state_dim),
            "DQFD_HIDDEN_SIZES": "[16]",
            "DQFD_ROLE": "api",
            "DQFD_MODEL_POLL_S": "0.5",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def test_parallel_feedback_is_stored_once_and_survives_kill_9(trained: Settings, tmp_path: Path) -> None:
    """A real uvicorn subprocess: 1,000 feedback posts (200 events × 5 copies, shuffled) from 16
    parallel clients are all answered 2xx and stored exactly once; then kill -9 loses nothing."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--no-migrate", "--port", str(port)],
        cwd=tmp_path,  # nothing depends on the working directory but the URL
        env=_server_env(trained),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=90, interval=0.2)
        with httpx.Client(base_url=base, timeout=30, limits=httpx.Limits(max_connections=16)) as http:
            act = http.post("/act", json={"state": STATE, "session_id": "durable"})
            assert act.status_code == 200, act.text
            engine = make_engine(trained.database_url)
            events = [act.json()["event_id"], *insert_decisions(engine, 199)]
            engine.dispose()
            posts = [(event, float(i % 2)) for i, event in enumerate(events) for _ in range(5)]
            random.Random(0).shuffle(posts)

            def send(post: tuple[str, float]) -> int:
                return http.post(
                    "/feedback", json={"event_id": post[0], "reward": post[1], "done": True}
                ).status_code

            with ThreadPoolExecutor(max_workers=16) as pool:
                codes = list(pool.map(send, posts))
        assert len(codes) == 1000 and set(codes) == {200}
        server.send_signal(signal.SIGKILL)
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
        log.close()
    with make_session_factory(engine)() as session:
        assert session.scalar(select(func.count()).select_from(Decision)) == 200
        assert session.scalar(select(func.count()).select_from(Feedback)) == 200
        assert session.scalar(select(func.count(func.distinct(Feedback.event_id)))) == 200
        assert session.scalar(select(func.sum(Feedback.reward))) == 100.0
        first = session.query(Feedback).filter_by(event_id=events[0]).one()
        assert (first.reward, first.done) == (0.0, True)
    engine.dispose()
