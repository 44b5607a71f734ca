"""Issue 15: the fixed-head agent trains any ``torch.nn.Module`` through autograd; the hand-written
backward pass stays the fast path of the built-in dueling network and equals autograd."""

import copy
import io

import numpy as np
import pytest
import torch
from torch import nn

from agent import DQfDAgent, DQfDConfig, NumpyQNetwork
from agent.gradients import autograd_gradient, hand_written_gradient
from agent.losses import double_dqn_bootstrap, l2_loss, margin_loss, masked, q_filter, td_loss, td_targets
from agent.networks import DuelingQNetwork
from agent.types import Batch

S, A, B = 3, 4, 8
"""State width, actions and rows of the hand-made batch."""
DEMO_ROWS = 4
"""Rows 0-3 of the hand-made batch are demonstrations, rows 4-7 the agent's own transitions."""


def sequential(seed: int = 0, hidden: int = 16) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(S, hidden), nn.Tanh(), nn.Linear(hidden, A))


def hand_made_batch(online: nn.Module, seed: int = 0) -> Batch:
    """A batch with masks at s, s' and s_{t+n}, a terminal row, an n-step window ending at a terminal
    transition, and four demonstrations of which the Q-filter keeps exactly two: rows 0-1 demonstrate the
    online network's allowed argmax (kept), rows 2-3 another allowed action (dropped)."""
    rng = np.random.default_rng(seed)
    stacked = torch.tensor(rng.normal(size=(3 * B, S)), dtype=torch.float32)
    masks = rng.random((3 * B, A)) < 0.6
    masks[:, 0] = True  # every row allows at least one action, the first four rows at least two
    masks[:DEMO_ROWS, 1] = True
    stacked_masks = torch.tensor(masks)
    with torch.no_grad():
        q = masked(online(stacked[:B]), stacked_masks[:B])
    best = q.argmax(dim=1)
    actions = torch.tensor(rng.integers(0, A, B))
    for row in range(B):
        allowed = torch.nonzero(stacked_masks[row]).flatten()
        if row < 2:
            actions[row] = best[row]
        elif row < DEMO_ROWS:
            actions[row] = allowed[allowed != best[row]][0]
        else:
            actions[row] = allowed[int(rng.integers(len(allowed)))]
    discounts = torch.full((B,), 0.99)
    discounts[5] = 0.0  # a terminal transition: no bootstrap
    nstep_discounts = torch.full((B,), 0.99**10)
    nstep_discounts[6] = 0.0
    return Batch(
        states=stacked[:B],
        actions=actions,
        masks=stacked_masks[:B],
        rewards=torch.tensor(rng.normal(size=B), dtype=torch.float32),
        next_states=stacked[B : 2 * B],
        next_masks=stacked_masks[B : 2 * B],
        discounts=discounts,
        nstep_returns=torch.tensor(rng.normal(size=B), dtype=torch.float32),
        nstep_states=stacked[2 * B :],
        nstep_masks=stacked_masks[2 * B :],
        nstep_discounts=nstep_discounts,
        is_demo=torch.arange(B) < DEMO_ROWS,
        weights=torch.tensor(rng.uniform(0.3, 1.0, size=B), dtype=torch.float32),
        indices=np.arange(B),
        stacked_states=stacked,
        stacked_masks=stacked_masks,
    )


def config(**overrides) -> DQfDConfig:
    return DQfDConfig(**{"hidden_sizes": (16, 8), "batch_size": 8, "q_filter": True, **overrides})


# ------------------------------------------------------------------ built-in network: fast path = autograd
def test_the_hand_written_gradient_equals_autograds_on_the_built_in_network():
    net = DuelingQNetwork(S, A, (16, 8))
    torch.manual_seed(1)
    target = DuelingQNetwork(S, A, (16, 8))
    batch = hand_made_batch(net)
    cfg = config(td_loss="huber")
    flat = torch.zeros(sum(p.numel() for p in net.parameters()))
    offset = 0
    for p in net.parameters():  # .grad as views of one flat tensor, as the agent lays them out
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    fast = hand_written_gradient(net, target, batch, cfg, 0.7, use_q_filter=True)
    fast_grad = flat.clone()
    flat.fill_(123.0)  # autograd's path must zero it first
    slow = autograd_gradient(net, target, batch, cfg, 0.7, use_q_filter=True, flat_grad=flat)
    assert fast.keep.tolist() == slow.keep.tolist() == [True, True, False, False, False, False, False, False]
    torch.testing.assert_close(flat, fast_grad, rtol=1e-5, atol=1e-7)
    assert float(fast_grad.abs().sum()) > 0
    for name in ("q", "q_taken", "target_1", "target_n", "j_dq", "j_n", "j_e", "per_sample"):
        torch.testing.assert_close(getattr(slow, name), getattr(fast, name), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("td_kind", "max_grad_norm"), [("huber", None), ("squared", 0.05)])
def test_an_update_through_autograd_equals_the_fast_path_on_the_built_in_network(td_kind, max_grad_norm):
    fast, slow = (
        DQfDAgent(S, A, config(lambda_l2=0.05, max_grad_norm=max_grad_norm, td_loss=td_kind), seed=3)
        for _ in range(2)
    )
    assert fast.hand_written_backward
    slow.hand_written_backward = False
    batch = hand_made_batch(fast.online)
    fast_info, fast_td = fast.learn(batch)
    slow_info, slow_td = slow.learn(batch)
    assert fast_info.margin_kept == slow_info.margin_kept == 0.5  # the Q-filter dropped two of four
    for key, value in fast_info.as_dict().items():
        assert getattr(slow_info, key) == pytest.approx(value, rel=1e-5, abs=1e-7), key
    np.testing.assert_allclose(slow_td, fast_td, rtol=1e-6)
    torch.testing.assert_close(slow._flat.grad, fast._flat.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(slow._flat.data, fast._flat.data, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fast._flat.data, DQfDAgent(S, A, config(), seed=3)._flat.data)  # it moved


# ------------------------------------------------------------------ a user network
def test_a_user_network_update_equals_autograd_and_adam_on_the_full_loss():
    cfg = config(lambda_l2=0.05, max_grad_norm=0.05, td_loss="squared", margin_decay_demo_ratio=None)
    agent = DQfDAgent(S, A, cfg, seed=0, network=sequential(0))
    assert not agent.hand_written_backward
    online, target = copy.deepcopy(agent.online), copy.deepcopy(agent.target)
    optimizer = torch.optim.Adam(online.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    batch = hand_made_batch(agent.online)
    info, abs_td = agent.learn(batch)

    q = online(batch.states)
    q_taken = q.gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        b1 = double_dqn_bootstrap(online(batch.next_states), target(batch.next_states), batch.next_masks)
        bn = double_dqn_bootstrap(online(batch.nstep_states), target(batch.nstep_states), batch.nstep_masks)
    target_1 = td_targets(batch.rewards, batch.discounts, b1)
    keep = batch.is_demo & q_filter(q.detach(), batch.actions, batch.masks)
    per_sample = (
        td_loss(q_taken, target_1, "squared")
        + cfg.lambda_n
        * td_loss(q_taken, td_targets(batch.nstep_returns, batch.nstep_discounts, bn), "squared")
        + cfg.lambda_margin * margin_loss(q, batch.actions, cfg.margin, batch.masks, keep)
    )
    j_l2 = l2_loss(online.parameters(), cfg.lambda_l2)
    loss = (batch.weights * per_sample).mean() + j_l2
    loss.backward()
    assert torch.nn.utils.clip_grad_norm_(online.parameters(), 0.05) > 0.05  # clipping is active
    optimizer.step()

    assert keep.tolist() == [True, True] + [False] * 6
    assert info.loss == pytest.approx(loss.item(), rel=1e-5)
    assert info.j_l2 == pytest.approx(j_l2.item(), rel=1e-5)
    np.testing.assert_allclose(abs_td, (target_1 - q_taken).abs().detach().numpy(), rtol=1e-6)
    for mine, reference in zip(agent.online.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-6)


def teacher_demos(seed: int = 0, rows: int = 60) -> dict[str, np.ndarray]:
    """Demonstrations of a fixed linear teacher (action = argmax of a fixed projection of the state)."""
    rng = np.random.default_rng(seed)
    states = rng.normal(size=(rows, S)).astype(np.float32)
    actions = (states @ rng.normal(size=(S, A))).argmax(axis=1)
    dones = np.arange(rows) % 10 == 9
    return {"states": states, "actions": actions, "rewards": np.ones(rows), "dones": dones}


def test_a_user_sequential_network_trains_and_its_target_copies():
    demos = teacher_demos()
    # γ = 0.5 so that the TD targets settle within the run; learning rate 1e-3 so that 300 updates do.
    cfg = config(target_update_period=50, n_step=3, gamma=0.5, learning_rate=1e-3)
    agent = DQfDAgent(S, A, cfg, seed=0, network=sequential(0, 32))
    agent.add_demonstrations(**demos)
    before = {k: v.clone() for k, v in agent.online.state_dict().items()}
    greedy_before = agent.q_values(demos["states"]).argmax(axis=1)
    summary = agent.pretrain(300, log_every=50)
    first, last = summary["history"][0], summary["history"][-1]
    assert last["loss"] < 0.25 * first["loss"] and last["j_e"] < 0.3 * first["j_e"]
    accuracy_before = float((greedy_before == demos["actions"]).mean())
    accuracy = float((agent.q_values(demos["states"]).argmax(axis=1) == demos["actions"]).mean())
    assert accuracy >= 0.85 > 0.3 > accuracy_before  # the demonstrated action, on the demonstrated states
    assert all(not torch.equal(before[k], v) for k, v in agent.online.state_dict().items())
    assert agent.n_target_syncs == 6 and agent.n_skipped_updates == 0
    for key, value in agent.target.state_dict().items():  # 300 is a multiple of 50: just copied
        torch.testing.assert_close(value, agent.online.state_dict()[key], rtol=0, atol=0)
    # The agent's flat tensor is what Adam optimises: the module's weights are views of it.
    with torch.no_grad():
        agent._flat.zero_()
    assert all(float(p.detach().abs().sum()) == 0.0 for p in agent.online.parameters())


def test_a_user_network_checkpoint_loads_with_a_module_of_the_same_architecture():
    agent = DQfDAgent(S, A, config(), seed=0, network=sequential(0))
    agent.add_demonstrations(**teacher_demos())
    agent.pretrain(10)
    buffer = io.BytesIO()
    agent.save(buffer)
    data = buffer.getvalue()
    with pytest.raises(ValueError, match="pass network="):
        DQfDAgent.load(io.BytesIO(data))
    with pytest.raises(ValueError, match="user network"):
        NumpyQNetwork.from_checkpoint(io.BytesIO(data))
    with pytest.raises(RuntimeError, match="state_dict"):  # a different architecture
        DQfDAgent.load(io.BytesIO(data), network=sequential(0, hidden=8))
    restored = DQfDAgent.load(io.BytesIO(data), network=sequential(seed=9))
    states = np.random.default_rng(5).normal(size=(10, S)).astype(np.float32)
    np.testing.assert_array_equal(restored.q_values(states), agent.q_values(states))
    assert restored.n_updates == 10 and restored.user_network and not restored.hand_written_backward
    # Adam's state came back too: one more identical update from both gives identical weights.
    restored.add_demonstrations(**teacher_demos())
    restored.replay = copy.deepcopy(agent.replay)
    restored.rng = copy.deepcopy(agent.rng)
    restored.replay.rng = restored.rng
    agent.replay.rng = agent.rng
    agent.train_step()
    restored.train_step()
    np.testing.assert_array_equal(restored.q_values(states), agent.q_values(states))


def test_a_user_network_cannot_take_the_fast_path_or_a_numpy_copy():
    agent = DQfDAgent(S, A, config(), seed=0, network=sequential())
    with pytest.raises(ValueError, match="DuelingQNetwork"):
        agent.hand_written_backward = True
    with pytest.raises(TypeError, match="q_values"):
        agent.numpy_policy()


@pytest.mark.parametrize(
    ("network", "message"),
    [
        (nn.Linear(S, A + 1), r"Q-values \(B, 4\); got \(2, 5\) torch.float32"),
        (nn.Linear(S, A).double(), "float32"),
        (nn.ReLU(), "no parameters"),
    ],
)
def test_a_network_of_the_wrong_shape_or_dtype_is_refused(network, message):
    with pytest.raises(ValueError, match=message):
        DQfDAgent(S, A, config(), network=network)


def test_a_non_finite_update_of_a_user_network_is_skipped_and_its_row_quarantined():
    agent = DQfDAgent(S, A, config(td_loss="squared"), seed=0, network=sequential())
    batch = hand_made_batch(agent.online)
    rewards = batch.rewards.clone()
    rewards[6] = 3e38  # finite, but its squared TD error is not
    before = agent._flat.detach().clone()
    info, abs_td = agent.learn(batch._replace(rewards=rewards))
    assert info.skipped == 1.0 and agent.n_skipped_updates == 1 and agent.n_updates == 0
    assert np.isnan(abs_td).tolist() == [row == 6 for row in range(B)]
    torch.testing.assert_close(agent._flat.detach(), before, rtol=0, atol=0)
