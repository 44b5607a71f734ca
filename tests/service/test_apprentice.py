"""Apprentice mode through /act on SQLite and PostgreSQL: the baseline item is served and the model's
choice logged beside it, agreement is counted, the incumbent's transitions reach the agent's demonstration
buffer (never the agent part), the model's value against the incumbent is estimated from the incumbent's
propensities, bad input is a 422 naming the field, and the stored switch is followed by every replica."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.api.app import create_app
from service.settings import Settings
from service.store.db import make_engine, make_session_factory
from service.store.models import Decision, LiveTransition
from tests.service.conftest import N_ITEMS, STATE, admin_headers, wait_for


def _rows(settings: Settings, model: type, *where: object) -> list:
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(model).where(*where)))
    finally:
        engine.dispose()


def _decision(settings: Settings, event_id: str) -> Decision:
    return _rows(settings, Decision, Decision.event_id == event_id)[0]


@pytest.fixture
def apprentice(trained: Settings) -> Settings:
    return trained.model_copy(update={"mode": "apprentice"})


@pytest.fixture
def client(apprentice: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(apprentice)) as client:
        yield client


def _greedy_and_other(client: TestClient) -> tuple[str, str]:
    """The model's greedy item for STATE and another item (no baseline: the model serves)."""
    out = client.post("/act", json={"state": STATE, "explore": False, "k": N_ITEMS}).json()
    assert out["served_by"] == "model" and out["model_item_id"] is None
    return out["ranking"][0]["item_id"], out["ranking"][-1]["item_id"]


def test_apprentice_serves_the_baseline_and_logs_the_models_choice(
    client: TestClient, apprentice: Settings
) -> None:
    greedy, other = _greedy_and_other(client)
    out = client.post("/act", json={"state": STATE, "explore": False, "baseline_item": other}).json()
    assert out["item_id"] == other and out["served_by"] == "baseline"
    assert out["model_item_id"] == greedy
    assert out["propensity"] == 1.0 and out["explored"] is False  # the incumbent's propensity is unknown
    row = _decision(apprentice, out["event_id"])
    assert (row.apprentice, row.item_id, row.baseline_item_id) == (True, other, other)
    assert row.model_item_id == greedy
    assert row.action_index == int(other.split("-")[1])
    assert row.model_propensity == 0.0  # greedy (explore false): the model never serves `other`
    assert row.baseline_propensity is None and row.propensity == 1.0

    # With the incumbent's propensity, that is the served item's logged propensity.
    out = client.post(
        "/act", json={"state": STATE, "explore": False, "baseline_item": greedy, "baseline_propensity": 0.25}
    ).json()
    row = _decision(apprentice, out["event_id"])
    assert out["propensity"] == 0.25 and row.propensity == 0.25 and row.baseline_propensity == 0.25
    assert row.model_propensity == 1.0 and row.model_item_id == greedy


def test_the_models_probability_of_the_baseline_is_its_softmax(
    client: TestClient, apprentice: Settings
) -> None:
    _, other = _greedy_and_other(client)
    body = {"state": STATE, "k": N_ITEMS, "exploration": "softmax", "temperature": 0.5}
    body["baseline_item"] = other
    out = client.post("/act", json=body).json()
    scores = {r["item_id"]: r["score"] for r in out["ranking"]}
    top = max(scores.values())
    weights = {item: math.exp((s - top) / 0.5) for item, s in scores.items()}
    expected = weights[other] / sum(weights.values())
    assert _decision(apprentice, out["event_id"]).model_propensity == pytest.approx(expected, rel=1e-5)
    assert out["item_id"] == other


def test_agreement_rate_and_the_models_value_against_the_incumbent(
    client: TestClient, apprentice: Settings
) -> None:
    greedy, other = _greedy_and_other(client)
    # (baseline, its propensity, reward): the model (greedy) agrees on the first and third.
    plan = [(greedy, 0.5, 1.0), (other, 0.5, 0.0), (greedy, 0.25, 0.5), (other, None, 1.0)]
    events = []
    for item, propensity, _ in plan:
        body = {"state": STATE, "explore": False, "baseline_item": item}
        if propensity is not None:
            body["baseline_propensity"] = propensity
        events.append(client.post("/act", json=body).json()["event_id"])
    # Feedback only now: online updates must not change the greedy item while the plan is served.
    for event, (_, _, reward) in zip(events, plan, strict=True):
        response = client.post("/feedback", json={"event_id": event, "reward": reward, "done": True})
        assert response.status_code == 200

    def report() -> dict | None:
        out = client.get("/admin/apprentice", headers=admin_headers()).json()
        return out if out["model_vs_incumbent"]["n"] == 3 else None

    out = wait_for(report)
    assert out["enabled"] is True and out["switch"] is None and out["mode_setting"] == "apprentice"
    assert out["decisions"] == {
        "with_baseline": 4,
        "served_baseline": 4,
        "served_model": 0,
        "agreed": 2,
        "with_baseline_propensity": 3,
    }
    assert out["agreement_rate"] == 0.5
    model = out["model_vs_incumbent"]
    # Weights π/μ = 1/0.5, 0/0.5, 1/0.25 = 2, 0, 4 on rewards 1, 0, 0.5: SNIPS (2 + 2) / 6, IPS (2 + 2) / 3.
    assert model["value"] == pytest.approx(4 / 6)
    assert model["ips"] == pytest.approx(4 / 3)
    assert model["logged_value"] == pytest.approx(0.5)
    stats = client.get("/admin/stats", headers=admin_headers()).json()["modes"]
    assert stats["apprentice"] is True and stats["apprentice_agreement_rate"] == 0.5


def test_live_demonstrations_reach_the_demonstration_buffer(client: TestClient, apprentice: Settings) -> None:
    trainer = client.app.state.service.trainer
    wait_for(lambda: trainer.online_loop.agent is not None)
    agent = trainer.online_loop.agent
    demos, agent_part = agent.n_demonstrations, agent.n_agent_transitions
    demo_size = trainer.online_loop.demo_size
    _, other = _greedy_and_other(client)  # a model-served decision: the agent part
    served = [client.post("/act", json={"state": STATE, "baseline_item": other}).json() for _ in range(3)]
    model_served = client.post("/act", json={"state": STATE}).json()
    for out in [*served, model_served]:
        client.post("/feedback", json={"event_id": out["event_id"], "reward": 1.0, "done": True})
    wait_for(lambda: agent.n_agent_transitions == agent_part + 1 and agent.n_demonstrations == demos + 3)
    assert agent.replay.demo.actions[agent.replay.demo_size - 1] == int(other.split("-")[1])
    rows = _rows(apprentice, LiveTransition, LiveTransition.demonstration.is_(True))
    assert sorted(r.event_id for r in rows) == sorted(o["event_id"] for o in served)
    out = client.get("/admin/apprentice", headers=admin_headers()).json()
    assert out["live_demonstrations"] == {"added": 3, "dropped": 0, "limit": 100_000}
    assert trainer.status()["demonstration_buffer"] == demo_size + 3  # the trainer's count grows too


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"baseline_item": "nope"}, "baseline_item"),
        ({"baseline_item": "item-4", "exclude": ["item-4"]}, "baseline_item"),
        ({"baseline_item": "item-4", "candidates": ["item-0", "item-1"]}, "baseline_item"),
        ({"baseline_item": ""}, "baseline_item"),
        ({"baseline_item": 3}, "baseline_item"),
        ({"baseline_propensity": 0.5}, "baseline_propensity"),  # without a baseline item
        ({"baseline_item": "item-1", "baseline_propensity": 0}, "baseline_propensity"),
        ({"baseline_item": "item-1", "baseline_propensity": 1.5}, "baseline_propensity"),
        ({"baseline_item": "item-1", "baseline_propensity": "0.5"}, "baseline_propensity"),
    ],
)
def test_bad_baseline_is_422_naming_the_field(client: TestClient, extra: dict, field: str) -> None:
    response = client.post("/act", json={"state": STATE} | extra)
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["detail"]] == [field]


def test_an_inactive_baseline_is_422(client: TestClient) -> None:
    assert client.post("/admin/items/item-2/active?active=false", headers=admin_headers()).status_code == 200
    response = client.post("/act", json={"state": STATE, "baseline_item": "item-2"})
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["detail"]] == ["baseline_item"]


def test_the_admin_switch_is_stored_and_followed_by_other_replicas(
    client: TestClient, apprentice: Settings
) -> None:
    greedy, other = _greedy_and_other(client)
    body = {"state": STATE, "explore": False, "baseline_item": other}
    with TestClient(create_app(apprentice.model_copy(update={"role": "api"}))) as replica:
        assert replica.post("/act", json=body).json()["served_by"] == "baseline"
        off = client.post("/admin/apprentice", json={"enabled": False}, headers=admin_headers())
        assert off.status_code == 200 and off.json()["enabled"] is False and off.json()["switch"] is False
        assert off.json()["reason"].startswith("admin (")
        out = client.post("/act", json=body).json()  # this replica at once
        assert (out["served_by"], out["item_id"], out["model_item_id"]) == ("model", greedy, None)
        row = _decision(apprentice, out["event_id"])
        assert (row.apprentice, row.baseline_item_id, row.model_item_id) == (False, other, None)
        # The other replica on its next poll (DQFD_MODEL_POLL_S = 0.2 s in the tests).
        wait_for(lambda: replica.post("/act", json=body).json()["served_by"] == "model")
    # A model-served decision with a baseline still counts towards agreement: it disagreed.
    counts = client.get("/admin/apprentice", headers=admin_headers()).json()["decisions"]
    assert counts["served_model"] >= 1 and counts["agreed"] == 0
    bad = client.post("/admin/apprentice", json={"enabled": "no"}, headers=admin_headers())
    assert bad.status_code == 422


def test_normal_mode_logs_the_baseline_but_serves_the_model(trained: Settings) -> None:
    with TestClient(create_app(trained)) as client:
        greedy, other = _greedy_and_other(client)
        out = client.post("/act", json={"state": STATE, "explore": False, "baseline_item": other}).json()
        assert (out["item_id"], out["served_by"]) == (greedy, "model")
        row = _decision(trained, out["event_id"])
        assert (row.apprentice, row.baseline_item_id, row.propensity) == (False, other, 1.0)
