"""A database that hangs (PostgreSQL paused behind a proxy that stops forwarding, SQLite held locked)
costs a request at most the documented bound (2 s), then a 503 with Retry-After; recovery is automatic.

The wall-time checks are correctness bounds with a generous slack (6 s against the 2 s bound), not
benchmarks: without the timeouts these requests wait for the whole outage.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from service.settings import Settings
from service.store.db import is_sqlite, make_engine, sqlite_path
from tests.service.conftest import STATE, LiveServer, wait_for

BOUND_S = 2.0  # the default of every database timeout (docs/service.md, "Database timeouts")
SLACK_S = 6.0


class PausableProxy:
    """A TCP proxy on 127.0.0.1 to ``upstream`` that can be paused: it then holds every byte it reads,
    in both directions, and closes nothing, like a server that is stopped (SIGSTOP, docker pause)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.flowing = threading.Event()
        self.flowing.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()  # paused: the bytes are held, nothing is sent or closed
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.flowing.set()
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@contextmanager
def proxied(url: str) -> Iterator[tuple[PausableProxy, str]]:
    parsed = make_url(url)
    proxy = PausableProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    try:
        yield proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.close()


def timed(call):  # type: ignore[no-untyped-def]
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def reward(event: str) -> dict[str, object]:
    return {"event_id": event, "reward": 1.0}


def assert_fails_fast(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert response.headers.get("retry-after"), response.headers
    assert elapsed < SLACK_S, f"{response.request.url.path} took {elapsed:.1f} s against a {BOUND_S} s bound"


@pytest.mark.timeout(120)
def test_paused_postgres_gives_503_within_the_bound_and_recovers(trained: Settings) -> None:
    if is_sqlite(trained.database_url):
        pytest.skip("a paused server is a PostgreSQL fault; SQLite's hang is a held lock (test below)")
    with proxied(trained.database_url) as (proxy, url):
        settings = trained.model_copy(update={"role": "api", "database_url": url})
        with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            first = client.post("/act", json={"state": STATE})
            assert first.status_code == 200, first.text
            event = first.json()["event_id"]
            assert client.get("/readyz").status_code == 200

            proxy.flowing.clear()
            act, elapsed = timed(lambda: client.post("/act", json={"state": STATE}))
            assert_fails_fast(act, elapsed)
            msg = act.json()["detail"][0]["msg"]  # the 2 s wait, or libpq's 2 s connect timeout first
            assert "did not answer within 2 s" in msg or "database is unavailable" in msg, msg
            feedback, elapsed = timed(
                lambda: client.post("/feedback", json={"event_id": event, "reward": 1.0})
            )
            assert_fails_fast(feedback, elapsed)
            ready, elapsed = timed(lambda: client.get("/readyz"))
            assert_fails_fast(ready, elapsed)
            # The readiness ping either waits out the 2 s bound or, when libpq's own 2 s connect timeout
            # fires first (a race between two equal clocks), fails with it: both are a fast database 503.
            problems = ready.json()["problems"]
            assert any(
                p == "database: no answer within 2 s" or p.startswith("database unavailable: ")
                for p in problems
            ), problems
            assert client.get("/healthz").status_code == 200

            proxy.flowing.set()
            wait_for(lambda: client.post("/act", json={"state": STATE}).status_code == 200, timeout=30)
            posted = client.post("/feedback", json={"event_id": event, "reward": 1.0})
            assert posted.status_code == 200, posted.text
            wait_for(lambda: client.get("/readyz").status_code == 200, timeout=30)


@pytest.mark.timeout(120)
def test_locked_sqlite_gives_503_within_the_bound_and_recovers(trained: Settings) -> None:
    path = sqlite_path(trained.database_url)
    if path is None:
        pytest.skip("a held write lock is SQLite's hang; PostgreSQL's is the paused server (test above)")
    settings = trained.model_copy(update={"role": "api"})
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        event = client.post("/act", json={"state": STATE}).json()["event_id"]
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the write lock, held as by a stuck writer
            act, elapsed = timed(lambda: client.post("/act", json={"state": STATE}))
            assert_fails_fast(act, elapsed)
            feedback, elapsed = timed(
                lambda: client.post("/feedback", json={"event_id": event, "reward": 1.0})
            )
            assert_fails_fast(feedback, elapsed)
            assert client.get("/readyz").status_code == 200  # readers are not blocked by a writer (WAL)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_for(lambda: client.post("/act", json={"state": STATE}).status_code == 200, timeout=30)
        assert client.post("/feedback", json={"event_id": event, "reward": 1.0}).status_code == 200


def test_statement_timeout_is_the_api_engines_only(database_url: str) -> None:
    """The API's engine bounds every statement; the importer's and trainer's (no timeouts given) do not,
    so a long COPY or demonstration load is never killed."""
    api = make_engine(database_url, connect_timeout_s=2, statement_timeout_s=2, pool_timeout_s=2)
    offline = make_engine(database_url)
    try:
        if is_sqlite(database_url):
            query, bounded, unbounded = "PRAGMA busy_timeout", 2000, 30000
        else:
            query, bounded, unbounded = "SHOW statement_timeout", "2s", "0"
        with api.connect() as conn:
            assert conn.execute(text(query)).scalar() == bounded
        with offline.connect() as conn:
            assert conn.execute(text(query)).scalar() == unbounded
        if not is_sqlite(database_url):
            with offline.connect() as conn:  # a statement longer than the API's bound completes
                assert conn.execute(text("SELECT pg_sleep(2.5), 1")).one()[1] == 1
            with api.connect() as conn, pytest.raises(Exception, match="statement timeout"):
                conn.execute(text("SELECT pg_sleep(2.5)"))
    finally:
        api.dispose()
        offline.dispose()
