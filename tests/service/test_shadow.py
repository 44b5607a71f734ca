"""Shadow mode through /act on SQLite and PostgreSQL: a stored, inactive version is loaded beside the
active one, its choice and its probability of the served item are logged with every decision and nothing
of it is served, the report counts its agreement, stopping works, other replicas follow through their
poller, and the version can be activated afterwards."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.api.app import create_app
from service.serving.policy_store import decode_checkpoint
from service.settings import Settings
from service.store import registry
from service.store.db import make_engine, make_session_factory
from service.store.models import Decision
from tests.service.conftest import N_ITEMS, STATE, admin_headers, pretrain_model, wait_for


@pytest.fixture
def two_versions(trained: Settings) -> Settings:
    """Version 1 active; version 2 stored and inactive, pretrained from another seed (which chooses
    differently from version 1 on some of the test's states, checked in the test)."""
    assert pretrain_model(trained.model_copy(update={"seed": 11}), steps=30, activate=False) == 2
    return trained


@pytest.fixture
def client(two_versions: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(two_versions)) as client:
        yield client


def _q(settings: Settings, version: int, state: list[float]) -> np.ndarray:
    """Version ``version``'s Q-values of ``state``, from its stored checkpoint."""
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            network = decode_checkpoint(registry.load_checkpoint(session, version))
    finally:
        engine.dispose()
    return network.q_values(np.asarray([state], dtype=np.float32), None)[0]


def _decisions(settings: Settings, events: list[str]) -> list[Decision]:
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            found = session.scalars(select(Decision).where(Decision.event_id.in_(events)))
            rows = {d.event_id: d for d in found}
    finally:
        engine.dispose()
    return [rows[e] for e in events]


def _shadow(client: TestClient, version: int | None) -> dict:
    response = client.post("/admin/shadow", json={"version": version}, headers=admin_headers())
    assert response.status_code == 200, response.text
    return response.json()


def test_shadow_is_scored_logged_and_never_served(client: TestClient, two_versions: Settings) -> None:
    states = [STATE, [0.5, 0.5, -0.5, 0.2], [-0.3, 0.0, 0.9, -0.1], [0.0, 0.0, 0.0, 0.0]]
    shadow_greedy = [int(np.argmax(_q(two_versions, 2, s))) for s in states]
    served_greedy = [int(np.argmax(_q(two_versions, 1, s))) for s in states]
    assert shadow_greedy != served_greedy  # the two versions differ: agreement is not trivially 1

    out = _shadow(client, 2)
    assert (out["version"], out["loaded"], out["error"]) == (2, True, None)
    events = []
    for state in states:
        act = client.post("/act", json={"state": state, "explore": False}).json()
        assert act["model_version"] == 1  # never served by the shadow
        events.append(act["event_id"])
    rows = _decisions(two_versions, events)
    agreed = 0
    for row, shadow, served in zip(rows, shadow_greedy, served_greedy, strict=True):
        assert row.action_index == served
        assert (row.shadow_version, row.shadow_item_id) == (2, f"item-{shadow}")
        # Greedy (explore false): π_shadow(served) is 1 where the shadow would serve the same item, else 0.
        assert row.shadow_propensity == (1.0 if shadow == served else 0.0)
        agreed += shadow == served
    report = client.get("/admin/shadow", headers=admin_headers()).json()
    entry = report["versions"][0]
    assert (entry["version"], entry["decisions"], entry["with_propensity"]) == (2, 4, 4)
    assert entry["agreement_rate"] == agreed / 4
    stats = client.get("/admin/stats", headers=admin_headers()).json()["modes"]
    assert stats["shadow_version"] == 2 and stats["shadow_decisions"] == 4

    # Softmax: π_shadow(served) is the shadow's own softmax of its Q-values, not the served model's.
    body = {"state": STATE, "exploration": "softmax", "temperature": 0.5, "k": N_ITEMS}
    act = client.post("/act", json=body).json()
    q = _q(two_versions, 2, STATE).astype(np.float64)
    weights = np.exp((q - q.max()) / 0.5)
    served = int(act["item_id"].split("-")[1])
    row = _decisions(two_versions, [act["event_id"]])[0]
    assert row.shadow_propensity == pytest.approx(weights[served] / weights.sum(), rel=1e-5)
    assert not math.isclose(row.shadow_propensity, act["propensity"], rel_tol=1e-6)

    # Stop: no shadow is scored any more.
    out = _shadow(client, None)
    assert (out["version"], out["loaded"]) == (None, False)
    act = client.post("/act", json={"state": STATE}).json()
    row = _decisions(two_versions, [act["event_id"]])[0]
    assert (row.shadow_version, row.shadow_item_id, row.shadow_propensity) == (None, None, None)

    # The shadowed version can be activated afterwards, and then it serves.
    assert client.post("/admin/models/2/activate", headers=admin_headers()).status_code == 200
    assert client.post("/act", json={"state": STATE}).json()["model_version"] == 2


def test_other_replicas_load_the_shadow_through_their_poller(
    client: TestClient, two_versions: Settings
) -> None:
    with TestClient(create_app(two_versions.model_copy(update={"role": "api"}))) as replica:
        modes = replica.app.state.service.poller.modes
        assert modes.shadow is None
        _shadow(client, 2)
        wait_for(lambda: modes.shadow is not None and modes.shadow.model_version == 2)
        act = replica.post("/act", json={"state": STATE}).json()
        assert act["model_version"] == 1
        assert _decisions(two_versions, [act["event_id"]])[0].shadow_version == 2
        _shadow(client, None)
        wait_for(lambda: modes.shadow is None)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"version": 99}, 404, None),
        ({"version": "2"}, 422, "version"),
        ({"version": 0}, 422, "version"),
        ({}, 422, "version"),
        ({"version": 2, "extra": 1}, 422, "extra"),
    ],
)
def test_bad_shadow_requests(client: TestClient, body: dict, status: int, field: str | None) -> None:
    response = client.post("/admin/shadow", json=body, headers=admin_headers())
    assert response.status_code == status, response.text
    if field is not None:
        assert [d["field"] for d in response.json()["detail"]] == [field]
    assert client.get("/admin/shadow", headers=admin_headers()).json()["version"] is None


def test_shadow_needs_the_admin_token(client: TestClient) -> None:
    assert client.post("/admin/shadow", json={"version": 2}).status_code == 401
    assert client.get("/admin/apprentice").status_code == 401
