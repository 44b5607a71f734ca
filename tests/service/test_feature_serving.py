"""Serving a feature-network model: exact choices and propensities, and items added to the catalogue
served at once by the same model version (no retrain), through the policy store and the poller."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

import service.serving.choice as serving
from agent.item_dqfd import ItemDQfDAgent, ItemNetworkConfig
from agent.item_table import ItemTable
from service.ingest.catalogue import Catalogue, import_items, set_item_active
from service.ingest.item_features import FeatureSpec, feature_matrix, fit_feature_spec
from service.serving.choice import choose
from service.serving.feature_policy import FeatureModel, FeatureNetwork
from service.serving.model_check import validate_checkpoint
from service.serving.policy_store import PolicyStore, decode_checkpoint
from service.serving.poller import ModelPoller
from service.store import registry
from service.store.db import make_engine, make_session_factory, session_scope
from service.store.models import Item
from service.store.shape import StateWidth

STATE_DIM = 5
STATE = [0.3, -0.1, 0.8, 0.0, -0.5]
ITEMS = {"item_id": ["a", "b", "c", "d", "e"], "appeal": [0.1, 0.5, 0.9, 0.3, 0.7]}
ATTRIBUTES = [{"appeal": x, "fresh": i % 2 == 0} for i, x in enumerate(ITEMS["appeal"])]


def model_checkpoint(attributes: list, seed: int = 0) -> tuple[bytes, FeatureSpec, ItemDQfDAgent]:
    """An item agent over the catalogue's features (randomly initialised), saved as the trainer would."""
    spec = fit_feature_spec(attributes)
    table = ItemTable(spec.width, feature_matrix(spec, attributes))
    config = ItemNetworkConfig(embedding_dim=8, state_hidden=(16,), item_hidden=(8,), cross_hidden=(8,))
    agent = ItemDQfDAgent(STATE_DIM, table, network_config=config, seed=seed)
    agent.metadata = {"item_features": spec.to_json()}
    buffer = io.BytesIO()
    agent.save(buffer)
    return buffer.getvalue(), spec, agent


def exact_q(agent: ItemDQfDAgent, spec: FeatureSpec, attributes: list) -> np.ndarray:
    """Q of every item of ``attributes`` for STATE under the torch network (brute force)."""
    features = torch.as_tensor(feature_matrix(spec, attributes))[None]
    indices = torch.arange(len(attributes))[None]
    with torch.no_grad():
        return agent.online(torch.tensor([STATE]), indices, features)[0].numpy()


def best_new_item(agent: ItemDQfDAgent, spec: FeatureSpec, attributes: list) -> dict:
    """Attributes of a new item whose Q beats every existing item's for STATE (searched on a grid)."""
    grid = [{"appeal": float(x), "fresh": f} for x in np.linspace(-50, 50, 41) for f in (True, False)]
    q = exact_q(agent, spec, grid)
    best = grid[int(np.argmax(q))]
    assert q.max() > exact_q(agent, spec, attributes).max()  # the test's premise, fixed by the seed
    return best


def test_choices_are_exact_over_the_allowed_items() -> None:
    checkpoint, spec, agent = model_checkpoint(ATTRIBUTES)
    store = PolicyStore(STATE_DIM)
    store.set_catalogue(Catalogue.build(ITEMS["item_id"], [True, True, False, True, True], ATTRIBUTES))
    assert store.publish(decode_checkpoint(checkpoint), 1)
    policy = store.require()
    assert isinstance(policy.network, FeatureNetwork)
    q = exact_q(agent, spec, ATTRIBUTES)
    allowed = np.array([0, 1, 3, 4])  # "c" is inactive
    expected = allowed[np.argsort(-q[allowed], kind="stable")]
    choice = choose(policy, STATE, STATE_DIM, None, None, 4, 0.0)
    assert [r["item_id"] for r in choice.ranking] == [ITEMS["item_id"][i] for i in expected]
    np.testing.assert_allclose([r["score"] for r in choice.ranking], q[expected], rtol=1e-5, atol=1e-5)
    assert choice.action_index == expected[0] and choice.propensity == 1.0 and not choice.explored
    assert choice.mask is not None and choice.mask.tolist() == [True, True, False, True, True]
    # Candidates: every one scored exactly, the exclusions applied.
    choice = choose(policy, STATE, STATE_DIM, ["e", "a", "b"], ["b"], 2, 0.0)
    pair = np.array([0, 4])
    order = pair[np.argsort(-q[pair], kind="stable")]
    assert [r["item_id"] for r in choice.ranking] == [ITEMS["item_id"][i] for i in order]


def test_propensities_are_the_probabilities_of_the_served_item(monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint, spec, agent = model_checkpoint(ATTRIBUTES)
    store = PolicyStore(STATE_DIM)
    store.set_catalogue(Catalogue.build(ITEMS["item_id"], [True] * 5, ATTRIBUTES))
    assert store.publish(decode_checkpoint(checkpoint), 1)
    policy = store.require()
    q = exact_q(agent, spec, ATTRIBUTES)
    greedy = int(np.argmax(q))
    monkeypatch.setattr(serving._rng_local, "rng", np.random.default_rng(3), raising=False)
    seen = set()
    for _ in range(60):  # ε = 0.5 over 5 allowed items: greedy 0.5 + 0.1, any other 0.1
        choice = choose(policy, STATE, STATE_DIM, None, None, 2, 0.5)
        expected = 0.6 if choice.action_index == greedy else 0.1
        assert choice.propensity == pytest.approx(expected)
        seen.add(choice.action_index)
    assert seen == set(range(5))  # exploration reaches every allowed item
    # softmax over the scored set (here every item: the catalogue is smaller than the retrieval size)
    probs = np.exp(q - q.max())
    probs /= probs.sum()
    for _ in range(20):
        choice = choose(policy, STATE, STATE_DIM, None, None, 2, 0.0, None, "softmax", 1.0)
        assert choice.propensity == pytest.approx(probs[choice.action_index], rel=1e-5)


def test_an_item_added_to_the_catalogue_is_served_by_the_same_model() -> None:
    checkpoint, spec, agent = model_checkpoint(ATTRIBUTES)
    store = PolicyStore(STATE_DIM)
    store.set_catalogue(Catalogue.build(ITEMS["item_id"], [True] * 5, ATTRIBUTES))
    assert store.publish(decode_checkpoint(checkpoint), 7)
    new = best_new_item(agent, spec, ATTRIBUTES)
    grown = [*ATTRIBUTES, new]
    store.set_catalogue(Catalogue.build([*ITEMS["item_id"], "z"], [True] * 6, grown))
    policy = store.require()
    assert policy.model_version == 7 and policy.network.n_actions == 6
    choice = choose(policy, STATE, STATE_DIM, None, None, 3, 0.0)
    assert choice.item_id == "z"
    assert choice.ranking[0]["score"] == pytest.approx(float(exact_q(agent, spec, grown)[5]), rel=1e-5)
    # Deactivated: never served, by ranking or exploration.
    store.set_catalogue(Catalogue.build([*ITEMS["item_id"], "z"], [True] * 5 + [False], grown))
    policy = store.require()
    for _ in range(30):
        choice = choose(policy, STATE, STATE_DIM, None, None, 5, 1.0)
        assert choice.item_id != "z" and "z" not in [r["item_id"] for r in choice.ranking]


def test_checks_of_a_feature_checkpoint() -> None:
    checkpoint, _, _ = model_checkpoint(ATTRIBUTES)
    model = validate_checkpoint(checkpoint, 3, 1, StateWidth(STATE_DIM, "test"))  # any catalogue size
    assert isinstance(model, FeatureModel) and model.state_dim == STATE_DIM
    with pytest.raises(Exception, match="takes 5 features but test"):
        validate_checkpoint(checkpoint, 3, 5, StateWidth(4, "test"))
    store = PolicyStore(STATE_DIM)
    store.set_catalogue(Catalogue.build(ITEMS["item_id"], [True] * 5))  # loaded without attributes
    assert not store.publish(model, 3)
    assert store.last_error == "model version 3: the catalogue has no item attributes"


def _sessions(database_url: str) -> tuple[object, sessionmaker[Session]]:
    engine = make_engine(database_url)
    return engine, make_session_factory(engine)


def test_poller_serves_imported_items_without_a_new_version(database_url: str) -> None:
    import pandas as pd

    engine, sessions = _sessions(database_url)
    try:
        with session_scope(sessions) as session:
            import_items(session, pd.DataFrame({**ITEMS, "fresh": [a["fresh"] for a in ATTRIBUTES]}))
        checkpoint, spec, agent = model_checkpoint(ATTRIBUTES)
        with session_scope(sessions) as session:
            row = registry.save_version(
                session, checkpoint=checkpoint, state_dim=STATE_DIM, n_actions=5, config={}, metrics={},
                source="test", n_updates=0, activate=True,
            )  # fmt: skip
            version = row.version
        store = PolicyStore(STATE_DIM)
        poller = ModelPoller(store, sessions, 60.0)
        poller.refresh()
        assert store.require().model_version == version and store.require().network.n_actions == 5
        new = best_new_item(agent, spec, ATTRIBUTES)
        with session_scope(sessions) as session:
            import_items(session, pd.DataFrame({"item_id": ["z"], **{k: [v] for k, v in new.items()}}))
        poller.refresh()
        policy = store.require()
        assert policy.model_version == version and policy.catalogue.n_actions == 6
        assert choose(policy, STATE, STATE_DIM, None, None, 1, 0.0).item_id == "z"
        assert choose(policy, STATE, STATE_DIM, ["z", "a"], None, 2, 0.0).ranking[0]["item_id"] == "z"
        with session_scope(sessions) as session:
            set_item_active(session, "z", False)
        poller.refresh()
        assert choose(store.require(), STATE, STATE_DIM, None, None, 1, 0.0).item_id != "z"
    finally:
        engine.dispose()


def test_in_process_publish_of_new_weights_reuses_the_catalogue_features() -> None:
    from agent.item_inference import NumpyFeatureQNetwork

    _, spec, agent = model_checkpoint(ATTRIBUTES)
    store = PolicyStore(STATE_DIM)
    store.set_catalogue(Catalogue.build(ITEMS["item_id"], [True] * 5, ATTRIBUTES))
    assert store.publish(
        FeatureModel.from_network(NumpyFeatureQNetwork(agent.online.state_dict()), agent.metadata), 1
    )
    first = store.require().network
    with torch.no_grad():
        for p in agent.online.parameters():
            p.mul_(1.5)  # "trained on": new weights of the same model
    model = FeatureModel.from_network(NumpyFeatureQNetwork(agent.online.state_dict()), agent.metadata)
    assert store.publish(model, 1, revision=1)
    second = store.require().network
    assert np.shares_memory(second.scorer.features, first.scorer.features)  # same spec and snapshot
    np.testing.assert_allclose(
        second.q_values(np.asarray([STATE], np.float32))[0],
        exact_q(agent, spec, ATTRIBUTES),
        rtol=1e-5,
        atol=1e-5,
    )


def test_poller_reads_the_catalogue_only_when_its_revision_changed(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    import service.serving.poller as poller_module

    loads: list[bool] = []
    real_load = poller_module.load_catalogue

    def counting_load(session: Session, attributes: bool = False) -> Catalogue:
        loads.append(attributes)
        return real_load(session, attributes=attributes)

    monkeypatch.setattr(poller_module, "load_catalogue", counting_load)
    engine, sessions = _sessions(database_url)
    try:
        with session_scope(sessions) as session:
            import_items(session, pd.DataFrame(ITEMS))
        store = PolicyStore(STATE_DIM)
        poller = ModelPoller(store, sessions, 60.0)
        poller.refresh()
        poller.refresh()
        poller.refresh()
        assert loads == [True]  # read once, with the attributes; unchanged since
        with session_scope(sessions) as session:
            set_item_active(session, "b", False)
        poller.refresh()
        poller.refresh()
        assert loads == [True, True] and store.catalogue.active.tolist() == [True, False, True, True, True]
        with session_scope(sessions) as session:
            import_items(session, pd.DataFrame({"item_id": ["f"], "appeal": [0.2]}))
        poller.refresh()
        assert loads == [True, True, True] and store.catalogue.n_actions == 6
        assert store.catalogue.attributes[5] == {"appeal": 0.2}
        with session_scope(sessions) as session:  # by hand in SQL: no token, seen by the aggregate
            session.execute(update(Item).where(Item.item_id == "c").values(active=False))
        poller.refresh()
        poller.refresh()
        assert loads == [True, True, True, True]
        assert store.catalogue.active.tolist() == [True, False, False, True, True, True]
    finally:
        engine.dispose()


@pytest.mark.parametrize("exploration", ["epsilon", "softmax"])
def test_apprentice_and_shadow_probabilities_match_the_served_policy(exploration: str) -> None:
    from service.serving.apprentice import policy_distribution
    from service.serving.choice import softmax_probabilities

    checkpoint, spec, agent = model_checkpoint(ATTRIBUTES)
    store = PolicyStore(STATE_DIM)
    store.set_catalogue(Catalogue.build(ITEMS["item_id"], [True, True, False, True, True], ATTRIBUTES))
    assert store.publish(decode_checkpoint(checkpoint), 1)
    policy = store.require()
    mask = np.array([True, True, False, True, True])
    q = exact_q(agent, spec, ATTRIBUTES)[mask]
    vector = np.asarray(STATE, np.float32)
    allowed, probs = policy_distribution(policy, vector, mask, exploration, 0.2, 0.5)
    np.testing.assert_array_equal(allowed, [0, 1, 3, 4])
    if exploration == "softmax":
        expected = softmax_probabilities(q, 0.5)
    else:
        expected = np.full(4, 0.05)
        expected[int(np.argmax(q))] += 0.8
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    # With the served greedy item given, ε-greedy needs no scores: the same numbers.
    if exploration == "epsilon":
        greedy = int(allowed[int(np.argmax(q))])
        np.testing.assert_allclose(
            policy_distribution(policy, vector, mask, exploration, 0.2, 0.5, greedy)[1], expected
        )
