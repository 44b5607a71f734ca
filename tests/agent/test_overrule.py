"""Options that let live data overrule the demonstrator: the Q-filter on J_E and the decay of λ2.

Hand-computed on a network small enough to do by hand: one feature, one hidden ReLU unit, three actions.
With the state s = 1 the hidden unit is h = relu(1·1 + 0) = 1 and the head gives [V, A] = [1, 2, 1, 0],
so Q(s, ·) = V + A − mean A = [2, 1, 0]. Each demonstration is terminal with the reward equal to
Q(s, a_E), so both TD errors are 0 and the update's gradient is J_E's alone (λ3 = 0, no clipping).
"""

import pytest
import torch

from agent import DQfDAgent, DQfDConfig
from agent.losses import margin_loss, q_filter
from agent.schedules import decayed_margin_weight

Q_VALUES = [2.0, 1.0, 0.0]


def one_demo_agent(expert_action: int, **overrides) -> DQfDAgent:
    """The hand-set network, with the single demonstration (s = 1, a_E, r = Q(s, a_E), terminal)."""
    config = DQfDConfig(
        hidden_sizes=(1,), batch_size=1, n_step=1, margin=1.5, lambda_l2=0.0, max_grad_norm=None, **overrides
    )
    agent = DQfDAgent(state_dim=1, n_actions=3, config=config, seed=0)
    with torch.no_grad():
        trunk, head = agent.online.linear_layers
        trunk.weight.fill_(1.0)
        trunk.bias.fill_(0.0)
        head.weight.copy_(torch.tensor([[1.0], [2.0], [1.0], [0.0]]))
        head.bias.fill_(0.0)
    agent.sync_target()
    agent.add_demonstrations(torch.ones(1, 1).numpy(), [expert_action], [Q_VALUES[expert_action]], [True])
    return agent


def update(agent: DQfDAgent, demo_only: bool = False) -> tuple[dict[str, float], list[float], list[float]]:
    """One update on the demonstration; returns the loss report and the gradients of the head's bias
    ([V, A0, A1, A2]) and of the trunk ([weight, bias])."""
    batch = agent.sample(demo_only=True)
    info, _ = agent.learn(batch, demo_only=demo_only)
    trunk, head = agent.online.linear_layers
    return info.as_dict(), head.bias.grad.tolist(), [trunk.weight.grad.item(), trunk.bias.grad.item()]


def test_the_hand_set_network_gives_the_q_values_the_tests_assume():
    agent = one_demo_agent(1)
    assert agent.q_values(torch.ones(1, 1).numpy())[0].tolist() == pytest.approx(Q_VALUES, abs=1e-6)


def test_q_filter_keeps_only_demonstrations_whose_action_is_not_below_the_greedy_one():
    q = torch.tensor([Q_VALUES, Q_VALUES, Q_VALUES, [1.0, 1.0, 0.0]])
    # a_E = 0 is the argmax; a_E = 1 and 2 are below it; a tie with the argmax counts as not below.
    assert q_filter(q, torch.tensor([0, 1, 2, 1])).tolist() == [True, False, False, True]
    # With action 0 disallowed, a_E = 1 is the best allowed action and is kept.
    mask = torch.tensor([[False, True, True]] * 4)
    assert q_filter(q, torch.tensor([1, 1, 2, 1]), mask).tolist() == [True, True, False, True]


def test_filtered_margin_loss_is_zero_with_zero_gradient_and_kept_rows_are_unchanged():
    q = torch.tensor([Q_VALUES, Q_VALUES], requires_grad=True)
    actions = torch.tensor([0, 1])
    keep = q_filter(q, actions)
    loss = margin_loss(q, actions, margin=1.5, is_demo=keep)
    # a_E = 0: max(2, 1 + 1.5, 0 + 1.5) − 2 = 0.5; a_E = 1 is below the greedy action: dropped (unfiltered
    # it would be max(2 + 1.5, 1, 1.5) − 1 = 2.5).
    assert loss.tolist() == pytest.approx([0.5, 0.0])
    loss.sum().backward()
    assert q.grad.tolist() == [[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]


def test_unfiltered_update_pulls_toward_the_demonstrator_by_hand_computed_gradients():
    # J_E = 2.5; dJ/dQ = [+1 at a* = 0, −1 at a_E = 1, 0]; dJ/dV = Σ = 0, dJ/dA = g − mean g = [1, −1, 0];
    # dJ/dh = 1·0 + 2·1 + 1·(−1) + 0·0 = 1, so the trunk's weight and bias get 1·s = 1 and 1.
    info, head_grad, trunk_grad = update(one_demo_agent(1))
    assert info["j_e"] == pytest.approx(2.5, abs=1e-6)
    assert info["loss"] == pytest.approx(2.5, abs=1e-6)
    assert (info["margin_weight"], info["margin_kept"]) == (1.0, 1.0)
    assert head_grad == pytest.approx([0.0, 1.0, -1.0, 0.0], abs=1e-6)
    assert trunk_grad == pytest.approx([1.0, 1.0], abs=1e-6)


def test_q_filter_drops_the_demonstration_the_agent_values_below_its_own_choice():
    info, head_grad, trunk_grad = update(one_demo_agent(1, q_filter=True))
    assert (info["j_e"], info["margin_kept"]) == (0.0, 0.0)
    assert info["loss"] == pytest.approx(0.0, abs=1e-6)
    assert head_grad == pytest.approx([0.0] * 4, abs=1e-6)
    assert trunk_grad == pytest.approx([0.0, 0.0], abs=1e-6)


def test_q_filter_keeps_the_margin_where_the_agent_agrees():
    # a_E = 0 leads by 1 < 1.5: J_E = 0.5, dJ/dQ = [−1, +1 at a* = 1, 0], dJ/dA = [−1, 1, 0],
    # dJ/dh = 2·(−1) + 1·1 = −1.
    info, head_grad, trunk_grad = update(one_demo_agent(0, q_filter=True))
    assert info["j_e"] == pytest.approx(0.5, abs=1e-6)
    assert info["margin_kept"] == 1.0
    assert head_grad == pytest.approx([0.0, -1.0, 1.0, 0.0], abs=1e-6)
    assert trunk_grad == pytest.approx([-1.0, -1.0], abs=1e-6)


def test_pretraining_updates_are_never_filtered():
    info, head_grad, _ = update(one_demo_agent(1, q_filter=True), demo_only=True)
    assert (info["j_e"], info["margin_kept"]) == (pytest.approx(2.5, abs=1e-6), 1.0)
    assert head_grad == pytest.approx([0.0, 1.0, -1.0, 0.0], abs=1e-6)


@pytest.mark.parametrize(
    ("n_demonstrations", "n_agent", "ratio", "expected"),
    [
        (1000, 0, 1.0, 1.0),  # no agent data yet: λ2 itself
        (1000, 1000, 1.0, 0.5),  # as many own transitions as demonstrated: half
        (1000, 3000, 1.0, 0.25),
        (1000, 9000, 1.0, 0.1),
        (1000, 3000, 0.5, 500 / 3500),
        (1000, 3000, None, 1.0),  # no decay: the paper
        (0, 5, 1.0, 0.0),  # no demonstrations, nothing to weight
    ],
)
def test_decay_schedule_values(n_demonstrations, n_agent, ratio, expected):
    assert decayed_margin_weight(1.0, n_demonstrations, n_agent, ratio) == pytest.approx(expected)
    assert decayed_margin_weight(2.0, n_demonstrations, n_agent, ratio) == pytest.approx(2 * expected)


def test_decayed_update_scales_j_e_and_its_gradient_by_the_schedule():
    # One demonstration, 3 observed agent transitions, ratio 1: λ2 · 1 / (1 + 3) = 0.25.
    agent = one_demo_agent(1, margin_decay_demo_ratio=1.0)
    for _ in range(3):
        agent.observe([1.0], 2, 0.0, [1.0], True)
    assert agent.margin_weight() == 0.25
    assert agent.margin_weight(demo_only=True) == 1.0
    info, head_grad, trunk_grad = update(agent)
    assert info["margin_weight"] == 0.25
    assert info["j_e"] == pytest.approx(2.5, abs=1e-6)  # reported before λ2
    assert info["loss"] == pytest.approx(0.25 * 2.5, abs=1e-6)
    assert head_grad == pytest.approx([0.0, 0.25, -0.25, 0.0], abs=1e-6)
    assert trunk_grad == pytest.approx([0.25, 0.25], abs=1e-6)


def test_options_survive_a_checkpoint_and_default_to_the_paper():
    config = DQfDConfig()
    assert (config.q_filter, config.margin_decay_demo_ratio) == (False, None)
    with pytest.raises(ValueError, match="margin_decay_demo_ratio"):
        DQfDConfig(margin_decay_demo_ratio=0.0)
    agent = one_demo_agent(1, q_filter=True, margin_decay_demo_ratio=2.0)
    agent.observe([1.0], 2, 0.0, [1.0], True)
    restored = DQfDAgent.load(_round_trip(agent))
    assert (restored.config.q_filter, restored.config.margin_decay_demo_ratio) == (True, 2.0)
    assert restored.n_observed == 1


def _round_trip(agent: DQfDAgent):
    import io

    buffer = io.BytesIO()
    agent.save(buffer)
    buffer.seek(0)
    return buffer
