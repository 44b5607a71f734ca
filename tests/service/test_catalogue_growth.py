"""A catalogue that grows under a fixed-head model: it keeps serving the items it knows, on every replica
and after a restart; deactivated items are never served; a rollback serves the older version or is
refused with a 409 that says why (docs/service.md, "A catalogue that changes")."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.ingest.catalogue import import_items, set_item_active
from service.ingest.importer import import_logs
from service.ingest.synthetic import generate_logs, make_items
from service.learning import agents
from service.settings import Settings
from service.store.db import make_engine, make_session_factory, session_scope
from tests.service.conftest import (
    N_ITEMS,
    STATE,
    STATE_DIM,
    active_version,
    admin_headers,
    pretrain_model,
    save_version,
    wait_for,
)

N_NEW = 3
OLD = [f"item-{i}" for i in range(N_ITEMS)]
NEW = [f"item-{i}" for i in range(N_ITEMS, N_ITEMS + N_NEW)]


def _grow(settings: Settings, with_logs: bool = True) -> None:
    """Import ``N_NEW`` items after the first ``N_ITEMS`` (and, by default, logs that use all of them,
    as `python -m service import --items` then a logs file would)."""
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            assert import_items(session, make_items(N_ITEMS + N_NEW)) == N_NEW
        if with_logs:
            frame = generate_logs(6, STATE_DIM, N_ITEMS + N_NEW, seed=1)
            frame["session_id"] = "grown-" + frame["session_id"].astype(str)
            assert set(frame["item_id"]) & set(NEW)  # the new items have logs of their own
            import_logs(engine, frame, STATE_DIM, chunk_rows=16, progress=False)
    finally:
        engine.dispose()


def _deactivate(settings: Settings, item_ids: list[str]) -> None:
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            for item in item_ids:
                set_item_active(session, item, False)
    finally:
        engine.dispose()


def _save(settings: Settings, n_actions: int, activate: bool = False) -> int:
    """A fresh (untrained, seeded) fixed-head version of ``n_actions`` outputs."""
    checkpoint = agents.agent_to_bytes(agents.new_agent(settings, n_actions, STATE_DIM))
    return save_version(settings, checkpoint, n_actions=n_actions, activate=activate)


def _act(client: TestClient, **body: Any) -> Any:
    return client.post("/act", json={"state": STATE, **body})


def _ranked(client: TestClient, k: int = N_ITEMS, **body: Any) -> list[str]:
    """The served model's top-``k`` allowed items, greedy (every allowed one when k is their number)."""
    response = _act(client, k=k, explore=False, **body)
    assert response.status_code == 200, response.text
    return [entry["item_id"] for entry in response.json()["ranking"]]


def test_a_grown_catalogue_keeps_serving_the_old_model_after_a_restart(seeded: Settings) -> None:
    settings = seeded.model_copy(update={"epsilon": 1.0})  # every request explores: all it may serve
    assert pretrain_model(settings) == 1  # trained on the first N_ITEMS items
    _grow(settings)
    with TestClient(create_app(settings)) as client:  # a restart: a new app on the same database
        served = {_act(client).json()["item_id"] for _ in range(40)}
        assert served <= set(OLD)  # the old fixed-head model never chooses an item it does not know
        assert _act(client).json()["model_version"] == 1
        assert sorted(_ranked(client)) == OLD
        ready = client.get("/readyz").json()
        assert ready == {"status": "ready", "model_version": 1, "problems": []}
        # The trainer follows the active version on the grown catalogue (its replay over the known items).
        trainer = client.app.state.service.trainer
        wait_for(lambda: trainer.base_version == 1)
        assert trainer.online_loop.failed_version is None
        assert trainer.online_loop.catalogue.item_ids == tuple(OLD)
        # Candidates: the new ones are left out of the ranking; only new ones is a 409 naming the field.
        assert _ranked(client, candidates=[NEW[0], OLD[3], OLD[1]]) in ([OLD[3], OLD[1]], [OLD[1], OLD[3]])
        response = _act(client, candidates=NEW[:2])
        assert response.status_code == 409
        [detail] = response.json()["detail"]
        assert detail["field"] == "candidates" and detail["type"] == "ConflictError"
        assert detail["msg"] == (
            f"the served model version 1 knows none of the candidates: {NEW[:2]} were added to the "
            f"catalogue after it was trained (it ranks the first {N_ITEMS} items; a retrain serves the "
            "others)"
        )
        assert sorted(_ranked(client, exclude=[NEW[1], OLD[0]])) == OLD[1:]  # excluding a new item: no-op
        unknown = _act(client, candidates=["no-such-item"])
        assert unknown.status_code == 422 and unknown.json()["detail"][0]["field"] == "candidates"


def test_a_running_replica_picks_up_new_and_deactivated_items(trained: Settings) -> None:
    settings = trained.model_copy(update={"role": "api", "epsilon": 1.0})
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        assert sorted(_ranked(a)) == OLD
        _grow(settings, with_logs=False)
        _deactivate(settings, [OLD[2]])  # straight into the database: no replica is told
        for replica in (a, b):  # within DQFD_MODEL_POLL_S, by each replica's own poller
            wait_for(lambda r=replica: OLD[2] not in _ranked(r))
            assert sorted(_ranked(replica)) == [OLD[0], OLD[1], OLD[3], OLD[4]]
            served = {_act(replica).json()["item_id"] for _ in range(40)}  # ε = 1: exploration only
            assert served <= {OLD[0], OLD[1], OLD[3], OLD[4]}
            assert _act(replica).json()["model_version"] == 1
        # A deactivated item named as a candidate is refused, as before the catalogue grew.
        response = _act(a, candidates=[OLD[2]])
        assert response.status_code == 422 and response.json()["detail"][0]["field"] == "candidates"
        # A model trained on the grown catalogue serves the new items, never the deactivated ones.
        grown = _save(settings, N_ITEMS + N_NEW)
        assert a.post(f"/admin/models/{grown}/activate", headers=admin_headers()).status_code == 200
        # Each replica swaps it in off the request path (its own poll): wait for both before asking them for
        # k beyond the old model's items (a loaded machine once served version 1 from replica a here).
        wait_for(lambda: all(_act(r).json()["model_version"] == grown for r in (a, b)))
        for replica in (a, b):
            assert sorted(_ranked(replica, k=N_ITEMS + N_NEW - 1)) == sorted(set(OLD + NEW) - {OLD[2]})
            assert OLD[2] not in {_act(replica).json()["item_id"] for _ in range(40)}


def test_rollback_to_a_version_of_the_smaller_catalogue_serves_it(seeded: Settings) -> None:
    assert pretrain_model(seeded) == 1
    _grow(seeded)
    assert pretrain_model(seeded) == 2  # retrained on the grown catalogue (with the new items' logs)
    api = seeded.model_copy(update={"role": "api"})
    with TestClient(create_app(seeded)) as a, TestClient(create_app(api)) as b:
        trainer = a.app.state.service.trainer
        wait_for(lambda: trainer.base_version == 2)
        assert _act(a).json()["model_version"] == 2
        response = a.post("/admin/models/1/activate", headers=admin_headers())
        assert response.status_code == 200 and response.json()["is_active"] is True
        assert active_version(seeded) == 1
        assert _act(a).json()["model_version"] == 1  # this replica at once
        wait_for(lambda: _act(b).json()["model_version"] == 1)  # the other within a poll
        # The trainer follows the rollback (and so never publishes the newer weights over it).
        wait_for(lambda: trainer.base_version == 1)
        assert trainer.online_loop.failed_version is None
        for replica in (a, b):
            assert sorted(_ranked(replica)) == OLD
            assert _act(replica).json()["model_version"] == 1


def test_a_refused_rollback_says_why_and_changes_nothing(seeded: Settings) -> None:
    settings = seeded.model_copy(update={"role": "api"})
    old = _save(settings, N_ITEMS)
    _grow(settings, with_logs=False)
    current = _save(settings, N_ITEMS + N_NEW, activate=True)
    wider = _save(settings, N_ITEMS + N_NEW + 1)  # more actions than items: another database's model
    with TestClient(create_app(settings)) as client:
        assert _act(client).json()["model_version"] == current
        _deactivate(settings, OLD)  # the old version now knows no active item
        client.app.state.service.poller.refresh()
        expected = {
            wider: (
                f"model version {wider} has {N_ITEMS + N_NEW + 1} actions but the catalogue has "
                f"{N_ITEMS + N_NEW} items (items are never removed, so it was trained on another catalogue)"
            ),
            old: (
                f"model version {old} knows none of the active items (it was trained on the first "
                f"{N_ITEMS} items, all deactivated now): activate one of them, or retrain"
            ),
        }
        for version, reason in expected.items():
            response = client.post(f"/admin/models/{version}/activate", headers=admin_headers())
            assert response.status_code == 409
            [detail] = response.json()["detail"]
            assert detail == {
                "msg": reason,
                "type": "ModelInvalidError",
                "loc": ["path", "version"],
                "field": "version",
            }
            assert active_version(settings) == current  # the database did not change
            served = _act(client)
            assert served.status_code == 200 and served.json()["model_version"] == current
            assert set(_ranked(client, k=N_NEW)) == set(NEW)
