"""The README's main command: from nothing to a served, pretrained model on SQLite."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx

from service.ingest.catalogue import import_items, load_catalogue
from service.ingest.importer import import_logs
from service.learning.demos import count_demonstrations
from service.learning.trainer import Trainer
from service.settings import Settings
from service.store import migrate, registry
from service.store.db import make_engine, make_session_factory, session_scope

CURL_HELP = """
The recommender is serving on http://{host}:{port}  (API docs: http://{host}:{port}/docs)

  # ask for an action (the state has {dim} features)
  curl -s -X POST http://{host}:{port}/act -H 'content-type: application/json' \\
       -d '{{"state": {state}, "session_id": "demo-user", "k": 3}}'

  # send the reward of that decision (use the event_id from the answer)
  curl -s -X POST http://{host}:{port}/feedback -H 'content-type: application/json' \\
       -d '{{"event_id": "<event_id>", "reward": 1.0}}'
"""


def example_logs(settings: Settings, n_sessions: int, n_items: int, seed: int) -> tuple[Any, Any, str]:
    """Example logged interactions and items: the project's simulator when importable, else ours."""
    try:  # the simulator team's generator writes exactly the logged-interactions contract
        from simulator import SimulatorConfig, generate_catalogue
        from simulator.logs import generate_logs as simulator_logs
        from simulator.logs import items_frame

        config = SimulatorConfig()
        if settings.state_dim in (None, config.obs_dim):  # unset: the width is learned at import
            frame = simulator_logs("expert", n_sessions, seed, config)
            return frame, items_frame(generate_catalogue(config)), "project simulator (expert policy)"
    except ImportError:  # not installed: fall back to the small generator
        pass
    from service.ingest.synthetic import generate_logs, make_items

    frame = generate_logs(n_sessions, settings.state_dim or 17, n_items, seed=seed)  # 17: the simulator's
    return frame, make_items(n_items), "synthetic logger"


def prepare(settings: Settings, n_sessions: int = 300, n_items: int = 20, seed: int = 0) -> int:
    """Migrate, create example data if the database has none, pretrain if no model is active.

    Returns the active model version.
    """
    print(f"==> migrating {settings.database_url}")
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        with sessions() as session:
            catalogue = load_catalogue(session)
        if count_demonstrations(engine) == 0:
            frame, items, origin = example_logs(settings, n_sessions, n_items, seed)
            if catalogue.n_actions == 0:
                with session_scope(sessions) as session:
                    import_items(session, items)
            print(f"==> no logged interactions yet: importing {len(frame)} example rows from the {origin}")
            import_logs(engine, frame, settings.state_dim or len(frame["state"].iloc[0]), progress=True)
        elif catalogue.n_actions == 0:
            raise SystemExit("logged interactions exist but the catalogue is empty: import items first")
        with sessions() as session:
            active = registry.active_version_number(session)
        if active is None:
            print(f"==> pretraining DQfD on the demonstrations ({settings.pretrain_steps} steps)")
            active = Trainer(settings, engine, sessions).run_job_now(
                "pretrain", {"steps": settings.pretrain_steps, "activate": True}, progress=True
            )
        print(f"==> model version {active} is active")
        return active
    finally:
        engine.dispose()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def round_trip(base_url: str, state_dim: int) -> dict[str, Any]:
    """One /act then one /feedback against a running server; raises on any non-2xx."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        act = client.post("/act", json={"state": [0.1] * state_dim, "session_id": "smoke", "k": 3})
        act.raise_for_status()
        feedback = client.post("/feedback", json={"event_id": act.json()["event_id"], "reward": 1.0})
        feedback.raise_for_status()
        return {"act": act.json(), "feedback": feedback.json()}


def serve(settings: Settings, check: bool = False, port: int | None = None) -> int:
    """Serve until interrupted; with ``check``, do one round trip and stop.

    ``port`` (the command line's ``--port``) wins; without it ``check`` takes a free port (so a check
    never collides with a server already running) and a plain serve takes ``settings.port``.
    """
    import uvicorn

    from service.api.app import create_app

    host = settings.host
    if port is None:
        port = free_port(host) if check else settings.port
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning"))
    from service.store.shape import state_dim_for

    dim = state_dim_for(settings)  # DQFD_STATE_DIM or the imported logs' width
    example_state = "[" + ", ".join(["0.1"] * dim) + "]"
    print(CURL_HELP.format(host=host, port=port, dim=dim, state=example_state), flush=True)
    if not check:
        server.run()
        return 0
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    try:
        result = round_trip(f"http://{host}:{port}", dim)
        print(
            f"check: /act chose {result['act']['item_id']} (model version {result['act']['model_version']}), "
            f"/feedback {result['feedback']['status']}"
        )
    finally:
        server.should_exit = True
        thread.join(30)
    print("check: OK")
    return 0
