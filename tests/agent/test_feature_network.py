"""The item-feature Q-network and the growable item table: shapes, new items, cost independent of n."""

import numpy as np
import pytest
import torch

from agent.feature_network import FeatureQNetwork, ItemQNetwork, score_items
from agent.item_table import ItemEmbedding, ItemTable

SMALL = {"embedding_dim": 8, "state_hidden": (16,), "item_hidden": (8,), "cross_hidden": (8,)}


def seeded_network(seed: int = 0, **kwargs) -> FeatureQNetwork:
    torch.manual_seed(seed)
    return FeatureQNetwork(4, 3, **{**SMALL, **kwargs})


def random_table(n: int, seed: int = 0) -> ItemTable:
    return ItemTable(3, np.random.default_rng(seed).normal(size=(n, 3)))


# ---- the table ------------------------------------------------------------------------------------------


def test_appending_items_returns_their_indices_and_never_changes_existing_rows():
    table = ItemTable(2, [[1.0, 2.0], [3.0, 4.0]])
    before = table.features.clone()
    for step in range(40):  # past several doublings of the storage
        assert table.append([[float(step), -1.0]]) == range(2 + step, 3 + step)
    assert len(table) == 42
    assert torch.equal(table.features[:2], before)
    assert table.gather(torch.tensor([[41, 0]])).tolist() == [[[39.0, -1.0], [1.0, 2.0]]]


def test_the_table_refuses_bad_rows_and_indices_with_a_clear_message():
    table = ItemTable(2, [[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"shape \(m, 2\)"):
        table.append([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="row 1 is not finite"):
        table.append([[1.0, 2.0], [float("nan"), 0.0]])
    assert len(table) == 1  # nothing of a refused append is kept
    with pytest.raises(IndexError, match="item index 1 is outside the table's 1 items"):
        table.gather(torch.tensor([0, 1]))
    with pytest.raises(IndexError, match="item index -1"):
        table.gather(torch.tensor([-1]))


def test_the_embedding_grows_with_zero_rows_and_reads_zeros_past_its_end():
    embedding = ItemEmbedding(2, 3)
    with torch.no_grad():
        embedding.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    assert embedding(torch.tensor([1, 5])).tolist() == [[4.0, 5.0, 6.0], [0.0, 0.0, 0.0]]
    embedding.grow(6)
    assert embedding.n_items == 6
    assert embedding(torch.tensor([1, 5])).tolist() == [[4.0, 5.0, 6.0], [0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="cannot shrink"):
        embedding.grow(3)


# ---- the network ----------------------------------------------------------------------------------------


def test_shapes_and_the_protocol():
    network, table = seeded_network(), random_table(20)
    states = torch.randn(5, 4)
    items = torch.randint(0, 20, (5, 7))
    assert isinstance(network, ItemQNetwork)
    assert score_items(network, states, items, table).shape == (5, 7)
    assert network.retrieve(states, table, k=4).shape == (5, 4)
    assert network.retrieve(states, table, k=50).shape == (5, 20)


def test_each_row_is_scored_on_its_own():
    network, table = seeded_network(), random_table(20)
    states, items = torch.randn(3, 4), torch.randint(0, 20, (3, 6))
    together = score_items(network, states, items, table)
    alone = torch.cat([score_items(network, states[b : b + 1], items[b : b + 1], table) for b in range(3)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_retrieval_returns_the_top_items_by_the_dot_product_and_by_q_when_the_cross_term_is_zero():
    network, table = seeded_network(1), random_table(50, seed=1)
    states = torch.randn(4, 4)
    with torch.no_grad():
        dots = network.state_vectors(states) @ network.item_vectors(torch.arange(50), table.features).t()
        last = network.cross[-1]
        last.weight.zero_()
        last.bias.zero_()
        everything = torch.arange(50).expand(4, 50)
        q = score_items(network, states, everything, table)
    retrieved = network.retrieve(states, table, k=5)
    assert torch.equal(retrieved, dots.topk(5, dim=1).indices)
    assert torch.equal(retrieved, q.topk(5, dim=1).indices)


@pytest.mark.parametrize("embedding_dim", [0, 4])
def test_a_new_item_is_scored_without_changing_any_weight(embedding_dim):
    network = seeded_network(2, n_item_embeddings=10, item_embedding_dim=embedding_dim)
    table = random_table(10, seed=2)
    with torch.no_grad():
        if network.item_embedding is not None:
            network.item_embedding.weight.normal_()  # trained rows for the ten known items
    weights = {name: p.clone() for name, p in network.state_dict().items()}
    states, old_items = torch.randn(3, 4), torch.arange(10).expand(3, 10)
    with torch.no_grad():
        old_scores = score_items(network, states, old_items, table)
        (new_item,) = table.append([[0.5, -1.0, 2.0]])
        new_scores = score_items(network, states, torch.full((3, 1), new_item), table)
        # scored by its features alone: the same as the item tower on [features, zero embedding]
        alone = network.score(
            network.state_vectors(states),
            network.item_tower(
                torch.cat([table.gather(torch.tensor([new_item])), torch.zeros(1, embedding_dim)], dim=-1)
            ).expand(3, 1, -1),
        )
        assert torch.allclose(new_scores, alone, atol=1e-6)
        assert bool(torch.isfinite(new_scores).all())
        assert torch.equal(score_items(network, states, old_items, table), old_scores)
        assert all(torch.equal(p, weights[name]) for name, p in network.state_dict().items())
        network.grow_items(len(table))  # giving it a (zero) row to train changes nothing either
        assert torch.equal(score_items(network, states, torch.full((3, 1), new_item), table), new_scores)


def forward_backward_footprint(n_items: int, item_embedding_dim: int) -> tuple[list, dict]:
    """Shapes of every tensor autograd saves in one forward + backward over 16 states × 10 candidates,
    and every parameter's gradient shape."""
    network = seeded_network(3, n_item_embeddings=n_items, item_embedding_dim=item_embedding_dim)
    table = random_table(n_items, seed=3)
    saved: list[tuple[int, ...]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.nn.Parameter):  # parameters are kept anyway, not per batch
            saved.append(tuple(tensor.shape))
        return tensor

    items = torch.randint(0, n_items, (16, 10), generator=torch.Generator().manual_seed(3))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        q = score_items(network, torch.randn(16, 4), items, table)
    q.sum().backward()
    grads = {name: tuple(p.grad.shape) for name, p in network.named_parameters()}
    return sorted(saved), grads


def test_one_update_over_fixed_candidates_does_not_grow_with_the_catalogue():
    small_saved, small_grads = forward_backward_footprint(100, 0)
    large_saved, large_grads = forward_backward_footprint(100_000, 0)
    assert small_saved == large_saved
    assert small_grads == large_grads
    assert sum(p.numel() for p in seeded_network(3).parameters()) == sum(
        int(np.prod(shape)) for shape in large_grads.values()
    )


def test_with_learned_embeddings_only_the_embedding_grows_with_the_catalogue():
    small_saved, small_grads = forward_backward_footprint(100, 4)
    large_saved, large_grads = forward_backward_footprint(100_000, 4)
    assert small_saved == large_saved  # activations: the lookup keeps indices, not the table
    assert small_grads.pop("item_embedding.weight") == (100, 4)
    assert large_grads.pop("item_embedding.weight") == (100_000, 4)
    assert small_grads == large_grads
