"""The NumPy serving copy of FeatureQNetwork equals the torch network; retrieval recall against exact."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from agent.feature_network import FeatureQNetwork
from agent.item_inference import CHECKPOINT_FORMAT, CatalogueScorer, NumpyFeatureQNetwork, recall_at_k
from agent.item_table import ItemTable


def network(seed: int, item_embedding_dim: int = 0, cross_hidden: tuple[int, ...] = (16,)) -> FeatureQNetwork:
    torch.manual_seed(seed)
    net = FeatureQNetwork(
        5,
        3,
        embedding_dim=8,
        state_hidden=(12, 10),
        item_hidden=(9,),
        cross_hidden=cross_hidden,
        n_item_embeddings=4 if item_embedding_dim else 0,
        item_embedding_dim=item_embedding_dim,
    )
    if net.item_embedding is not None:
        with torch.no_grad():  # zeros by construction: give the known rows values so they count
            net.item_embedding.weight.normal_()
    return net


def torch_q(net: FeatureQNetwork, states: np.ndarray, features: np.ndarray) -> np.ndarray:
    n = features.shape[0]
    idx = torch.arange(n).expand(states.shape[0], n)
    feats = torch.as_tensor(features).expand(states.shape[0], n, features.shape[1])
    with torch.no_grad():
        return net(torch.as_tensor(states), idx, feats).numpy()


@pytest.mark.parametrize(("emb", "cross"), [(0, (16,)), (2, (16, 6)), (0, ())])
def test_numpy_scores_equal_the_torch_network(emb: int, cross: tuple[int, ...]) -> None:
    net = network(0, emb, cross)
    rng = np.random.default_rng(1)
    states = rng.normal(size=(3, 5)).astype(np.float32)
    features = rng.normal(size=(7, 3)).astype(np.float32)  # items 4..6 have no embedding row: zeros
    expected = torch_q(net, states, features)
    config = {"embedding_dim": 8, "state_hidden": (12, 10), "item_hidden": (9,), "cross_hidden": cross}
    scorer = CatalogueScorer(
        NumpyFeatureQNetwork(net.state_dict(), config | {"item_embedding_dim": emb}), features
    )
    np.testing.assert_allclose(scorer.q_values(states), expected, rtol=1e-5, atol=1e-5)
    u = scorer.network.state_vectors(states[1])[0]
    np.testing.assert_allclose(
        scorer.exact(u, np.array([6, 0, 3])), expected[1, [6, 0, 3]], rtol=1e-5, atol=1e-5
    )
    mask = np.array([[True, False, True, True, False, True, True]] * 3)
    masked = scorer.q_values(states, mask)
    assert np.isneginf(masked[:, 1]).all() and np.isneginf(masked[:, 4]).all()
    np.testing.assert_allclose(masked[:, 0], expected[:, 0], rtol=1e-5, atol=1e-5)


def test_config_that_disagrees_with_the_weights_is_refused() -> None:
    with pytest.raises(ValueError, match="embedding_dim=16"):
        NumpyFeatureQNetwork(network(0).state_dict(), {"embedding_dim": 16})


def test_the_copy_does_not_follow_later_training() -> None:
    net = network(2)
    scorer = CatalogueScorer(NumpyFeatureQNetwork(net.state_dict()), np.ones((2, 3), np.float32))
    before = scorer.q_values(np.zeros((1, 5), np.float32)).copy()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    np.testing.assert_array_equal(scorer.q_values(np.zeros((1, 5), np.float32)), before)


def test_top_k_exact_mode_is_brute_force_and_respects_allowed() -> None:
    net = network(3)
    rng = np.random.default_rng(4)
    features = rng.normal(size=(50, 3)).astype(np.float32)
    scorer = CatalogueScorer(NumpyFeatureQNetwork(net.state_dict()), features)
    state = rng.normal(size=5).astype(np.float32)
    q = torch_q(net, state[None, :], features)[0]
    allowed = rng.random(50) < 0.5
    idx, values = scorer.top_k(state, 5, allowed, retrieve=0)
    brute = np.flatnonzero(allowed)[np.argsort(-q[allowed], kind="stable")[:5]]
    np.testing.assert_array_equal(idx, brute)
    np.testing.assert_allclose(values, q[brute], rtol=1e-5, atol=1e-5)
    # Retrieval of 5 by dot product, then exact: only allowed items, exact Q of what it returns.
    idx, values = scorer.top_k(state, 3, allowed, retrieve=5)
    assert allowed[idx].all() and len(idx) == 3
    np.testing.assert_allclose(values, q[idx], rtol=1e-5, atol=1e-5)
    assert (np.diff(values) <= 0).all()


def test_grown_catalogue_keeps_old_vectors_and_scores_new_items() -> None:
    net = network(5, item_embedding_dim=2)
    rng = np.random.default_rng(6)
    features = rng.normal(size=(10, 3)).astype(np.float32)
    scorer = CatalogueScorer(NumpyFeatureQNetwork(net.state_dict()), features[:6])
    changed = features.copy()
    changed[2] += 1.0  # an item whose attributes were re-imported
    grown = scorer.with_features(changed)
    assert len(grown) == 10 and len(scorer) == 6
    fresh = CatalogueScorer(scorer.network, changed)
    np.testing.assert_allclose(grown.vectors, fresh.vectors, rtol=1e-6, atol=1e-6)
    state = rng.normal(size=(1, 5)).astype(np.float32)
    np.testing.assert_allclose(grown.q_values(state), torch_q(net, state, changed), rtol=1e-5, atol=1e-5)


def test_recall_of_retrieval_against_exact_on_a_random_network() -> None:
    torch.manual_seed(7)
    net = FeatureQNetwork(16, 6, embedding_dim=32)
    rng = np.random.default_rng(8)
    scorer = CatalogueScorer(
        NumpyFeatureQNetwork(net.state_dict()), rng.normal(size=(3000, 6)).astype(np.float32)
    )
    states = rng.normal(size=(20, 16)).astype(np.float32)
    full = recall_at_k(scorer, states, 10, retrieve=3000)
    assert full == 1.0  # retrieving everything is exact scoring
    default = recall_at_k(scorer, states, 10)
    tiny = recall_at_k(scorer, states, 10, retrieve=10)
    assert tiny < default <= 1.0  # measured 0.84 with only k retrieved
    assert default >= 0.9  # measured 1.0 with seed 7/8; the cross term of a random network is small


def test_checkpoint_dict_round_trip() -> None:
    net = network(9)
    buffer = io.BytesIO()
    metadata = {"item_features": {"columns": [], "missing_indicators": False}}
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "online": net.state_dict(),
            "network_config": {"embedding_dim": 8},
            "metadata": metadata,
        },
        buffer,
    )
    buffer.seek(0)
    loaded, meta = NumpyFeatureQNetwork.from_checkpoint(buffer)
    assert meta == metadata and loaded.state_dim == 5 and loaded.item_feature_dim == 3
    with pytest.raises(ValueError, match="not an item-agent checkpoint"):
        NumpyFeatureQNetwork.from_checkpoint_dict({"format": "dqfd-agent"})
    with pytest.raises(ValueError, match="custom network"):
        NumpyFeatureQNetwork.from_checkpoint_dict({"format": CHECKPOINT_FORMAT, "custom_network": True})


def test_table_features_give_the_same_scores_as_retrieve_in_torch() -> None:
    net = network(10)
    rng = np.random.default_rng(11)
    table = ItemTable(3, rng.normal(size=(40, 3)).astype(np.float32))
    scorer = CatalogueScorer(NumpyFeatureQNetwork(net.state_dict()), table.features.numpy())
    states = rng.normal(size=(4, 5)).astype(np.float32)
    torch_top = net.retrieve(torch.as_tensor(states), table, 5).numpy()
    for state, expected in zip(states, torch_top, strict=True):
        u = scorer.network.state_vectors(state)[0]
        assert set(scorer.retrieve(u, 5).tolist()) == set(expected.tolist())


def test_an_item_agent_checkpoint_serves_what_the_agent_scores() -> None:
    from agent import item_dqfd
    from agent.item_inference import CHECKPOINT_FORMAT as SERVED_FORMAT

    assert item_dqfd.CHECKPOINT_FORMAT == SERVED_FORMAT
    rng = np.random.default_rng(12)
    table = ItemTable(3, rng.normal(size=(30, 3)).astype(np.float32))
    network_config = item_dqfd.ItemNetworkConfig(
        embedding_dim=8, state_hidden=(16,), item_hidden=(8,), cross_hidden=(8,), item_embedding_dim=2
    )
    agent = item_dqfd.ItemDQfDAgent(5, table, network_config=network_config, seed=0)
    with torch.no_grad():
        agent.online.item_embedding.weight.normal_()  # learned rows: make them count in the comparison
    agent.metadata = {"item_features": {"columns": [], "missing_indicators": False}}
    buffer = io.BytesIO()
    agent.save(buffer)
    buffer.seek(0)
    served, metadata = NumpyFeatureQNetwork.from_checkpoint(buffer)
    assert metadata == agent.metadata
    scorer = CatalogueScorer(served, table.features.numpy())
    states = rng.normal(size=(2, 5)).astype(np.float32)
    np.testing.assert_allclose(
        scorer.q_values(states), agent.q_values(states, np.arange(30)), rtol=1e-5, atol=1e-5
    )
    idx, q = scorer.top_k(states[0], 4, retrieve=0)
    expected_idx, expected_q = agent.top_k(states[0], 4)
    np.testing.assert_array_equal(idx, expected_idx)
    np.testing.assert_allclose(q, expected_q, rtol=1e-5, atol=1e-5)
