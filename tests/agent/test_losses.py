"""Hand-computed values of DQfD's loss terms (γ = 0.99, margin 0.8)."""

import pytest
import torch

from agent.losses import double_dqn_bootstrap, l2_loss, margin_loss, td_loss, td_targets
from agent.networks import DuelingQNetwork


def q_tensor(values: list[float]) -> torch.Tensor:
    return torch.tensor([values], requires_grad=True)


def test_margin_loss_is_zero_with_zero_gradient_when_expert_action_wins_by_the_margin():
    q = q_tensor([1.0, 2.0, 0.5])
    loss = margin_loss(q, torch.tensor([1]), margin=0.8)
    assert loss.item() == pytest.approx(0.0)
    loss.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))


def test_margin_loss_when_a_non_expert_action_is_within_the_margin():
    # max(1 + 0.8, 1.5 + 0, 0.5 + 0.8) - 1.5 = 0.3
    loss = margin_loss(q_tensor([1.0, 1.5, 0.5]), torch.tensor([1]), margin=0.8)
    assert loss.item() == pytest.approx(0.3, abs=1e-6)


def test_margin_loss_is_linear_with_unit_gradients():
    q = q_tensor([2.0, 1.0, 0.0])
    loss = margin_loss(q, torch.tensor([1]), margin=0.8)
    assert loss.item() == pytest.approx(1.8, abs=1e-6)  # 2 + 0.8 - 1, not squared
    loss.sum().backward()
    assert q.grad.tolist() == [[1.0, -1.0, 0.0]]


def test_margin_loss_ignores_masked_actions():
    q = q_tensor([2.0, 1.0, 0.0])
    mask = torch.tensor([[False, True, True]])
    loss = margin_loss(q, torch.tensor([1]), margin=0.8, mask=mask)
    # action 0 cannot set the max: max(1, 0 + 0.8) - 1 = 0
    assert loss.item() == pytest.approx(0.0)
    loss.sum().backward()
    assert q.grad[0, 0].item() == 0.0


def test_margin_loss_is_exactly_zero_with_zero_gradient_for_agent_samples():
    q = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]], requires_grad=True)
    loss = margin_loss(q, torch.tensor([1, 1]), margin=0.8, is_demo=torch.tensor([True, False]))
    assert loss.tolist() == pytest.approx([1.8, 0.0])
    loss.sum().backward()
    assert q.grad[1].tolist() == [0.0, 0.0, 0.0]
    assert q.grad[0].tolist() == [1.0, -1.0, 0.0]


def test_double_dqn_bootstrap_lets_the_online_net_choose_and_the_target_net_evaluate():
    value = double_dqn_bootstrap(torch.tensor([[1.0, 3.0]]), torch.tensor([[5.0, 2.0]]))
    assert value.item() == 2.0


def test_double_dqn_bootstrap_respects_the_next_state_mask():
    value = double_dqn_bootstrap(
        torch.tensor([[1.0, 3.0]]), torch.tensor([[5.0, 2.0]]), torch.tensor([[True, False]])
    )
    assert value.item() == 5.0


def test_td_targets_drop_the_bootstrap_after_a_terminal_even_if_it_is_not_finite():
    targets = td_targets(
        torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.99]), torch.tensor([float("nan"), 10.0])
    )
    assert targets.tolist() == pytest.approx([1.0, 1.0 + 0.99 * 10.0])


def test_td_loss_huber_and_squared():
    q = torch.tensor([0.0, 0.0])
    y = torch.tensor([0.5, 3.0])
    assert td_loss(q, y, "huber").tolist() == pytest.approx([0.125, 2.5])
    assert td_loss(q, y, "squared").tolist() == pytest.approx([0.125, 4.5])


def test_l2_term_is_lambda3_times_sum_of_squares_of_weights_and_biases():
    net = DuelingQNetwork(3, 2, (4,))
    by_hand = sum(float((tensor.double() ** 2).sum()) for tensor in net.state_dict().values())
    names = {name for name, _ in net.named_parameters()}
    assert {"trunk.0.bias", "head.bias"} <= names
    assert l2_loss(net.parameters(), 1e-5).item() == pytest.approx(1e-5 * by_hand, rel=1e-5)
