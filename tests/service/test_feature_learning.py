"""The learning half of the feature network in the service (issue 15): a catalogue with item features
pretrains a feature-network version, serves it, learns online and saves feature versions; items imported
later are served within a poll, with no retrain, and learned about by the online agent; DQFD_NETWORK
picks the network (docs/service.md, "Item features")."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select

from agent.item_dqfd import ItemDQfDAgent
from agent.set_losses import AllowedSet
from service.api.app import create_app
from service.ingest.catalogue import Catalogue, import_items, load_catalogue
from service.ingest.importer import import_logs
from service.ingest.item_features import feature_matrix, fit_feature_spec
from service.ingest.synthetic import generate_logs
from service.learning import agents, item_agents
from service.learning.demos import iter_demonstrations
from service.settings import Settings
from service.store import registry
from service.store.db import make_engine, make_session_factory, session_scope
from service.store.models import LiveTransition, TrainingJob
from tests.service.conftest import N_ITEMS, STATE, STATE_DIM, admin_headers, pretrain_model, wait_for

N_NEW = 3
OLD = [f"item-{i}" for i in range(N_ITEMS)]
NEW = [f"item-{i}" for i in range(N_ITEMS, N_ITEMS + N_NEW)]


def _items(n: int) -> pd.DataFrame:
    """items.csv with two numeric attribute columns (features) and a text one (not a feature)."""
    return pd.DataFrame(
        {
            "item_id": [f"item-{i}" for i in range(n)],
            "active": True,
            "title": [f"Item {i}" for i in range(n)],
            "appeal": [round(0.1 + 0.17 * i, 3) for i in range(n)],
            "quality": [float((3 * i) % 5) for i in range(n)],
        }
    )


def _attributes(n: int) -> list[dict[str, float]]:
    """The feature columns of :func:`_items` as stored attributes."""
    frame = _items(n)
    return [{"appeal": a, "quality": q} for a, q in zip(frame["appeal"], frame["quality"], strict=True)]


def _seed(settings: Settings, n_items: int = N_ITEMS, allowed: bool = False) -> None:
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            import_items(session, _items(n_items))
        frame = generate_logs(20, STATE_DIM, n_items, seed=0)
        if allowed:  # every third row offered a narrowed list holding the logged item
            frame["allowed_items"] = [
                sorted({item, "item-0", "item-2"}) if i % 3 == 0 else None
                for i, item in enumerate(frame["item_id"])
            ]
        import_logs(engine, frame, STATE_DIM, chunk_rows=64, progress=False)
    finally:
        engine.dispose()


def _grow(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            assert import_items(session, _items(N_ITEMS + N_NEW)) == N_NEW
    finally:
        engine.dispose()


def _checkpoint(settings: Settings, version: int) -> dict[str, Any]:
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            blob = registry.load_checkpoint(session, version)
    finally:
        engine.dispose()
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def _stored(settings: Settings, version: int) -> tuple[bytes, Catalogue]:
    """The checkpoint bytes of ``version`` and the catalogue with its attributes, to rebuild it from."""
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            return registry.load_checkpoint(session, version), load_catalogue(session, attributes=True)
    finally:
        engine.dispose()


@pytest.fixture
def featured(settings: Settings) -> Settings:
    """A catalogue with item features, demonstrations, and an active pretrained version 1."""
    _seed(settings)
    assert pretrain_model(settings) == 1
    return settings


def test_a_catalogue_with_features_pretrains_a_feature_version(
    featured: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = _checkpoint(featured, 1)
    assert checkpoint["format"] == "item-dqfd-agent"
    attributes = _attributes(N_ITEMS)
    spec = fit_feature_spec(attributes)
    assert spec.names == ["appeal", "quality"]  # the text column is left out
    assert checkpoint["metadata"]["item_features"] == spec.to_json()
    assert checkpoint["network_config"]["state_hidden"] == [16]  # DQFD_HIDDEN_SIZES
    assert checkpoint["network_config"]["loss_items"] is None  # 5 items: the exact maxima
    assert checkpoint["counters"]["n_pretrain_updates"] == 30
    assert checkpoint["n_items"] == N_ITEMS
    blob, catalogue = _stored(featured, 1)
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(1) or real_load(*a, **k))
    agent = agents.agent_from_bytes(blob, catalogue)
    assert len(reads) == 1  # read once, dispatched on its format (not tried as a fixed-head one first)
    assert isinstance(agent, ItemDQfDAgent) and agents.n_items(agent) == N_ITEMS
    np.testing.assert_array_equal(agent.items.features.numpy(), feature_matrix(spec, attributes))
    with pytest.raises(ValueError, match="over a catalogue"):
        agents.agent_from_bytes(blob)
    with pytest.raises(ValueError, match="not a readable model checkpoint"):
        agents.agent_from_bytes(b"not a checkpoint", catalogue)


def test_feature_versions_serve_learn_online_and_take_new_items(featured: Settings) -> None:
    settings = featured.model_copy(
        update={"updates_per_transition": 2, "save_every_updates": 10, "publish_every_updates": 2}
    )
    with TestClient(create_app(settings)) as client:
        first = client.post("/act", json={"state": STATE, "explore": False})
        assert first.status_code == 200 and first.json()["model_version"] == 1
        rng = np.random.default_rng(0)
        for i in range(8):
            state = rng.normal(size=STATE_DIM).round(3).tolist()
            event = client.post("/act", json={"state": state, "session_id": f"on{i}"}).json()["event_id"]
            reply = client.post("/feedback", json={"event_id": event, "reward": float(i % 2), "done": True})
            assert reply.status_code == 200
        new_version = wait_for(
            lambda: (v := client.post("/act", json={"state": STATE}).json()["model_version"]) > 1 and v,
            timeout=60,
        )
        assert _checkpoint(settings, new_version)["format"] == "item-dqfd-agent"
        models = {m["version"]: m for m in client.get("/admin/models", headers=admin_headers()).json()}
        assert models[new_version]["source"] == "online" and models[new_version]["is_active"]

        # New items: served within a poll by the same weights, no retrain; the online agent grows.
        loop = client.app.state.service.trainer.online_loop
        _grow(settings)
        new_only = {"state": STATE, "candidates": [NEW[0]]}  # a fixed head would answer 409
        reply = wait_for(lambda: (r := client.post("/act", json=new_only)).status_code == 200 and r)
        assert reply.json()["item_id"] == NEW[0]
        ranked = client.post("/act", json={"state": STATE, "k": N_ITEMS + N_NEW, "explore": False}).json()
        assert sorted(entry["item_id"] for entry in ranked["ranking"]) == sorted(OLD + NEW)
        wait_for(lambda: len(loop.agent.items) == N_ITEMS + N_NEW)
        assert loop.catalogue.n_actions == N_ITEMS + N_NEW
        spec = item_agents.spec_of(loop.agent)
        attributes = _attributes(N_ITEMS + N_NEW)
        # The new rows are scaled with the saved spec (fitted on the first 5 items), not refitted.
        np.testing.assert_allclose(loop.agent.items.features.numpy(), feature_matrix(spec, attributes))
        event = reply.json()["event_id"]
        feedback = {"event_id": event, "reward": 1.0, "done": True}
        assert client.post("/feedback", json=feedback).status_code == 200
        new_index = N_ITEMS  # NEW[0]'s action index
        replay = loop.agent.replay
        wait_for(lambda: new_index in replay.agent.actions[: replay.agent_count].tolist())

    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            stored = session.scalar(select(LiveTransition).where(LiveTransition.event_id == event))
            assert stored.action_index == new_index
    finally:
        engine.dispose()

    # A restart on the grown catalogue keeps serving the active feature version, new items included.
    with TestClient(create_app(settings)) as client:
        reply = client.post("/act", json={"state": STATE, "candidates": [NEW[1]]})
        assert reply.status_code == 200 and reply.json()["item_id"] == NEW[1]
        assert client.get("/readyz").json()["status"] == "ready"
        loop = client.app.state.service.trainer.online_loop
        wait_for(lambda: loop.agent is not None and loop.base_version is not None)
        assert loop.failed_version is None and len(loop.agent.items) == N_ITEMS + N_NEW


def test_fixed_network_setting_keeps_the_fixed_head(settings: Settings) -> None:
    _seed(settings)
    assert pretrain_model(settings.model_copy(update={"network": "fixed"})) == 1
    assert _checkpoint(settings, 1)["format"] == "dqfd-agent"


def test_feature_network_setting_without_a_feature_column_fails_in_one_line(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            import_items(session, _items(N_ITEMS)[["item_id", "active", "title"]])
        import_logs(engine, generate_logs(4, STATE_DIM, N_ITEMS, seed=0), STATE_DIM, progress=False)
        with pytest.raises(Exception, match="DQFD_NETWORK=feature needs an item feature"):
            pretrain_model(settings.model_copy(update={"network": "feature"}))
        with make_session_factory(engine)() as session:
            job = session.scalars(select(TrainingJob)).one()
        assert job.status == "failed" and "DQFD_NETWORK=feature needs an item feature" in job.error
        assert "\n" not in job.error
    finally:
        engine.dispose()
    # auto on the same catalogue: the fixed head, as before issue 15.
    assert pretrain_model(settings) == 1
    assert _checkpoint(settings, 1)["format"] == "dqfd-agent"


def test_allowed_items_load_as_candidate_sets_equal_to_the_dense_masks(settings: Settings) -> None:
    _seed(settings, allowed=True)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            catalogue = load_catalogue(session)
        dense = list(iter_demonstrations(engine, catalogue, STATE_DIM, chunk_rows=16))
        compact = list(iter_demonstrations(engine, catalogue, STATE_DIM, chunk_rows=16, compact=True))
    finally:
        engine.dispose()
    masks = np.concatenate([d.masks for d in dense])
    sets = [s for d in compact for s in item_agents.candidate_sets(N_ITEMS, d.allowed)]
    assert all(d.masks is None for d in compact) and len(sets) == len(masks)
    for mask, allowed in zip(masks, sets, strict=True):  # brute force: membership of every item
        whole = AllowedSet(N_ITEMS) if allowed is None else allowed
        assert [i in whole for i in range(N_ITEMS)] == mask.tolist()
    assert sum(s is not None for s in sets) > 0


@pytest.mark.parametrize(
    "mask",
    [
        None,
        [True] * 8,
        [False, True, False, False, True, False, False, False],  # padded past the decision's catalogue
        [True, True, True, False, True, True, False, False],
        [False] * 8,
    ],
)
def test_a_stored_mask_becomes_the_equal_compact_set(mask: list[bool] | None) -> None:
    allowed = item_agents.compact_allowed(None if mask is None else np.array(mask))
    if mask is None:
        assert allowed is None
        return
    assert [i in allowed for i in range(len(mask))] == mask
    last = max((i for i, m in enumerate(mask) if m), default=-1)
    assert allowed.catalogue_size == last + 1  # no exclusions for items the decision never saw


def test_the_loss_items_rule() -> None:
    assert item_agents.loss_items(1) is None
    assert item_agents.loss_items(item_agents.EXACT_LOSS_ITEMS) is None
    assert item_agents.loss_items(item_agents.EXACT_LOSS_ITEMS + 1) == item_agents.SAMPLED_LOSS_ITEMS


@pytest.mark.parametrize("done", [False, True])
def test_a_live_demonstration_enters_the_item_agent_as_a_one_step_episode(done: bool) -> None:
    from service.feedback.transitions import Transition
    from service.ingest.catalogue import Catalogue
    from service.learning import live_demos, replay
    from tests.service.conftest import make_settings

    settings = make_settings("sqlite://")
    catalogue = Catalogue.build(OLD, [True] * N_ITEMS, _attributes(N_ITEMS))
    spec = item_agents.feature_spec(settings, catalogue)
    agent = item_agents.new_item_agent(settings, catalogue, STATE_DIM, spec, agents.agent_config(settings))
    mask = np.array([False, True, False, True, False])
    t = Transition(
        np.array(STATE, np.float32), 3, 1.0, np.ones(STATE_DIM, np.float32), done, False, mask, None, True
    )
    assert live_demos.add(agent, t)
    assert agent.n_demonstrations == 1 and agent.n_agent_transitions == 0
    stored = agent.replay.demo_allowed[0]
    assert [i in stored for i in range(N_ITEMS)] == mask.tolist()
    assert int(agent.replay.actions_at(np.array([0]))[0]) == 3
    assert agent.replay.demo_size == (1 if done else 2)  # a state-only slot holds the next state
    if not done:
        assert agent.replay.demo_allowed[1] == AllowedSet(N_ITEMS)
    # An agent transition: the same action outside its stored mask is refused (quarantined by the loop).
    with pytest.raises(ValueError, match="not in the allowed set"):
        replay.observe(agent, Transition(t.state, 2, 0.0, t.next_state, True, False, mask, None))


def test_a_feature_version_is_evaluated_against_a_fixed_head_one_on_the_items_both_know(
    settings: Settings,
) -> None:
    from service.learning import promotion
    from service.serving.policy_store import decode_checkpoint

    _seed(settings)
    assert pretrain_model(settings.model_copy(update={"network": "fixed"})) == 1  # 5 outputs
    _grow(settings)
    assert pretrain_model(settings, activate=False) == 2  # a feature version, trained on 8 items
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            feature = decode_checkpoint(registry.load_checkpoint(session, 2))
            fixed = decode_checkpoint(registry.load_checkpoint(session, 1))
            network, baseline = promotion.comparable(session, feature, fixed)
            assert baseline is fixed and network.n_actions == N_ITEMS
            whole = feature.bind(load_catalogue(session, attributes=True))
            states = np.array([STATE, [0.5, 0.1, -0.3, 0.2]], np.float32)
            np.testing.assert_allclose(
                network.q_values(states), whole.q_values(states)[:, :N_ITEMS], rtol=1e-5, atol=1e-6
            )
            row = promotion.store_evaluation(session, settings, 2, feature, 1, "admin")
            assert row.n_decisions > 0 and row.value is not None and row.diff_value is not None
    finally:
        engine.dispose()


def test_a_learned_item_embedding_grows_with_the_catalogue(settings: Settings) -> None:
    from service.serving.policy_store import decode_checkpoint

    _seed(settings)
    settings = settings.model_copy(update={"item_embedding_dim": 4})
    assert pretrain_model(settings) == 1
    checkpoint = _checkpoint(settings, 1)
    assert checkpoint["network_config"]["item_embedding_dim"] == 4
    assert tuple(checkpoint["online"]["item_embedding.weight"].shape) == (N_ITEMS, 4)
    _grow(settings)
    blob, catalogue = _stored(settings, 1)
    agent = agents.agent_from_bytes(blob, catalogue)
    weight = agent.online.item_embedding.weight.detach()
    assert tuple(weight.shape) == (N_ITEMS + N_NEW, 4)
    np.testing.assert_array_equal(
        weight[:N_ITEMS].numpy(), checkpoint["online"]["item_embedding.weight"].numpy()
    )
    assert not weight[N_ITEMS:].any()  # new items: scored by their features until they have data
    # Served from the live agent and from the checkpoint alike: the same Q for every item.
    states = np.array([STATE], np.float32)
    live = agents.serving_network(agent).bind(catalogue).q_values(states)
    stored = decode_checkpoint(blob).bind(catalogue).q_values(states)
    np.testing.assert_allclose(live, stored, rtol=1e-6, atol=1e-6)
