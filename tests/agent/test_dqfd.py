"""The agent's update, phases, acting, validation and checkpoints."""

import copy
import io
import subprocess
import sys

import numpy as np
import pytest
import torch

from agent import DQfDAgent, DQfDConfig, Episode, NumpyQNetwork
from agent.losses import double_dqn_bootstrap, l2_loss, margin_loss, q_filter, td_loss, td_targets
from agent.networks import DuelingQNetwork, dueling_combine, dueling_combine_backward


def agent_with_demos(seed: int = 0, **overrides) -> DQfDAgent:
    config = DQfDConfig(hidden_sizes=(16, 16), batch_size=8, **overrides)
    agent = DQfDAgent(state_dim=3, n_actions=4, config=config, seed=seed)
    rng = np.random.default_rng(seed)
    states = rng.normal(size=(40, 3)).astype(np.float32)
    episode_ids = np.repeat(np.arange(4), 10)
    dones = np.zeros(40, dtype=bool)
    dones[[9, 19, 29]] = True  # the fourth episode is cut short
    agent.add_demonstrations(states, rng.integers(0, 4, 40), rng.normal(size=40), dones, episode_ids)
    return agent


def test_target_network_changes_exactly_every_tau_updates():
    agent = agent_with_demos(target_update_period=5)
    changed_at = []
    previous = copy.deepcopy(agent.target.state_dict())
    for update in range(1, 16):
        agent.train_step()
        current = agent.target.state_dict()
        if any(not torch.equal(previous[k], current[k]) for k in current):
            changed_at.append(update)
            assert all(torch.equal(current[k], agent.online.state_dict()[k]) for k in current)
        previous = copy.deepcopy(current)
    assert changed_at == [5, 10, 15]
    assert agent.n_target_syncs == 3


def agent_with_masked_demos(seed: int = 0, **overrides) -> DQfDAgent:
    """Like :func:`agent_with_demos`, with allowed-action masks that often exclude the action that would
    otherwise win J_E's max, and online data mixed in (so the batch has non-demonstration samples)."""
    agent = agent_with_demos(seed, **overrides)
    agent.clear_demonstrations()
    rng = np.random.default_rng(seed + 1)
    states = rng.normal(size=(40, 3)).astype(np.float32)
    actions = rng.integers(0, 4, 40)
    masks = rng.random((40, 4)) < 0.5
    masks[np.arange(40), actions] = True
    dones = np.zeros(40, dtype=bool)
    dones[[9, 19, 29, 39]] = True
    agent.add_demonstrations(states, actions, rng.normal(size=40), dones, np.repeat(np.arange(4), 10), masks)
    for _ in range(30):
        mask = rng.random(4) < 0.5
        mask[0] = True
        agent.observe(rng.normal(size=3), 0, float(rng.normal()), rng.normal(size=3), False, mask, mask)
    return agent


OVERRULE = {"q_filter": True, "margin_decay_demo_ratio": 1.0}
"""Both options that let live data overrule the demonstrator (tests/agent/test_overrule.py)."""


@pytest.mark.parametrize(
    ("make_agent", "td_kind", "max_grad_norm", "options"),
    [
        (agent_with_demos, "huber", None, {}),
        (agent_with_demos, "huber", 0.05, {}),
        (agent_with_masked_demos, "huber", None, {}),
        (agent_with_masked_demos, "squared", 0.05, {}),
        (agent_with_masked_demos, "huber", None, OVERRULE),
        (agent_with_masked_demos, "squared", 0.05, OVERRULE),
    ],
)
def test_update_equals_backpropagating_the_full_loss_with_the_l2_term(
    make_agent, td_kind, max_grad_norm, options
):
    # The update writes dJ/dθ out by hand (no autograd graph); here autograd on J itself is the reference.
    agent = make_agent(lambda_l2=0.05, max_grad_norm=max_grad_norm, td_loss=td_kind, **options)
    if options:  # weights pretrained a little, so that a_E leads on some demonstrations and not on others
        pretrained = make_agent(lambda_l2=0.05, max_grad_norm=max_grad_norm, td_loss=td_kind, **options)
        pretrained.pretrain(100)
        agent.online.load_state_dict(pretrained.online.state_dict())
        agent.target.load_state_dict(pretrained.target.state_dict())
    cfg = agent.config
    # The reference: plain modules with the same weights, autograd and torch.optim.Adam over them.
    online, target = (DuelingQNetwork(3, 4, cfg.hidden_sizes) for _ in range(2))
    online.load_state_dict(agent.online.state_dict())
    target.load_state_dict(agent.target.state_dict())
    optimizer = torch.optim.Adam(online.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    batch = agent.sample()
    info, abs_td = agent.learn(batch)

    q = online(batch.states)
    q_taken = q.gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        b1 = double_dqn_bootstrap(online(batch.next_states), target(batch.next_states), batch.next_masks)
        bn = double_dqn_bootstrap(online(batch.nstep_states), target(batch.nstep_states), batch.nstep_masks)
    target_1 = td_targets(batch.rewards, batch.discounts, b1)
    keep = batch.is_demo
    if options:  # the Q-filter's test is an indicator outside the gradient; λ2 decayed by D / (D + n_agent)
        keep = keep & q_filter(q.detach(), batch.actions, batch.masks)
        assert 0 < int(keep.sum()) < int(batch.is_demo.sum())  # the filter keeps some and drops some
    weight = cfg.lambda_margin * (40 / (40 + 30) if options else 1.0)
    per_sample = (
        td_loss(q_taken, target_1, td_kind)
        + cfg.lambda_n * td_loss(q_taken, td_targets(batch.nstep_returns, batch.nstep_discounts, bn), td_kind)
        + weight * margin_loss(q, batch.actions, cfg.margin, batch.masks, keep)
    )
    j_l2 = l2_loss(online.parameters(), cfg.lambda_l2)
    loss = (batch.weights * per_sample).mean() + j_l2
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(online.parameters(), max_grad_norm)
        assert norm > max_grad_norm  # the clipping is active in this case
    optimizer.step()

    if make_agent is agent_with_masked_demos:  # the case is what it claims to be
        assert batch.masks is not None and not bool(batch.masks.all())
        assert 0 < int(batch.is_demo.sum()) < len(batch.is_demo)
    assert info.loss == pytest.approx(loss.item(), rel=1e-5)
    assert info.j_l2 == pytest.approx(j_l2.item(), rel=1e-5)
    np.testing.assert_allclose(abs_td, (target_1 - q_taken).abs().detach().numpy(), rtol=1e-6)
    for a, b in zip(agent.online.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_backward_q_gives_autograds_parameter_gradients():
    net = DuelingQNetwork(5, 4, (16, 8))
    states = torch.randn(6, 5)
    extra = torch.randn(3, 5)  # bootstrap rows: in the forward pass, never in the gradient
    grad_q = torch.randn(6, 4)
    with torch.no_grad():
        q_all, inputs = net.forward_keeping_activations(torch.cat([states, extra]))
    torch.testing.assert_close(q_all[:6], net(states).detach(), rtol=0, atol=0)
    net.backward_q(inputs, grad_q)
    manual = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    (net(states) * grad_q).sum().backward()
    for mine, autograd in zip(manual, [p.grad for p in net.parameters()], strict=True):
        torch.testing.assert_close(mine, autograd, rtol=1e-5, atol=1e-7)


def test_dueling_combination_is_hand_computed_v_plus_a_minus_mean_a():
    head = torch.tensor([[1.0, 2.0, 4.0, 0.0], [-1.0, 0.0, 0.0, 3.0]])  # columns: V, A_1, A_2, A_3
    # Row 0: mean A = 2, Q = 1 + A − 2; row 1: mean A = 1, Q = −1 + A − 1.
    assert dueling_combine(head).tolist() == [[1.0, 3.0, -1.0], [-2.0, -2.0, 1.0]]
    # dJ/dV = Σ g = −3; dJ/dA = g − mean(g) = g + 1.
    assert dueling_combine_backward(torch.tensor([[1.0, 0.0, -4.0]])).tolist() == [[-3.0, 2.0, 1.0, -3.0]]
    assert dueling_combine(torch.tensor([[2.0, 5.0]])).tolist() == [[2.0]]  # one action: Q = V


@pytest.mark.parametrize("n_actions", [1, 257])
def test_backward_q_equals_autograd_for_one_action_and_for_many(n_actions):
    torch.manual_seed(0)
    net = DuelingQNetwork(5, n_actions, (16,))
    states, grad_q = torch.randn(7, 5), torch.randn(7, n_actions)
    with torch.no_grad():
        q_all, inputs = net.forward_keeping_activations(torch.cat([states, torch.randn(2, 5)]))
    torch.testing.assert_close(q_all[:7], net(states).detach(), rtol=0, atol=0)
    net.backward_q(inputs, grad_q)
    manual = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    (net(states) * grad_q).sum().backward()
    for mine, autograd in zip(manual, [p.grad for p in net.parameters()], strict=True):
        torch.testing.assert_close(mine, autograd, rtol=1e-5, atol=1e-6)


def test_the_dueling_network_holds_only_its_weights_in_o_n_memory():
    # The dense (n+1)×n combination matrix is gone: at 10,000 actions it was 400 MB. It was never in the
    # state dict, so checkpoints written before and after hold the same keys.
    net = DuelingQNetwork(3, 10_000, (8,))
    assert list(net.buffers()) == []
    assert list(net.state_dict()) == ["trunk.0.weight", "trunk.0.bias", "head.weight", "head.bias"]
    assert sum(p.numel() for p in net.parameters()) == 3 * 8 + 8 + 8 * 10_001 + 10_001


def test_train_step_reports_every_loss_component():
    info = agent_with_demos().train_step()
    assert set(info) == {
        "loss",
        "j_dq",
        "j_n",
        "j_e",
        "j_l2",
        "demo_fraction",
        "mean_q",
        "skipped",
        "margin_weight",
        "margin_kept",
    }
    assert info["skipped"] == 0.0
    assert all(np.isfinite(v) for v in info.values())


def test_pretrain_needs_demonstrations_and_reports_progress():
    empty = DQfDAgent(3, 4, DQfDConfig(hidden_sizes=(8,)))
    with pytest.raises(RuntimeError, match="demonstrations"):
        empty.pretrain(1)
    agent = agent_with_demos()
    calls = []
    summary = agent.pretrain(30, callback=lambda step, losses: calls.append(step), log_every=10)
    assert calls == [10, 20, 30]
    assert [h["step"] for h in summary["history"]] == [10, 20, 30]
    assert agent.n_updates == agent.n_pretrain_updates == 30
    assert summary["steps"] == 30


def test_acting_respects_the_mask_and_epsilon():
    agent = agent_with_demos()
    state = np.zeros(3, dtype=np.float32)
    mask = np.array([False, False, True, False])
    assert {agent.act(state, mask=mask, epsilon=1.0) for _ in range(50)} == {2}
    q = agent.q_values(state, mask)
    assert np.isneginf(q[0, [0, 1, 3]]).all()
    greedy = int(np.argmax(agent.q_values(state)[0]))
    assert all(agent.act(state, epsilon=0.0) == greedy for _ in range(20))
    random_actions = {agent.act(state, epsilon=1.0) for _ in range(200)}
    assert random_actions == {0, 1, 2, 3}


def test_bootstrap_uses_the_mask_of_the_next_state():
    agent = DQfDAgent(2, 3, DQfDConfig(hidden_sizes=(8,), n_step=1), seed=0)
    masks = np.array([[True, True, True], [False, True, False]])
    agent.add_demonstrations(np.eye(2), [0, 1], [0.0, 1.0], [False, True], masks=masks)
    batch = agent.replay.gather(np.array([0]), np.ones(1), 1, 0.99, False, agent.device)
    assert batch.next_masks.tolist() == [[False, True, False]]
    assert batch.masks.tolist() == [[True, True, True]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"states": np.zeros((3, 2))}, "states must have shape"),
        ({"actions": [0, 4, 1]}, "actions must be in"),
        ({"rewards": [0.0, np.nan, 0.0]}, "row 1: reward: nan is not finite"),
        ({"episode_ids": [0, 1, 0]}, "contiguous"),
        ({"dones": [True, False, False], "episode_ids": [0, 0, 0]}, "not the last row"),
        ({"masks": np.array([[True] * 4, [False] * 4, [True] * 4])}, "at least one action"),
        ({"masks": np.array([[False, True, True, True]] * 3)}, "not allowed by its own mask"),
    ],
)
def test_bad_demonstrations_are_rejected_with_a_clear_message(kwargs, message):
    agent = DQfDAgent(3, 4, DQfDConfig(hidden_sizes=(8,)))
    data = {"states": np.zeros((3, 3)), "actions": [0, 0, 0], "rewards": [0.0] * 3, "dones": [False] * 3}
    data.update(kwargs)
    with pytest.raises(ValueError, match=message):
        agent.add_demonstrations(**data)
    assert agent.n_demonstrations == 0


def test_episodes_with_a_final_state_keep_every_step_as_a_transition():
    agent = DQfDAgent(2, 2, DQfDConfig(hidden_sizes=(8,)))
    cut_short = Episode(np.zeros((3, 2)), [0, 1, 0], [1.0, 1.0, 1.0], terminated=False)
    with_final = Episode(np.ones((3, 2)), [0, 1, 0], [1.0, 1.0, 1.0], False, final_state=np.ones(2))
    terminated = Episode(np.ones((2, 2)), [1, 1], [0.0, 5.0], terminated=True)
    assert agent.add_demonstration_episodes([cut_short, with_final, terminated]) == 2 + 3 + 2


def test_checkpoint_round_trip_gives_identical_q_values_and_counters():
    agent = agent_with_demos()
    agent.pretrain(12)
    buffer = io.BytesIO()
    agent.save(buffer)
    buffer.seek(0)
    raw = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert raw["config"]["n_step"] == 10 and raw["state_dim"] == 3 and raw["n_actions"] == 4
    restored = DQfDAgent.load(buffer)
    states = np.random.default_rng(5).normal(size=(10, 3)).astype(np.float32)
    np.testing.assert_array_equal(restored.q_values(states), agent.q_values(states))
    # the same checkpoint already read (the service reads once and dispatches on "format")
    np.testing.assert_array_equal(DQfDAgent.from_checkpoint(raw).q_values(states), agent.q_values(states))
    with pytest.raises(ValueError, match="not a DQfD agent checkpoint"):
        DQfDAgent.from_checkpoint({**raw, "format": "item-dqfd-agent"})
    assert restored.n_updates == 12 and restored.config == agent.config
    numpy_net = NumpyQNetwork.from_checkpoint(io.BytesIO(buffer.getvalue()))
    np.testing.assert_allclose(numpy_net.q_values(states), agent.q_values(states), rtol=1e-5, atol=1e-5)
    # optimizer state came back too: one more identical update from both gives identical weights
    restored.replay = copy.deepcopy(agent.replay)
    restored.rng = copy.deepcopy(agent.rng)
    restored.replay.rng = restored.rng
    agent.replay.rng = agent.rng
    agent.train_step()
    restored.train_step()
    np.testing.assert_allclose(restored.q_values(states), agent.q_values(states), rtol=1e-6, atol=1e-6)


def test_version_1_checkpoints_with_one_adam_state_per_tensor_still_load():
    agent = agent_with_demos()
    agent.pretrain(6)
    buffer = io.BytesIO()
    agent.save(buffer)
    checkpoint = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    # Rewrite it as version 1 wrote it: Adam's state split per weight tensor, in parameters() order.
    flat_state = checkpoint["optimizer"]["state"][0]
    sizes = [p.numel() for p in agent.online.parameters()]
    pieces = {key: torch.split(flat_state[key], sizes) for key in ("exp_avg", "exp_avg_sq")}
    shapes = [p.shape for p in agent.online.parameters()]
    checkpoint["version"] = 1
    checkpoint["optimizer"] = {
        "state": {
            i: {
                "step": flat_state["step"].clone(),
                "exp_avg": pieces["exp_avg"][i].reshape(shape),
                "exp_avg_sq": pieces["exp_avg_sq"][i].reshape(shape),
            }
            for i, shape in enumerate(shapes)
        },
        "param_groups": [dict(checkpoint["optimizer"]["param_groups"][0], params=list(range(len(shapes))))],
    }
    old = io.BytesIO()
    torch.save(checkpoint, old)
    old.seek(0)
    restored = DQfDAgent.load(old)
    state = restored.optimizer.state_dict()["state"][0]
    torch.testing.assert_close(state["exp_avg_sq"], flat_state["exp_avg_sq"], rtol=0, atol=0)
    assert float(state["step"]) == 6.0
    # The weights are views of the one tensor Adam optimises.
    with torch.no_grad():
        restored._flat.zero_()
    assert all(float(p.detach().abs().sum()) == 0.0 for p in restored.online.parameters())


def test_a_published_numpy_policy_does_not_change_while_the_agent_trains():
    agent = agent_with_demos()
    policy = agent.numpy_policy()
    states = np.random.default_rng(6).normal(size=(5, 3)).astype(np.float32)
    before = policy.q_values(states).copy()
    agent.pretrain(20)
    assert not np.allclose(agent.q_values(states), before)  # the agent did learn
    np.testing.assert_array_equal(policy.q_values(states), before)


def test_same_seed_same_agent():
    a, b = agent_with_demos(seed=3), agent_with_demos(seed=3)
    a.pretrain(5)
    b.pretrain(5)
    states = np.ones((2, 3), dtype=np.float32)
    np.testing.assert_array_equal(a.q_values(states), b.q_values(states))


def test_importing_agent_imports_neither_fastapi_nor_sqlalchemy():
    code = (
        "import sys, agent; "
        "print(any(m.split('.')[0] in ('fastapi', 'sqlalchemy', 'service') for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_config_defaults_are_the_papers():
    c = DQfDConfig()
    assert (c.gamma, c.n_step, c.lambda_n, c.lambda_margin, c.lambda_l2, c.margin) == (
        0.99,
        10,
        1.0,
        1.0,
        1e-5,
        0.8,
    )
    assert (c.priority_alpha, c.priority_beta_start, c.demo_priority_bonus, c.agent_priority_bonus) == (
        0.4,
        0.6,
        1.0,
        0.001,
    )
    assert (c.target_update_period, c.pretrain_steps, c.epsilon) == (10_000, 750_000, 0.01)
    with pytest.raises(ValueError, match="n_step"):
        DQfDConfig(n_step=0)
    with pytest.raises(TypeError, match="unknown"):
        DQfDConfig.from_dict({"n_stpe": 3})
