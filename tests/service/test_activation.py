"""Activation checks a model version before it answers, and a (re)start serves the newest valid version
when the active one cannot serve (docs/service.md, "Activation and fallback")."""

from __future__ import annotations

from typing import Any

import torch
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.api.app import create_app
from service.learning import agents
from service.settings import Settings
from service.store.db import make_engine
from service.store.models import ModelVersion
from tests.service.conftest import (
    N_ITEMS,
    STATE,
    STATE_DIM,
    active_version,
    admin_headers,
    save_version,
    wait_for,
)

RETRAIN = (
    'retrain on the imported logs (python -m service pretrain, or POST /admin/retrain {"activate": true})'
)


def _agent_bytes(settings: Settings, n_actions: int = N_ITEMS, nan: bool = False) -> bytes:
    agent = agents.new_agent(settings, n_actions, STATE_DIM)
    if nan:
        with torch.no_grad():
            next(agent.online.parameters()).view(-1)[0] = float("nan")
    return agents.agent_to_bytes(agent)


def _mark_active(settings: Settings, version: int) -> None:
    """Make ``version`` the active one behind the API's back (a direct database edit)."""
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(update(ModelVersion).values(is_active=ModelVersion.version == version))
    finally:
        engine.dispose()


def _act(client: TestClient) -> Any:
    return client.post("/act", json={"state": STATE})


def test_activation_refuses_a_version_that_cannot_serve(seeded: Settings) -> None:
    settings = seeded.model_copy(update={"role": "api"})
    good = save_version(settings, _agent_bytes(settings), activate=True)
    corrupt = save_version(settings, b"not a checkpoint")
    wide = save_version(settings, _agent_bytes(settings, n_actions=N_ITEMS + 2), n_actions=N_ITEMS + 2)
    nan = save_version(settings, _agent_bytes(settings, nan=True))
    expected = {
        corrupt: f"model version {corrupt}'s checkpoint cannot be loaded (",
        wide: f"model version {wide} has {N_ITEMS + 2} actions but the catalogue has {N_ITEMS} items",
        nan: (
            f"model version {nan} gives non-finite Q-values (NaN or infinity) on a probe state: "
            "its weights are corrupt"
        ),
    }
    with TestClient(create_app(settings)) as client:
        assert _act(client).json()["model_version"] == good
        for version, reason in expected.items():
            response = client.post(f"/admin/models/{version}/activate", headers=admin_headers())
            assert response.status_code == 409
            [detail] = response.json()["detail"]
            assert detail["type"] == "ModelInvalidError"
            assert detail["msg"].startswith(reason) and "\n" not in detail["msg"]
            assert active_version(settings) == good  # the database's active version did not change
            served = _act(client)
            assert served.status_code == 200 and served.json()["model_version"] == good
        # A valid version still activates, and this replica serves it at once.
        newer = save_version(settings, _agent_bytes(settings))
        response = client.post(f"/admin/models/{newer}/activate", headers=admin_headers())
        assert response.status_code == 200 and response.json()["is_active"] is True
        assert active_version(settings) == newer
        assert _act(client).json()["model_version"] == newer
        assert client.get("/readyz").json() == {"status": "ready", "model_version": newer, "problems": []}


def test_a_restart_serves_the_newest_valid_version(seeded: Settings) -> None:
    settings = seeded.model_copy(update={"role": "api"})
    save_version(settings, _agent_bytes(settings))
    valid = save_version(settings, _agent_bytes(settings))
    save_version(settings, b"garbage")  # newer than the valid one, not active, never served
    bad = save_version(settings, _agent_bytes(settings, nan=True))
    _mark_active(settings, bad)
    with TestClient(create_app(settings)) as client:
        served = _act(client)
        assert served.status_code == 200 and served.json()["model_version"] == valid
        ready = client.get("/readyz")
        assert ready.status_code == 200
        reason = (
            f"model version {bad} gives non-finite Q-values (NaN or infinity) on a probe state: "
            "its weights are corrupt"
        )
        notice = (
            f"active version {bad} cannot be served ({reason}); serving version {valid}, the newest valid one"
        )
        assert ready.json() == {"status": "ready", "model_version": valid, "problems": [notice]}
        stats = client.get("/admin/stats", headers=admin_headers()).json()["serving"]
        assert stats["model_version"] == valid and stats["fallback"] == notice
        # The poller does not retry the bad version in a loop, and leaves the database's choice alone.
        poller = client.app.state.service.poller
        poller.refresh()
        poller.refresh()
        assert set(poller.rejected) == {bad, bad - 1}
        assert active_version(settings) == bad
        assert _act(client).json()["model_version"] == valid
        # Activating a valid version ends the fallback.
        assert client.post(f"/admin/models/{valid}/activate", headers=admin_headers()).status_code == 200
        assert client.get("/readyz").json() == {"status": "ready", "model_version": valid, "problems": []}


def test_with_no_valid_version_act_says_what_to_fix(seeded: Settings) -> None:
    settings = seeded.model_copy(update={"role": "api"})
    corrupt = save_version(settings, b"garbage")
    nan = save_version(settings, _agent_bytes(settings, nan=True), activate=True)
    with TestClient(create_app(settings)) as client:
        response = _act(client)
        assert response.status_code == 503
        assert "retry-after" not in response.headers  # waiting does not help: someone has to retrain
        message = response.json()["detail"][0]["msg"]
        assert message.startswith(
            f"the active model version {nan} gives non-finite Q-values (NaN or infinity) on a probe state"
        )
        assert (
            f"no other model version can serve (model version {corrupt}'s checkpoint cannot be loaded ("
            in message
        )
        assert message.endswith(f": {RETRAIN}")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "retry-after" not in ready.headers
        assert ready.json()["problems"] == [message]


def test_the_trainer_does_not_adopt_a_version_with_nan_weights(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        trainer = client.app.state.service.trainer
        wait_for(lambda: trainer.base_version == 1)  # the trainer has adopted the model it starts from
        nan = save_version(trained, _agent_bytes(trained, nan=True))
        _mark_active(trained, nan)  # behind the API's back: activation would refuse it
        wait_for(lambda: trainer._failed_version == nan)
        assert trainer.base_version == 1  # it keeps learning from the model it has
        assert "non-finite Q-values" in trainer.last_error
        assert _act(client).json()["model_version"] == 1
