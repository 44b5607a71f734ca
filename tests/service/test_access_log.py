"""``serve --no-access-log`` and ``DQFD_ACCESS_LOG=false`` turn uvicorn's line per request off (load
tests); by default it is on. A real ``serve`` subprocess each, its output read back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from service.quickstart import free_port
from tests.service.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
REQUEST_LINE = '"GET /healthz HTTP/1.1" 200'


class Server:
    """``python -m service serve`` (role api) with ``flags`` and ``env``, its output in ``log``."""

    def __init__(self, database_url: str, log: Path, flags: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.log = log
        environment = {k: v for k, v in os.environ.items() if not k.startswith("DQFD_")}
        environment.update(
            {"DATABASE_URL": database_url, "DQFD_STATE_DIM": "4", "DQFD_ROLE": "api", "PYTHONPATH": str(ROOT)}
        )
        environment.update(env)
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--no-migrate", "--port", str(self.port), *flags],
                cwd=log.parent,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def up(self) -> bool:
        """Whether it answers /healthz (fails if the process ended)."""
        assert self.process.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> str:
        """Stop it gracefully (the lines written so far are flushed); returns its output."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.log.read_text()


def test_the_access_log_is_on_by_default_and_off_when_asked(sqlite_template: Path, tmp_path: Path) -> None:
    """Not a database test (one SQLite file, migrated, is all a server needs to start): three servers at
    once, the default, ``--no-access-log`` and ``DQFD_ACCESS_LOG=false``."""
    database = tmp_path / "service.db"
    shutil.copy(sqlite_template, database)
    modes = {
        "default": ([], {}),
        "flag": (["--no-access-log"], {}),
        "setting": ([], {"DQFD_ACCESS_LOG": "false"}),
    }
    servers = {
        name: Server(f"sqlite:///{database}", tmp_path / f"{name}.log", flags, env)
        for name, (flags, env) in modes.items()
    }
    try:
        for server in servers.values():
            wait_for(server.up, timeout=120, interval=0.2)
            assert httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).status_code == 200
    finally:
        logs = {name: server.stop() for name, server in servers.items()}
    assert logs["default"].count(REQUEST_LINE) >= 2, logs["default"]
    for name in ("flag", "setting"):
        assert "Application startup complete" in logs[name], logs[name]  # its own log is still written
        assert REQUEST_LINE not in logs[name], (name, logs[name])
