"""ItemDQfDAgent (agent/item_dqfd.py): the losses over allowed sets against a dense brute force over all
items, the autograd gradient against finite differences, a growing catalogue, checkpoints, learning and
quarantine. Every test is seeded and runs in well under 10 s on one core."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from agent import DQfDConfig, ItemDQfDAgent, ItemNetworkConfig
from agent.item_replay import EMPTY, ItemBatch
from agent.item_table import ItemTable
from agent.losses import double_dqn_bootstrap, margin_loss, td_loss, td_targets
from agent.set_losses import AllowedSet, exact_items, set_margin_loss

N_ITEMS, FEATURES, STATE = 7, 3, 4
SMALL = ItemNetworkConfig(embedding_dim=8, state_hidden=(16,), item_hidden=(8,), cross_hidden=(8,))


def small_agent(
    seed: int = 0,
    n_items: int = N_ITEMS,
    network_config: ItemNetworkConfig = SMALL,
    **config: object,
) -> ItemDQfDAgent:
    rng = np.random.default_rng(100 + seed)
    items = ItemTable(FEATURES, rng.normal(size=(n_items, FEATURES)))
    settings = {"batch_size": 8, "n_step": 3, "target_update_period": 1000, **config}
    return ItemDQfDAgent(STATE, items, DQfDConfig(**settings), network_config, seed=seed)


def hand_batch() -> ItemBatch:
    """Four rows: candidates, exclusions and catalogue sizes below the table's 7 items, a terminal row and
    an n-step window that ends at a terminal step; rows 0, 1 and 3 are demonstrations."""
    g = torch.Generator().manual_seed(7)
    stacked = torch.randn(12, STATE, generator=g)
    views = stacked.split(4)
    return ItemBatch(
        states=views[0],
        actions=torch.tensor([2, 3, 5, 1]),
        rewards=torch.tensor([0.5, -1.0, 2.0, 1.5]),
        next_states=views[1],
        discounts=torch.tensor([0.9, 0.9, 0.9, 0.0]),
        nstep_returns=torch.tensor([1.2, -0.4, 2.5, 1.5]),
        nstep_states=views[2],
        nstep_discounts=torch.tensor([0.729, 0.81, 0.0, 0.0]),
        is_demo=torch.tensor([True, True, False, True]),
        weights=torch.tensor([1.0, 0.5, 0.8, 0.3]),
        indices=np.array([0, 1, 1 << 40, 2]),
        stacked_states=stacked,
        allowed=[
            AllowedSet(7),
            AllowedSet(7, candidates=(0, 3, 5)),
            AllowedSet(6, exclusions=frozenset({0})),
            AllowedSet(4, exclusions=frozenset({3})),
        ],
        next_allowed=[
            AllowedSet(5),
            AllowedSet(7, exclusions=frozenset({1, 2})),
            AllowedSet(7, candidates=(2,)),
            EMPTY,
        ],
        nstep_allowed=[AllowedSet(7, candidates=(1, 4, 6)), AllowedSet(4), EMPTY, EMPTY],
    )


def dense_mask(sets: list[AllowedSet], n: int) -> torch.Tensor:
    mask = torch.zeros(len(sets), n, dtype=torch.bool)
    for row, allowed in enumerate(sets):
        mask[row, torch.from_numpy(allowed.items())] = True
    return mask


def dense_reference(
    agent: ItemDQfDAgent, online: torch.nn.Module, target: torch.nn.Module, batch: ItemBatch, demo_only: bool
):
    """J and its parts from Q over *all* items with dense masks and agent/losses.py, in float64."""
    cfg = agent.config
    n = len(agent.items)
    features = agent.items.features.double()
    everything = torch.arange(n)

    def q_all(net: torch.nn.Module, states: torch.Tensor) -> torch.Tensor:
        rows = states.shape[0]
        return net(states.double(), everything.expand(rows, n), features.expand(rows, n, FEATURES))

    q = q_all(online, batch.states)
    with torch.no_grad():
        targets = []
        for states, sets, rewards, discounts in (
            (batch.next_states, batch.next_allowed, batch.rewards, batch.discounts),
            (batch.nstep_states, batch.nstep_allowed, batch.nstep_returns, batch.nstep_discounts),
        ):
            bootstrap = double_dqn_bootstrap(
                q_all(online, states), q_all(target, states), dense_mask(sets, n)
            )
            targets.append(td_targets(rewards.double(), discounts.double(), bootstrap))
    mask = dense_mask(batch.allowed, n)
    q_taken = q.gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    j_dq = td_loss(q_taken, targets[0], cfg.td_loss)
    j_n = td_loss(q_taken, targets[1], cfg.td_loss)
    keep = batch.is_demo
    if cfg.q_filter and not demo_only:
        keep = keep & (q_taken.detach() >= q.detach().masked_fill(~mask, -np.inf).amax(dim=1))
    j_e = margin_loss(q, batch.actions, cfg.margin, mask, keep)
    per_sample = j_dq + cfg.lambda_n * j_n + agent.margin_weight(demo_only) * j_e
    l2 = sum(p.pow(2).sum() for p in online.parameters())
    total = (batch.weights.double() * per_sample).sum() / 4 + cfg.lambda_l2 * l2
    return total, j_dq, j_n, j_e, (targets[0] - q_taken).abs(), keep


@pytest.mark.parametrize(
    ("td", "q_filter", "demo_only", "loss_items"),
    [("huber", False, True, None), ("squared", True, False, None), ("huber", True, False, 8)],
)
def test_losses_targets_and_gradient_equal_a_dense_brute_force_over_all_items(
    td, q_filter, demo_only, loss_items
):
    network_config = ItemNetworkConfig(
        **{**SMALL.to_dict(), "item_embedding_dim": 2, "loss_items": loss_items, "hard_items": 2}
    )
    agent = small_agent(
        td_loss=td,
        q_filter=q_filter,
        gamma=0.9,
        lambda_n=0.7,
        lambda_margin=0.6,
        lambda_l2=1e-3,
        max_grad_norm=None,
        network_config=network_config,
    )
    with torch.no_grad():  # distinct target weights and non-zero item embeddings, so every term matters
        for p in agent.target.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        agent.online.item_embedding.weight.normal_(generator=torch.Generator().manual_seed(3))
    online64, target64 = copy.deepcopy(agent.online).double(), copy.deepcopy(agent.target).double()
    batch = hand_batch()
    total, j_dq, j_n, j_e, abs_td, keep = dense_reference(agent, online64, target64, batch, demo_only)
    total.backward()

    info, agent_td = agent.learn(batch, demo_only)  # loss_items = 8 covers every allowed set: exact too

    assert info.skipped == 0.0
    np.testing.assert_allclose(agent_td, abs_td.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info.j_dq, float(j_dq.detach().mean()), rtol=1e-5)
    np.testing.assert_allclose(info.j_n, float(j_n.detach().mean()), rtol=1e-5)
    np.testing.assert_allclose(info.j_e, float(j_e.detach().sum()) / 3, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(info.loss, float(total.detach()), rtol=1e-5)
    assert info.margin_kept == pytest.approx(int(keep.sum()) / 3)
    assert float(j_e.detach().sum()) > 0 and float(j_dq.detach().sum()) > 0 and float(j_n.detach().sum()) > 0
    # The gradient autograd gave the agent equals the dense reference's, parameter by parameter.
    for (name, mine), theirs in zip(agent.online.named_parameters(), online64.parameters(), strict=True):
        np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


def test_the_dense_reference_gradient_equals_central_finite_differences():
    agent = small_agent(
        gamma=0.9,
        lambda_l2=1e-3,
        network_config=ItemNetworkConfig(**{**SMALL.to_dict(), "item_embedding_dim": 2}),
    )
    with torch.no_grad():
        agent.online.item_embedding.weight.normal_(generator=torch.Generator().manual_seed(3))
    online64, target64 = copy.deepcopy(agent.online).double(), copy.deepcopy(agent.target).double()
    batch = hand_batch()
    dense_reference(agent, online64, target64, batch, True)[0].backward()
    info, _ = agent.learn(batch, demo_only=True)
    assert info.skipped == 0.0
    checked = 0
    for (name, p64), p32 in zip(online64.named_parameters(), agent.online.parameters(), strict=True):
        for flat in (0, p64.numel() // 2, p64.numel() - 1):
            h = 1e-6
            with torch.no_grad():
                entry = p64.view(-1)
                entry[flat] += h
                up = float(dense_reference(agent, online64, target64, batch, True)[0])
                entry[flat] -= 2 * h
                down = float(dense_reference(agent, online64, target64, batch, True)[0])
                entry[flat] += h
            numeric = (up - down) / (2 * h)
            assert p64.grad.view(-1)[flat].item() == pytest.approx(numeric, rel=1e-4, abs=1e-7), name
            # The agent's float32 autograd gradient (clipped at norm 10 here: this batch's norm is below).
            assert p32.grad.view(-1)[flat].item() == pytest.approx(numeric, rel=1e-3, abs=1e-5), name
            checked += 1
    assert checked == 3 * len(list(online64.parameters()))


def test_a_sampled_subset_holds_a_e_only_allowed_items_and_bounds_j_e_from_below():
    agent = small_agent(
        network_config=ItemNetworkConfig(**{**SMALL.to_dict(), "loss_items": 3, "hard_items": 1})
    )
    batch = hand_batch()
    features = agent.items.features
    exact = exact_items(batch.allowed)
    with torch.no_grad():
        q_exact = agent.online(batch.states, exact.items, features[exact.items])
        exact_j_e = set_margin_loss(q_exact, exact, batch.actions, 0.8, batch.is_demo)
        for _ in range(20):
            current, bootstrap = agent.loss_items(batch)
            assert current.items[:, 0].tolist() == batch.actions.tolist()  # a_E first in every row
            assert (current.valid.sum(dim=1) <= 3).all() and bootstrap.items.shape[0] == 8
            for padded, sets in (
                (current, batch.allowed),
                (bootstrap, batch.next_allowed + batch.nstep_allowed),
            ):
                for row, allowed in enumerate(sets):
                    chosen = padded.items[row][padded.valid[row]].tolist()
                    assert len(set(chosen)) == len(chosen) and all(item in allowed for item in chosen)
            q = agent.online(batch.states, current.items, features[current.items])
            sampled = set_margin_loss(q, current, batch.actions, 0.8, batch.is_demo)
            assert (sampled >= 0).all() and (sampled <= exact_j_e + 1e-6).all()
    # Row 1 allows 3 items: its subset is the whole set, so its sampled J_E is exact.
    assert sampled[1].item() == pytest.approx(exact_j_e[1].item())


def test_adding_items_keeps_stored_transitions_old_outputs_sets_and_adams_old_rows():
    network_config = ItemNetworkConfig(**{**SMALL.to_dict(), "item_embedding_dim": 2})
    agent = small_agent(network_config=network_config)
    rng = np.random.default_rng(1)
    states = rng.normal(size=(12, STATE))
    actions = rng.integers(0, N_ITEMS, size=12)
    agent.add_demonstrations(states, actions, np.ones(12), np.arange(12) % 4 == 3)
    agent.observe(states[0], 4, 1.0, states[1], False, allowed=AllowedSet(7, candidates=(4, 6)))
    agent.pretrain(5)
    replay = agent.replay
    stored = [replay.demo.states.copy(), replay.demo.actions.copy(), replay.agent.states.copy()]
    sets = list(replay.demo_allowed[: replay.demo_size]) + list(replay.agent_allowed[:2])
    old = np.arange(N_ITEMS)
    q_before = agent.q_values(states[:5], old)
    embedding = agent.online.item_embedding.weight.detach().clone()
    moments = agent.optimizer.state[agent.online.item_embedding.weight]["exp_avg"].clone()

    assert agent.add_items(rng.normal(size=(3, FEATURES))) == range(7, 10)

    assert all(
        np.array_equal(a, b)
        for a, b in zip(stored, [replay.demo.states, replay.demo.actions, replay.agent.states], strict=True)
    )
    assert list(replay.demo_allowed[: replay.demo_size]) + list(replay.agent_allowed[:2]) == sets
    assert all(new not in s for s in sets for new in (7, 8, 9))  # new items never join an old step's set
    np.testing.assert_array_equal(agent.q_values(states[:5], old), q_before)
    weight = agent.online.item_embedding.weight
    assert weight.shape == (10, 2) and agent.target.item_embedding.weight.shape == (10, 2)
    assert torch.equal(weight[:7], embedding) and not weight[7:].any()
    state = agent.optimizer.state[weight]
    assert torch.equal(state["exp_avg"][:7], moments) and not state["exp_avg"][7:].any()
    # A row appended to the shared table by someone else is picked up at the next update.
    agent.items.append(rng.normal(size=(1, FEATURES)))
    agent.train_step()
    assert agent.online.item_embedding.weight.shape == (11, 2) and agent.n_updates == 6


def test_save_load_round_trip_and_checkpoints_grow_only_with_embeddings(tmp_path):
    agent = small_agent(network_config=ItemNetworkConfig(**{**SMALL.to_dict(), "item_embedding_dim": 4}))
    rng = np.random.default_rng(2)
    states = rng.normal(size=(16, STATE))
    agent.add_demonstrations(states, rng.integers(0, N_ITEMS, size=16), np.ones(16), np.ones(16, bool))
    agent.pretrain(4)
    agent.metadata = {"features": ["quality", "appeal", "topic"], "scale": [1.0, 2.0, 0.5]}
    buffer = io.BytesIO()
    agent.save(buffer)
    agent.add_items(rng.normal(size=(2, FEATURES)))  # the table grows after the save
    buffer.seek(0)
    loaded = ItemDQfDAgent.load(buffer, agent.items)
    np.testing.assert_array_equal(loaded.q_values(states, np.arange(9)), agent.q_values(states, np.arange(9)))
    assert loaded.metadata == agent.metadata and loaded.n_updates == 4 and loaded.n_pretrain_updates == 4
    assert loaded.online.item_embedding.weight.shape == (9, 4)
    for mine, theirs in zip(agent.optimizer.state.values(), loaded.optimizer.state.values(), strict=True):
        assert torch.equal(mine["exp_avg"], theirs["exp_avg"]) and torch.equal(
            mine["exp_avg_sq"], theirs["exp_avg_sq"]
        )
    with pytest.raises(ValueError, match="saw 7 items"):
        buffer.seek(0)
        ItemDQfDAgent.load(buffer, ItemTable(FEATURES, np.zeros((3, FEATURES))))

    def size(n_items: int, embedding: int) -> int:
        config = ItemNetworkConfig(**{**SMALL.to_dict(), "item_embedding_dim": embedding})
        other = small_agent(n_items=n_items, network_config=config)
        path = tmp_path / f"{n_items}-{embedding}.pt"
        other.save(path)
        return path.stat().st_size

    # Without embeddings the checkpoint does not depend on n (item features are not in it); with them it
    # grows by 4 tensors (online, target, Adam's two moments) × 4 floats × 4 bytes per item.
    assert abs(size(10, 0) - size(1000, 0)) <= 64
    growth = size(1000, 4) - size(10, 4)
    assert abs(growth - 990 * 2 * 4 * 4) <= 1024  # Adam's moments exist only after a step: 2 tensors here
    fresh = small_agent(
        n_items=10, network_config=ItemNetworkConfig(**{**SMALL.to_dict(), "item_embedding_dim": 4})
    )
    assert fresh.optimizer.state == {}


def test_pretraining_a_feature_bandit_learns_the_demonstrated_best_and_ranks_new_items_by_features():
    # Five items with a quality feature; each demonstration offers two of them and the demonstrator takes
    # the better one, rewarded by its quality (one-step episodes).
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    quality = np.array([0.1, 0.5, 0.3, 0.9, 0.7])
    items = ItemTable(2, np.stack([quality, rng.uniform(size=5)], axis=1))
    config = DQfDConfig(batch_size=16, n_step=1, gamma=0.0, target_update_period=100, learning_rate=1e-3)
    network = ItemNetworkConfig(embedding_dim=8, state_hidden=(16,), item_hidden=(16,), cross_hidden=(8,))
    agent = ItemDQfDAgent(2, items, config, network, seed=0)
    states = rng.normal(size=(64, 2))
    offers = [
        AllowedSet(5, candidates=tuple(rng.choice(5, size=2, replace=False).tolist())) for _ in range(64)
    ]
    chosen = np.array([max(offer.candidates, key=lambda i: quality[i]) for offer in offers])
    agent.add_demonstrations(states, chosen, quality[chosen], np.ones(64, bool), allowed=offers)
    agent.pretrain(500)
    assert [agent.act(s, epsilon=0.0) for s in states[:10]] == [3] * 10
    assert agent.top_k(states[0], 5)[0].tolist() == [3, 4, 1, 2, 0]  # the whole order, by quality
    # New items, never demonstrated: the best features go first, the worst last, without any update.
    assert agent.add_items(np.array([[1.2, 0.5], [-0.2, 0.5]])) == range(5, 7)
    for state in states[:10]:
        ranking = agent.top_k(state, 7)[0].tolist()
        assert ranking[0] == 5 and ranking[-1] == 6
    # Candidate lists and exclusions are respected.
    assert agent.top_k(states[0], 2, AllowedSet(7, candidates=(0, 2, 6)))[0].tolist() == [2, 0]
    assert agent.act(states[0], AllowedSet(7, exclusions=frozenset({3, 5})), epsilon=0.0) == 4
    assert {agent.act(states[0], AllowedSet(7, candidates=(1, 6)), epsilon=1.0) for _ in range(20)} == {1, 6}


def test_non_finite_rows_are_skipped_quarantined_and_learning_goes_on():
    agent = small_agent(batch_size=8)
    rng = np.random.default_rng(4)
    states = rng.normal(size=(20, STATE))
    states[7] = 3e38  # finite as float32, overflows the network: Q is not finite
    agent.add_demonstrations(states, rng.integers(0, N_ITEMS, size=20), np.ones(20), np.ones(20, bool))
    agent.pretrain(40)
    assert agent.n_quarantined == 1 and agent.n_skipped_updates >= 1
    assert agent.n_updates + agent.n_skipped_updates == 40 and not agent.diverged
    assert all(torch.isfinite(p).all() for p in agent.online.parameters())
    assert agent.replay.priorities(np.array([7]))[0] == 0.0


def test_bad_inputs_are_refused_naming_the_problem():
    agent = small_agent()
    with pytest.raises(ValueError, match="item 4 is not allowed"):
        agent.add_demonstrations(
            np.zeros((1, STATE)), np.array([4]), np.ones(1), np.ones(1, bool), allowed=[AllowedSet(4)]
        )
    with pytest.raises(ValueError, match="item 2 is not in the allowed set"):
        agent.observe(np.zeros(STATE), 2, 0.0, np.zeros(STATE), True, mask=np.array([1, 1, 0, 1], bool))
    with pytest.raises(ValueError, match="state: feature 0"):
        agent.observe(np.full(STATE, np.nan), 2, 0.0, np.zeros(STATE), True)
    masks = np.ones((2, N_ITEMS), bool)
    masks[:, 5] = False
    assert (
        agent.add_demonstrations(
            np.zeros((2, STATE)), np.array([1, 2]), np.ones(2), np.ones(2, bool), masks=masks
        )
        == 2
    )
    assert agent.replay.demo_allowed[0] == AllowedSet(7, exclusions=frozenset({5}))
    with pytest.raises(ValueError, match="loss_items"):
        ItemNetworkConfig(loss_items=1)


class ConcatQ(torch.nn.Module):
    """A user's own ItemQNetwork (ReAgent-style: one MLP over [state, item features]), no two towers."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(STATE + FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
        )

    def forward(
        self, states: torch.Tensor, item_indices: torch.Tensor, item_features: torch.Tensor
    ) -> torch.Tensor:
        expanded = states.unsqueeze(1).expand(-1, item_indices.shape[1], -1)
        return self.mlp(torch.cat([expanded, item_features], dim=-1)).squeeze(-1)


def test_a_custom_network_trains_through_autograd_sampled_and_needs_itself_to_load():
    rng = np.random.default_rng(5)
    items = ItemTable(FEATURES, rng.normal(size=(40, FEATURES)))
    torch.manual_seed(0)
    network_config = ItemNetworkConfig(loss_items=6, hard_items=2)
    config = DQfDConfig(batch_size=16, n_step=2, target_update_period=50, learning_rate=1e-3)
    agent = ItemDQfDAgent(STATE, items, config, network_config, network=ConcatQ(), seed=0)
    states = rng.normal(size=(64, STATE))
    agent.add_demonstrations(states, np.full(64, 17), np.ones(64), np.arange(64) % 8 == 7)
    before = copy.deepcopy(agent.online.state_dict())
    summary = agent.pretrain(150, log_every=50)
    first, last = summary["history"][0], summary["history"][-1]
    assert last["j_e"] < first["j_e"] and agent.n_updates == 150
    assert not torch.equal(before["mlp.0.weight"], agent.online.mlp[0].weight)
    # Screened by its full Q (no two towers): the hard items of every row are allowed items.
    batch = agent.sample(demo_only=True)
    current, _ = agent.loss_items(batch)
    assert current.items[:, 0].tolist() == [17] * 16 and (current.valid.sum(dim=1) == 6).all()
    buffer = io.BytesIO()
    agent.save(buffer)
    buffer.seek(0)
    with pytest.raises(ValueError, match="custom network"):
        ItemDQfDAgent.load(buffer, items)
    buffer.seek(0)
    loaded = ItemDQfDAgent.load(buffer, items, network=ConcatQ())
    np.testing.assert_array_equal(
        loaded.q_values(states[:3], np.arange(40)), agent.q_values(states[:3], np.arange(40))
    )
