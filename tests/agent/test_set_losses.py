"""DQfD's losses over allowed item sets: hand-computed cases, brute force, sampled subsets, autograd."""

import numpy as np
import pytest
import torch
from torch import nn

from agent.config import DQfDConfig
from agent.feature_network import FeatureQNetwork, ItemQNetwork, score_items
from agent.item_table import ItemTable
from agent.set_losses import (
    AllowedSet,
    PaddedItems,
    exact_items,
    pad_items,
    sampled_items,
    set_double_dqn_bootstrap,
    set_margin_loss,
)


def padded(items: list[list[int]], valid: list[list[bool]]) -> PaddedItems:
    return PaddedItems(torch.tensor(items), torch.tensor(valid))


# ---- hand-computed cases (margin 0.8, DQfDConfig's default) ---------------------------------------------


def test_the_default_margin_is_the_papers_and_the_configs():
    assert DQfDConfig().margin == 0.8
    q = torch.tensor([[2.0, 1.0, 0.0]])
    items = padded([[5, 7, 9]], [[True, True, True]])
    # max(2 + 0.8, 1 + 0, 0 + 0.8) - 1 = 1.8 with the default margin
    assert set_margin_loss(q, items, torch.tensor([7])).item() == pytest.approx(1.8, abs=1e-6)


def test_margin_loss_over_a_set_is_linear_with_unit_gradients():
    q = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    loss = set_margin_loss(q, padded([[5, 7, 9]], [[True, True, True]]), torch.tensor([7]), margin=0.8)
    assert loss.item() == pytest.approx(1.8, abs=1e-6)
    loss.sum().backward()
    assert q.grad.tolist() == [[1.0, -1.0, 0.0]]


def test_margin_loss_is_zero_when_the_expert_wins_by_the_margin():
    q = torch.tensor([[1.0, 2.0, 0.5]], requires_grad=True)
    loss = set_margin_loss(q, padded([[3, 4, 8]], [[True, True, True]]), torch.tensor([4]), margin=0.8)
    assert loss.item() == pytest.approx(0.0)
    loss.sum().backward()
    assert q.grad.tolist() == [[0.0, 0.0, 0.0]]


def test_padding_slots_never_set_the_max():
    # slot 0 is padding: max(1 + 0, 0 + 0.8) - 1 = 0, and no gradient reaches the padding slot
    q = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    loss = set_margin_loss(q, padded([[0, 7, 9]], [[False, True, True]]), torch.tensor([7]))
    assert loss.item() == pytest.approx(0.0)
    loss.sum().backward()
    assert q.grad[0, 0].item() == 0.0


def test_agent_rows_get_zero_loss_and_need_not_contain_the_expert_item():
    # row 1 lacks item 7, row 2 has no allowed item at all (a terminal agent step)
    q = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0], [1.0, 1.0, 1.0]], requires_grad=True)
    items = padded([[5, 7, 9], [1, 2, 3], [0, 0, 0]], [[True] * 3, [True] * 3, [False] * 3])
    loss = set_margin_loss(q, items, torch.tensor([7, 7, 7]), is_demo=torch.tensor([True, False, False]))
    assert loss.tolist() == pytest.approx([1.8, 0.0, 0.0])
    loss.sum().backward()
    assert q.grad.tolist() == [[1.0, -1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_a_demonstration_row_without_its_expert_item_is_an_error_naming_the_row():
    items = padded([[5, 7, 9], [1, 2, 3]], [[True] * 3, [True, True, False]])
    with pytest.raises(ValueError, match="row 1: the expert item 3"):
        set_margin_loss(torch.zeros(2, 3), items, torch.tensor([7, 3]))


def test_double_dqn_bootstrap_over_a_set():
    online, target = torch.tensor([[1.0, 3.0]]), torch.tensor([[5.0, 2.0]])
    assert set_double_dqn_bootstrap(online, target, padded([[4, 6]], [[True, True]])).item() == 2.0
    # item 6 not allowed at s': the online net's best allowed item is 4, worth 5 to the target net
    assert set_double_dqn_bootstrap(online, target, padded([[4, 6]], [[True, False]])).item() == 5.0
    # no allowed item (a terminal step): bootstrap 0
    assert set_double_dqn_bootstrap(online, target, padded([[4, 6]], [[False, False]])).item() == 0.0


# ---- compact allowed sets ------------------------------------------------------------------------------


def test_allowed_sets_from_catalogue_size_candidates_and_exclusions():
    whole = AllowedSet(catalogue_size=6, exclusions=frozenset({1, 4}))
    assert whole.items().tolist() == [0, 2, 3, 5]
    assert 5 in whole and 4 not in whole and 6 not in whole
    listed = AllowedSet(catalogue_size=6, candidates=(5, 2, 5, 3), exclusions=frozenset({3}))
    assert listed.items().tolist() == [5, 2]
    assert 2 in listed and 0 not in listed
    batch = exact_items([whole, listed])
    assert batch.items.tolist() == [[0, 2, 3, 5], [5, 2, 0, 0]]
    assert batch.valid.tolist() == [[True] * 4, [True, True, False, False]]
    with pytest.raises(ValueError, match="candidate 6 is outside the catalogue of 6 items"):
        AllowedSet(catalogue_size=6, candidates=(6,))


def test_a_sampled_subset_always_holds_the_expert_item_and_only_allowed_items():
    rng = np.random.default_rng(0)
    for trial in range(300):
        size = int(rng.integers(1, 400))
        exclusions = frozenset(rng.choice(size, size=int(rng.integers(0, size)), replace=False).tolist())
        if len(exclusions) == size:
            continue
        use_candidates = trial % 2 == 0
        candidates = tuple(rng.integers(0, size, size=int(rng.integers(1, 50)))) if use_candidates else None
        allowed = AllowedSet(size, candidates, exclusions)
        pool = allowed.items()
        if len(pool) == 0:
            continue
        expert = int(rng.choice(pool))
        n = int(rng.integers(0, 20))
        subset = sampled_items([allowed], n, rng, required=[expert])
        row = subset.items[0][subset.valid[0]].tolist()
        assert row[0] == expert
        assert len(row) == len(set(row)) == min(n + 1, len(pool))
        assert all(item in allowed for item in row)


def test_a_large_catalogue_is_sampled_without_enumerating_it():
    allowed = AllowedSet(catalogue_size=10**12, exclusions=frozenset({3, 8}))
    subset = sampled_items([allowed], 16, np.random.default_rng(1), required=[5])
    row = subset.items[0].tolist()
    assert len(row) == len(set(row)) == 17 and row[0] == 5
    assert 3 not in row and 8 not in row
    again = sampled_items([allowed], 16, np.random.default_rng(1), required=[5])
    assert again.items[0].tolist() == row  # seeded: the same subset


def test_hard_items_are_included_when_allowed_and_a_disallowed_required_item_is_an_error():
    allowed = AllowedSet(catalogue_size=100, exclusions=frozenset({9}))
    subset = sampled_items([allowed], 3, np.random.default_rng(2), required=[4], hard=[[9, 50, 4, 51]])
    row = subset.items[0].tolist()
    assert row[:3] == [4, 50, 51] and len(row) == 6 and 9 not in row
    with pytest.raises(ValueError, match="row 0: the required item 9"):
        sampled_items([allowed], 3, np.random.default_rng(2), required=[9])


# ---- exact case against brute force, and the sampled case as a lower bound ---------------------------------


def random_problem(seed: int, batch: int = 8, n_items: int = 30, state_dim: int = 5, feature_dim: int = 3):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    table = ItemTable(feature_dim, rng.normal(size=(n_items, feature_dim)))
    states = torch.as_tensor(rng.normal(size=(batch, state_dim)), dtype=torch.float32)
    sets: list[AllowedSet] = []
    for b in range(batch):
        size = int(rng.integers(7, n_items + 1))
        exclusions = frozenset(rng.choice(size, size=3, replace=False).tolist())
        candidates = tuple(rng.choice(size, size=6, replace=False).tolist()) if b % 3 == 0 else None
        if candidates is not None and set(candidates) <= exclusions:
            exclusions = frozenset()
        sets.append(AllowedSet(size, candidates, exclusions))
    experts = torch.tensor([int(rng.choice(s.items())) for s in sets])
    return rng, table, states, sets, experts


def brute_force_q(network: nn.Module, table: ItemTable, state: torch.Tensor, item: int) -> float:
    index = torch.tensor([[item]])
    return float(network(state.unsqueeze(0), index, table.gather(index))[0, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_margin_loss_equals_a_brute_force_loop(seed):
    _, table, states, sets, experts = random_problem(seed)
    network = FeatureQNetwork(5, 3, embedding_dim=8, state_hidden=(16,), item_hidden=(8,), cross_hidden=(8,))
    batch = exact_items(sets)
    with torch.no_grad():
        loss = set_margin_loss(score_items(network, states, batch.items, table), batch, experts, margin=0.8)
        for b, allowed in enumerate(sets):
            expert = int(experts[b])
            best = max(
                brute_force_q(network, table, states[b], a) + (0.0 if a == expert else 0.8)
                for a in allowed.items()
            )
            assert loss[b].item() == pytest.approx(
                best - brute_force_q(network, table, states[b], expert), abs=1e-5
            )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_double_dqn_bootstrap_equals_a_brute_force_loop(seed):
    _, table, states, sets, _ = random_problem(seed)
    shape = {"embedding_dim": 8, "state_hidden": (16,), "item_hidden": (8,), "cross_hidden": (8,)}
    online, target = FeatureQNetwork(5, 3, **shape), FeatureQNetwork(5, 3, **shape)
    batch = exact_items(sets)
    with torch.no_grad():
        value = set_double_dqn_bootstrap(
            score_items(online, states, batch.items, table),
            score_items(target, states, batch.items, table),
            batch,
        )
        for b, allowed in enumerate(sets):
            best = max(
                allowed.items().tolist(), key=lambda a, b=b: brute_force_q(online, table, states[b], a)
            )
            assert value[b].item() == pytest.approx(brute_force_q(target, table, states[b], best), abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_sampled_margin_loss_is_a_lower_bound_and_exact_when_the_sample_covers_the_set(seed):
    rng, table, states, sets, experts = random_problem(seed)
    network = FeatureQNetwork(5, 3, embedding_dim=8, state_hidden=(16,), item_hidden=(8,), cross_hidden=(8,))
    exact = exact_items(sets)
    small = sampled_items(sets, 2, rng, required=experts.tolist())
    covering = sampled_items(sets, 30, rng, required=experts.tolist())
    with torch.no_grad():
        exact_loss = set_margin_loss(score_items(network, states, exact.items, table), exact, experts)
        small_loss = set_margin_loss(score_items(network, states, small.items, table), small, experts)
        full_loss = set_margin_loss(score_items(network, states, covering.items, table), covering, experts)
    assert bool((small_loss >= 0).all())
    assert bool((small_loss <= exact_loss + 1e-6).all())
    assert torch.allclose(full_loss, exact_loss, atol=1e-6)
    assert bool((small_loss < exact_loss - 1e-6).any())  # the bound is not always tight: the test can fail


# ---- autograd into a user's own module -----------------------------------------------------------------


class ScaledFirstFeature(nn.Module):
    """A user's own network: Q(s, a) = (s · w) · x_a[0]."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, 0.25]))

    def forward(
        self, states: torch.Tensor, item_indices: torch.Tensor, item_features: torch.Tensor
    ) -> torch.Tensor:
        return (states @ self.w).unsqueeze(1) * item_features[..., 0]


def test_the_loss_trains_a_user_supplied_module_through_autograd():
    network = ScaledFirstFeature()
    assert isinstance(network, ItemQNetwork)
    table = ItemTable(2, [[2.0, 9.0], [1.0, 9.0], [0.0, 9.0]])
    states = torch.tensor([[1.0, 2.0]])  # s · w = 1, so Q = [2, 1, 0]
    batch = pad_items([[0, 1, 2]])
    loss = set_margin_loss(score_items(network, states, batch.items, table), batch, torch.tensor([1]))
    assert loss.item() == pytest.approx(1.8, abs=1e-6)
    loss.sum().backward()
    # J_E = Q(s, 0) + 0.8 - Q(s, 1) = (s · w)(x_0 - x_1): dJ/dw = s · (2 - 1) = [1, 2]
    assert network.w.grad.tolist() == pytest.approx([1.0, 2.0])


def test_the_built_in_network_gets_gradients_in_every_parameter_from_the_set_losses():
    _, table, states, sets, experts = random_problem(3)
    network = FeatureQNetwork(
        5,
        3,
        embedding_dim=8,
        state_hidden=(16,),
        item_hidden=(8,),
        cross_hidden=(8,),
        n_item_embeddings=30,
        item_embedding_dim=4,
    )
    batch = exact_items(sets)
    q = score_items(network, states, batch.items, table)
    with torch.no_grad():
        bootstrap = set_double_dqn_bootstrap(q, q, batch)
    taken = q.gather(1, ((batch.items == experts.unsqueeze(1)) & batch.valid).long().argmax(1, keepdim=True))
    loss = (
        set_margin_loss(q, batch, experts).sum() + (taken.squeeze(1) - (1.0 + 0.99 * bootstrap)).pow(2).sum()
    )
    loss.backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name
