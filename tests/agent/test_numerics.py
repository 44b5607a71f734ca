"""Subnormal floats stay out of the update (issue 9), and the caller's flush-to-zero mode is kept."""

import threading

import numpy as np
import pytest
import torch

from agent import DQfDAgent, DQfDConfig
from agent.numerics import (
    TINY,
    count_subnormal,
    flush_denormal_enabled,
    flush_denormals,
    flush_subnormal_values,
)

CAN_FLUSH = torch.set_flush_denormal(False)  # True where this CPU can flush; leaves flushing off


@pytest.fixture(autouse=True)
def flushing_off_around_each_test():
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


def agent_with_dead_unit(flush: bool) -> DQfDAgent:
    """A small agent whose first hidden unit is dead on every state (bias −100), with tiny weights in and out.

    Such a unit gets no data gradient, only J_L2's 2·λ3·θ, and Adam shrinks those weights on and on (as it
    does for units that die while pretraining on a small log). Starting them at 1e-30 instead of ~0.1 gets
    the run to where the subnormal range begins within a few hundred updates instead of a few thousand.
    """
    agent = DQfDAgent(4, 3, DQfDConfig(hidden_sizes=(16, 16), batch_size=8), seed=0)
    rng = np.random.default_rng(0)
    states = rng.normal(size=(60, 4)).astype(np.float32)
    agent.add_demonstrations(states, rng.integers(0, 3, 60), rng.normal(size=60), np.arange(60) % 10 == 9)
    with torch.no_grad():
        agent.online.linear_layers[0].bias[0] = -100.0
        agent.online.linear_layers[0].weight[0] = 1e-30
        agent.online.linear_layers[1].weight[:, 0] = 1e-30
    agent.flush_denormals = flush
    return agent


def subnormals(agent: DQfDAgent) -> dict[str, int]:
    state = agent.optimizer.state[agent._flat]
    return {
        "weights": count_subnormal(agent._flat.data),
        "grad": count_subnormal(agent._flat.grad),
        "exp_avg": count_subnormal(state["exp_avg"]),
        "exp_avg_sq": count_subnormal(state["exp_avg_sq"]),
    }


@pytest.mark.skipif(not CAN_FLUSH, reason="this CPU cannot flush subnormals to zero")
def test_update_keeps_weights_and_adam_state_free_of_subnormals():
    fixed, unfixed = agent_with_dead_unit(flush=True), agent_with_dead_unit(flush=False)
    for _ in range(400):
        fixed.train_step()
        unfixed.train_step()
    # Without the fix the dead unit's gradient and Adam's first moment are subnormal (the control that
    # shows the run reaches the range); with it, nothing in the weights or the optimizer is.
    assert sum(subnormals(unfixed).values()) > 0, subnormals(unfixed)
    assert subnormals(fixed) == {"weights": 0, "grad": 0, "exp_avg": 0, "exp_avg_sq": 0}
    # Results unchanged beyond float noise: only values far below any that matter differ.
    for name, value in fixed.online.state_dict().items():
        torch.testing.assert_close(value, unfixed.online.state_dict()[name], rtol=0, atol=1e-28)
    states = torch.randn(16, 4)
    torch.testing.assert_close(fixed.online(states), unfixed.online(states), rtol=0, atol=1e-6)


@pytest.mark.skipif(not CAN_FLUSH, reason="this CPU cannot flush subnormals to zero")
@pytest.mark.parametrize("callers_mode", [False, True])
def test_update_flushes_inside_and_leaves_the_callers_mode_as_it_was(callers_mode):
    agent = agent_with_dead_unit(flush=True)
    seen = []
    inner = agent._learn

    def spy(batch, *rest):
        seen.append(flush_denormal_enabled())
        return inner(batch, *rest)

    agent._learn = spy
    torch.set_flush_denormal(callers_mode)
    agent.pretrain(3)
    assert seen == [True, True, True]
    assert flush_denormal_enabled() is callers_mode


@pytest.mark.skipif(not CAN_FLUSH, reason="this CPU cannot flush subnormals to zero")
def test_mode_restored_when_the_update_raises_and_switch_off_leaves_it_alone():
    agent = agent_with_dead_unit(flush=True)

    def broken(batch, *rest):
        assert flush_denormal_enabled()
        raise RuntimeError("boom")

    agent._learn = broken
    with pytest.raises(RuntimeError, match="boom"):
        agent.train_step()
    assert not flush_denormal_enabled()

    with flush_denormals(enabled=False):
        assert not flush_denormal_enabled()


@pytest.mark.skipif(not CAN_FLUSH, reason="this CPU cannot flush subnormals to zero")
def test_update_in_a_thread_leaves_other_threads_alone():
    # The service trains in a thread while others serve: the mode is per thread, and only the updating
    # thread has flushing on, and only during the update.
    agent = agent_with_dead_unit(flush=True)
    inside, outside = threading.Event(), threading.Event()
    seen = []
    inner = agent._learn

    def pausing(batch, *rest):
        inside.set()
        outside.wait(5)
        return inner(batch, *rest)

    agent._learn = pausing
    worker = threading.Thread(target=lambda: (agent.train_step(), seen.append(flush_denormal_enabled())))
    worker.start()
    assert inside.wait(5)
    main_thread_mode = flush_denormal_enabled()
    outside.set()
    worker.join(5)
    assert main_thread_mode is False
    assert seen == [False]


def test_count_subnormal_reads_bits_whatever_the_mode():
    values = torch.tensor([0.0, TINY, TINY / 2, -TINY / 4, 1.0, float("nan"), float("inf")])
    assert count_subnormal(values) == 2
    if CAN_FLUSH:
        torch.set_flush_denormal(True)  # denormals-are-zero would hide them from a comparison
        assert count_subnormal(values) == 2
    with pytest.raises(TypeError):
        count_subnormal(values.double())


@pytest.mark.skipif(not CAN_FLUSH, reason="this CPU cannot flush subnormals to zero")
def test_with_two_intra_op_threads_the_state_is_cleared_of_what_the_workers_leave():
    # Flushing is per thread and PyTorch's worker threads keep their own mode, so elementwise work on more
    # than 32,768 elements (Adam over a 2x256 network) is partly done where subnormals are not flushed.
    # Plant subnormal weights on dead units all over the flat tensor: the L2 gradient and Adam keep them
    # subnormal wherever nothing flushes; after one update with two threads, none may be left.
    agent = DQfDAgent(4, 3, DQfDConfig(hidden_sizes=(256, 256), batch_size=8), seed=0)
    rng = np.random.default_rng(0)
    agent.add_demonstrations(
        rng.normal(size=(60, 4)).astype(np.float32),
        rng.integers(0, 3, 60),
        rng.normal(size=60),
        np.arange(60) % 10 == 9,
    )
    assert agent._flat.numel() > 2 * 32_768
    agent.train_step()  # creates Adam's state
    with torch.no_grad():
        first, second = agent.online.linear_layers[0], agent.online.linear_layers[1]
        first.bias[::2] = -100.0  # every other unit of the first layer is dead ...
        first.weight[::2] = TINY / 8  # ... with subnormal weights in
        second.weight[:, ::2] = TINY / 8  # and out (spread over the whole second layer)
        planted = agent._flat.data == TINY / 8
        state = agent.optimizer.state[agent._flat]
        state["exp_avg"][planted] = TINY / 8  # as a unit that has been dead for long: Adam's m subnormal too
        state["exp_avg_sq"][planted] = 0.0
    assert count_subnormal(agent._flat.data) > 10_000
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        agent.train_step()
        # The worker thread, started by OpenMP at this process's first two-thread operation (in the
        # update, unless an earlier test ran one), must not have copied the update's flushing mode.
        halves = torch.full((4 * 32_768,), TINY) * 0.5
    finally:
        torch.set_num_threads(threads)
    assert subnormals(agent) == {"weights": 0, "grad": 0, "exp_avg": 0, "exp_avg_sq": 0}
    assert count_subnormal(halves) == halves.numel()


def test_flush_subnormal_values_keeps_every_other_value():
    values = torch.tensor([0.0, -0.0, TINY, TINY / 2, -TINY / 4, 1.5, -3e38, float("inf"), float("nan")])
    expected = values.clone()
    expected[3:5] = 0.0
    if not CAN_FLUSH:
        pytest.skip("this CPU cannot flush subnormals to zero")
    with flush_denormals():
        flush_subnormal_values([values])
    torch.testing.assert_close(values, expected, rtol=0, atol=0, equal_nan=True)
    assert count_subnormal(values) == 0
