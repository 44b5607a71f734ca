"""The agent's direct Adam step against torch.optim.Adam.step."""

import copy

import pytest
import torch

from agent.networks import DuelingQNetwork
from agent.optim import adam_step, make_adam


def _grads(net: DuelingQNetwork, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.grad = torch.randn(p.shape, generator=generator)


def test_direct_steps_equal_torch_optim_adam_and_keep_its_state():
    net = DuelingQNetwork(5, 3, (16, 16))
    twin = copy.deepcopy(net)
    mine = make_adam(list(net.parameters()), 1e-3, 1e-4)
    reference = make_adam(list(twin.parameters()), 1e-3, 1e-4)
    if not mine.param_groups[0].get("fused"):
        pytest.skip("this PyTorch build has no fused CPU Adam: adam_step is optimizer.step()")
    for step in range(5):
        _grads(net, step)
        _grads(twin, step)
        adam_step(mine)
        reference.step()
        for a, b in zip(net.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    ours, theirs = mine.state_dict(), reference.state_dict()
    for index, values in theirs["state"].items():
        assert float(ours["state"][index]["step"]) == float(values["step"]) == 5.0
        torch.testing.assert_close(ours["state"][index]["exp_avg_sq"], values["exp_avg_sq"], rtol=0, atol=0)


def test_a_loaded_state_continues_where_it_left_off():
    net = DuelingQNetwork(5, 3, (8,))
    optimizer = make_adam(list(net.parameters()), 1e-3, 1e-4)
    for step in range(3):
        _grads(net, step)
        adam_step(optimizer)
    saved_net, saved_state = copy.deepcopy(net.state_dict()), copy.deepcopy(optimizer.state_dict())
    _grads(net, 3)
    adam_step(optimizer)
    expected = [p.detach().clone() for p in net.parameters()]

    net.load_state_dict(saved_net)
    restored = make_adam(list(net.parameters()), 1e-3, 1e-4)
    restored.load_state_dict(saved_state)  # new state tensors: the step must use them, not stale ones
    _grads(net, 3)
    adam_step(restored)
    for a, b in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
