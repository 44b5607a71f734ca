"""Prioritized replay over permanent demonstrations and a FIFO agent part."""

import numpy as np
import pytest

from agent import DQfDAgent, DQfDConfig
from agent.replay import DEMO_INDEX_LIMIT


def small_agent(**overrides) -> DQfDAgent:
    config = DQfDConfig(hidden_sizes=(8,), **overrides)
    return DQfDAgent(state_dim=2, n_actions=3, config=config, seed=0)


def one_demo_one_agent() -> DQfDAgent:
    agent = small_agent()
    agent.add_demonstrations(np.array([[1.0, 0.0]]), [0], [1.0], [True])
    agent.observe([0.0, 1.0], 1, 0.0, [0.0, 0.0], done=True)
    return agent


def test_priorities_after_a_zero_td_error_are_the_bonuses():
    agent = one_demo_one_agent()
    indices = np.array([0, DEMO_INDEX_LIMIT])
    agent.replay.update_priority(indices, np.zeros(2))
    np.testing.assert_allclose(agent.replay.priorities(indices), [1.0, 0.001], rtol=1e-9)


def test_bonus_survives_repeated_updates():
    agent = one_demo_one_agent()
    indices = np.array([0, DEMO_INDEX_LIMIT])
    for errors in ([3.0, 2.0], [0.5, 0.25], [0.0, 0.0], [0.1, 0.2]):
        agent.replay.update_priority(indices, np.array(errors))
        np.testing.assert_allclose(
            agent.replay.priorities(indices), [errors[0] + 1.0, errors[1] + 0.001], rtol=1e-9
        )


def test_new_transitions_enter_with_the_maximum_priority_plus_their_bonus():
    agent = one_demo_one_agent()
    agent.replay.update_priority(np.array([0, DEMO_INDEX_LIMIT]), np.array([5.0, 0.0]))
    agent.observe([0.5, 0.5], 2, 0.0, [0.0, 0.0], done=True)
    assert agent.replay.priorities(np.array([DEMO_INDEX_LIMIT + 1]))[0] == pytest.approx(5.001)


def test_demonstration_is_drawn_with_probability_0_94065_and_weights_are_normalised():
    agent = one_demo_one_agent()
    agent.replay.update_priority(np.array([0, DEMO_INDEX_LIMIT]), np.zeros(2))
    expected = 1.0 / (1.0 + 0.001**0.4)
    assert expected == pytest.approx(0.94065, abs=1e-5)
    draws = demo_draws = 0
    for _ in range(2000):
        indices, weights = agent.replay.sample_indices(32, beta=0.6)
        demo = indices < DEMO_INDEX_LIMIT
        draws += indices.shape[0]
        demo_draws += int(demo.sum())
        if demo.any() and (~demo).any():
            assert weights[demo][0] == pytest.approx(0.1905, abs=1e-4)
            assert weights[~demo][0] == pytest.approx(1.0)
    # 64,000 draws: the standard error of the fraction is below 0.001
    assert demo_draws / draws == pytest.approx(expected, abs=0.004)


def test_demonstrations_are_never_evicted_and_the_oldest_agent_transition_is_replaced():
    agent = small_agent(replay_capacity=4)
    demo_states = np.array([[9.0, 9.0], [8.0, 8.0], [7.0, 7.0]], dtype=np.float32)
    agent.add_demonstrations(demo_states, [0, 1, 2], [1.0, 1.0, 1.0], [False, False, True])
    for t in range(5):
        agent.observe([float(t), 0.0], 0, float(t), [0.0, 0.0], done=True)
    np.testing.assert_array_equal(agent.replay.demo.states[:3], demo_states)
    assert agent.n_demonstrations == 3
    assert agent.n_agent_transitions == 4
    # slot 0 held transition 0, the oldest; transition 4 replaced it, transitions 1-3 are still there
    assert agent.replay.agent.states[:, 0].tolist() == [4.0, 1.0, 2.0, 3.0]
    assert agent.replay.agent.rewards.tolist() == [4.0, 1.0, 2.0, 3.0]


def test_a_continuing_episode_stores_each_state_once():
    agent = small_agent(replay_capacity=10)
    states = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    for t in range(3):
        agent.observe(states[t], 1, 1.0, states[t + 1], done=False)
    assert agent.replay.agent_head == 4  # three transitions and the last observation
    np.testing.assert_array_equal(agent.replay.agent.states[:4], states)
    assert agent.replay.agent.is_transition[:4].tolist() == [True, True, True, False]
    assert agent.n_agent_transitions == 3


def test_agent_n_step_window_of_a_running_episode_bootstraps_from_the_latest_state():
    agent = small_agent(replay_capacity=10, n_step=10, gamma=0.99)
    for t in range(3):
        agent.observe([float(t), 0.0], 1, 1.0, [float(t + 1), 0.0], done=False)
    indices = np.array([DEMO_INDEX_LIMIT + 0])
    batch = agent.replay.gather(indices, np.ones(1), 10, 0.99, False, agent.device)
    assert batch.nstep_returns.item() == pytest.approx(2.9701, abs=1e-5)
    assert batch.nstep_discounts.item() == pytest.approx(0.99**3)
    assert batch.nstep_states[0].tolist() == [3.0, 0.0]
    assert batch.next_states[0].tolist() == [1.0, 0.0]
    assert batch.discounts.item() == pytest.approx(0.99)


def test_truncated_episode_is_not_continued_by_an_equal_first_state():
    agent = small_agent(replay_capacity=10)
    agent.observe([0.0, 0.0], 1, 1.0, [1.0, 0.0], done=False, truncated=True)
    agent.observe([1.0, 0.0], 1, 5.0, [2.0, 0.0], done=True)
    batch = agent.replay.gather(np.array([DEMO_INDEX_LIMIT]), np.ones(1), 10, 0.99, False, agent.device)
    assert batch.nstep_returns.item() == pytest.approx(1.0)  # the 5.0 belongs to the next episode
    assert batch.nstep_discounts.item() == pytest.approx(0.99)


def test_pretraining_batches_hold_only_demonstrations_even_with_agent_data_present():
    agent = small_agent(replay_capacity=100, batch_size=16)
    agent.add_demonstrations(np.eye(2)[[0, 1, 0]], [0, 1, 2], [1.0, 0.0, 1.0], [False, False, True])
    for t in range(50):
        agent.observe([0.5, float(t)], 1, 0.0, [0.0, 0.0], done=True)
    seen = []
    original = agent.replay.gather

    def spy(indices, *args, **kwargs):
        seen.append(indices.copy())
        return original(indices, *args, **kwargs)

    agent.replay.gather = spy
    summary = agent.pretrain(20)
    assert len(seen) == 20
    assert all((indices < DEMO_INDEX_LIMIT).all() for indices in seen)
    assert all(entry["demo_fraction"] == 1.0 for entry in summary["history"])
    agent.train_step()
    assert (seen[-1] >= DEMO_INDEX_LIMIT).any()  # online updates draw both parts


def test_demonstrations_added_in_chunks_keep_agent_priorities_and_indices():
    agent = small_agent(replay_capacity=8)
    agent.observe([0.0, 1.0], 1, 0.0, [0.0, 0.0], done=True)
    agent.replay.update_priority(np.array([DEMO_INDEX_LIMIT]), np.array([2.0]))
    for chunk in range(3):
        agent.add_demonstrations(
            np.ones((4, 2)) * chunk, [0, 1, 2, 0], [1, 1, 1, 1], [False, False, False, True]
        )
    assert agent.n_demonstrations == 12
    assert agent.replay.priorities(np.array([DEMO_INDEX_LIMIT]))[0] == pytest.approx(2.001)
    # new demonstrations enter at max|δ| + ε_d = 2 + 1
    assert agent.replay.tree.total == pytest.approx(12 * 3.0**0.4 + 2.001**0.4)


def test_buffer_memory_is_close_to_the_raw_arrays():
    agent = DQfDAgent(64, 4, DQfDConfig(replay_capacity=100_000, hidden_sizes=(8,)))
    raw = 100_000 * (64 * 4 + 8 + 4 + 1)  # float32 states, int64 actions, float32 rewards, done flags
    assert agent.replay.nbytes() <= 1.5 * raw
