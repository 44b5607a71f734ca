"""POST /act and POST /feedback through real HTTP requests against the app and a real database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from service.api.app import create_app
from service.settings import Settings
from service.store.db import make_engine, make_session_factory
from service.store.features import decode_state
from service.store.models import Decision, Feedback, Item, utcnow
from tests.service.conftest import N_ITEMS, STATE_DIM

STATE = [0.1, -0.2, 0.3, 0.0]


@pytest.fixture
def client(trained: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(trained)) as client:
        yield client


def _db(settings: Settings):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.database_url)
    return engine, make_session_factory(engine)


def test_act_before_any_model_is_503_with_retry_after(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"auto_pretrain": False}))) as client:
        response = client.post("/act", json={"state": STATE})
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert "no model" in response.json()["detail"][0]["msg"]
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").json() == {"status": "ok"}


def test_act_stores_the_decision_before_answering(client: TestClient, trained: Settings) -> None:
    response = client.post("/act", json={"state": STATE, "session_id": "u1", "k": 3, "explore": False})
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == 1
    assert body["propensity"] == 1.0 and body["explored"] is False
    assert len(body["ranking"]) == 3
    scores = [r["score"] for r in body["ranking"]]
    assert scores == sorted(scores, reverse=True)
    assert body["item_id"] == body["ranking"][0]["item_id"]
    engine, sessions = _db(trained)
    with sessions() as session:
        decision = session.get(Decision, body["event_id"])
        assert decision is not None
        assert decision.item_id == body["item_id"] and decision.session_id == "u1" and decision.step == 0
        np.testing.assert_allclose(decode_state(decision.state), STATE, rtol=1e-6)
        assert [r["item_id"] for r in decision.ranking] == [r["item_id"] for r in body["ranking"]]
    second = client.post("/act", json={"state": STATE, "session_id": "u1"}).json()
    with sessions() as session:
        assert session.get(Decision, second["event_id"]).step == 1
    engine.dispose()
    assert client.get("/readyz").json()["model_version"] == 1


def test_candidates_and_exclusions_are_respected(client: TestClient) -> None:
    for _ in range(20):
        body = client.post(
            "/act",
            json={
                "state": STATE,
                "candidates": ["item-1", "item-3", "item-4"],
                "exclude": ["item-4"],
                "k": 5,
            },
        ).json()
        assert body["item_id"] in {"item-1", "item-3"}
        assert {r["item_id"] for r in body["ranking"]} == {"item-1", "item-3"}
        assert 0 < body["propensity"] <= 1


def test_explore_propensities_match_epsilon_greedy(client: TestClient, trained: Settings) -> None:
    eps, n = trained.epsilon, N_ITEMS
    assert eps == pytest.approx(0.1)
    # Serving draws from an unseeded generator (as it must in production), so this asserts a bound:
    # with ε = 0.1, no exploration in 250 draws has probability 0.9**250 ≈ 3.6e-12 (< 1e-9).
    explored = 0
    for _ in range(250):
        body = client.post("/act", json={"state": STATE}).json()
        greedy = client.post("/act", json={"state": STATE, "explore": False}).json()["item_id"]
        expected = 1 - eps + eps / n if body["item_id"] == greedy else eps / n
        assert body["propensity"] == pytest.approx(expected)
        explored += body["explored"]
        if explored:
            break
    assert explored == 1


def test_deactivated_items_are_never_recommended(client: TestClient, trained: Settings) -> None:
    greedy = client.post("/act", json={"state": STATE, "explore": False}).json()["item_id"]
    response = client.post(
        f"/admin/items/{greedy}/active",
        params={"active": False},
        headers={"Authorization": "Bearer test-admin-token"},
    )
    assert response.status_code == 200
    for _ in range(30):
        body = client.post("/act", json={"state": STATE, "k": N_ITEMS - 1}).json()
        assert body["item_id"] != greedy
        assert greedy not in {r["item_id"] for r in body["ranking"]}
    bad = client.post("/act", json={"state": STATE, "candidates": [greedy]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "candidates"


BAD_ACT = [
    ({"state": [0.1, 0.2]}, 422, "state"),
    ({"state": [0.1] * (STATE_DIM + 1)}, 422, "state"),
    ({"state": STATE, "candidates": ["nope"]}, 422, "candidates"),
    ({"state": STATE, "candidates": []}, 422, "candidates"),
    ({"state": STATE, "candidates": ["item-1"], "exclude": ["item-1"]}, 422, "exclude"),
    ({"state": STATE, "exclude": [f"item-{i}" for i in range(N_ITEMS)]}, 422, "exclude"),
    ({"state": STATE, "exclude": ["nope"]}, 422, "exclude"),
    ({"state": STATE, "k": 0}, 422, "k"),
    ({"state": STATE, "k": N_ITEMS + 1}, 422, "k"),
    ({"state": STATE, "k": "many"}, 422, "k"),
    ({"state": "not a list"}, 422, "state"),
    ({}, 422, "state"),
    ({"state": STATE, "surprise": 1}, 422, "surprise"),
]


def _field(body: dict) -> str:
    detail = body["detail"][0]
    return str(
        detail.get("field") or detail["loc"][-1] if len(detail.get("loc", [])) > 1 else detail.get("field")
    )


def test_bad_act_input_is_4xx_naming_the_field(client: TestClient) -> None:
    for payload, code, field in BAD_ACT:
        response = client.post("/act", json=payload)
        assert response.status_code == code, (payload, response.text)
        locs = [d.get("loc", []) for d in response.json()["detail"]]
        assert any(field in [str(x) for x in loc] for loc in locs), (payload, response.text)
    # NaN and infinities are not JSON but Python clients send them: still a 422 on "state".
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = '{"state": [0.1, ' + literal + ", 0.0, 0.0]}"
        response = client.post("/act", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        assert "state" in json.dumps(response.json()["detail"][0]["loc"])
    malformed = client.post("/act", content=b'{"state": [0.1,', headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["type"] == "json_invalid"
    huge = client.post(
        "/act",
        content=b'{"state": [' + b"0.0, " * 40_000 + b"0.0]}",
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413
    # Without a Content-Length (chunked upload) the limit applies while the body streams in.
    chunks = iter([b'{"state": [', *([b"0.0, " * 1000] * 40), b"0.0]}"])
    streamed = client.post("/act", content=chunks, headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_feedback_roundtrip_idempotent_and_conflicts(client: TestClient, trained: Settings) -> None:
    event = client.post("/act", json={"state": STATE, "session_id": "fb"}).json()["event_id"]
    first = client.post("/feedback", json={"event_id": event, "reward": 1.0})
    assert first.status_code == 200 and first.json()["status"] == "stored"
    again = client.post("/feedback", json={"event_id": event, "reward": 1.0})
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    conflict = client.post("/feedback", json={"event_id": event, "reward": 0.0})
    assert conflict.status_code == 409 and conflict.json()["detail"][0]["field"] == "reward"
    assert client.post("/feedback", json={"event_id": "missing", "reward": 1.0}).status_code == 404
    bad = client.post("/feedback", json={"event_id": event, "reward": "lots"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "reward"
    nan = client.post(
        "/feedback",
        content='{"event_id": "' + event + '", "reward": NaN}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422
    engine, sessions = _db(trained)
    with sessions() as session:
        rows = list(session.scalars(select(Feedback).where(Feedback.event_id == event)))
    engine.dispose()
    assert [(r.reward, r.done) for r in rows] == [(1.0, False)]


def test_feedback_after_the_reward_window_is_409(client: TestClient, trained: Settings) -> None:
    event = client.post("/act", json={"state": STATE}).json()["event_id"]
    engine, sessions = _db(trained)
    with sessions() as session:  # age the decision past the window instead of sleeping
        session.execute(
            update(Decision)
            .where(Decision.event_id == event)
            .values(created_at=utcnow() - timedelta(hours=1))
        )
        session.commit()
    engine.dispose()
    response = client.post("/feedback", json={"event_id": event, "reward": 1.0})
    assert response.status_code == 409
    assert "window" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("aggregation", ["sum", "first"])
def test_feedback_aggregation(settings_factory, aggregation: str) -> None:  # type: ignore[no-untyped-def]
    from tests.service.conftest import pretrain_model, seed_database

    settings = settings_factory(aggregation=aggregation, role="api")
    seed_database(settings.database_url)
    pretrain_model(settings)
    with TestClient(create_app(settings)) as client:
        event = client.post("/act", json={"state": STATE}).json()["event_id"]
        assert client.post("/feedback", json={"event_id": event, "reward": 1.0}).status_code == 200
        second = client.post("/feedback", json={"event_id": event, "reward": 2.0})
        assert second.status_code == 200
        if aggregation == "sum":
            assert second.json() == {"event_id": event, "status": "stored", "reward": 3.0, "done": False}
            assert (
                client.post("/feedback", json={"event_id": event, "reward": 2.0}).json()["status"]
                == "duplicate"
            )
            keyed = client.post("/feedback", json={"event_id": event, "reward": 2.0, "feedback_id": "k1"})
            assert keyed.json()["reward"] == 5.0
        else:
            assert second.json() == {"event_id": event, "status": "ignored", "reward": 1.0, "done": False}


def test_catalogue_without_active_items_is_409(client: TestClient, trained: Settings) -> None:
    """Not the request's fault: the catalogue's state conflicts with serving (a 409 that says what to do)."""
    engine, sessions = _db(trained)
    with sessions() as session:
        session.execute(update(Item).values(active=False))
        session.commit()
    engine.dispose()
    client.app.state.service.poller.refresh()
    response = client.post("/act", json={"state": STATE})
    assert response.status_code == 409
    assert response.json()["detail"][0]["msg"].startswith("no item of the catalogue is active")


def test_openapi_documents_the_endpoints_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {
        "/act",
        "/feedback",
        "/healthz",
        "/readyz",
        "/admin/retrain",
        "/admin/models/{version}/activate",
    } <= set(spec["paths"])
    assert spec["components"]["schemas"]["ActRequest"]["examples"][0]["k"] == 3
    assert client.get("/docs").status_code == 200
