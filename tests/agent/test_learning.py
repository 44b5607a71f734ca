"""Learning on a chain MDP whose optimal Q-values are known in closed form.

States 0..4 on a line, one-hot features; action 1 moves right, action 0 moves left (state 0 stays).
Entering state 4 gives reward 1 and ends the episode; every other step gives 0. With γ = 0.9:
Q*(s, right) = γ^(3-s) and Q*(s, left) = γ · V*(max(s-1, 0)) = γ^(4-max(s-1, 0)).
"""

import numpy as np
import pytest

from agent import DQfDAgent, DQfDConfig

N_STATES = 5
GAMMA = 0.9
TOLERANCE = 0.05
Q_STAR = np.array([[GAMMA ** (4 - max(s - 1, 0)), GAMMA ** (3 - s)] for s in range(N_STATES - 1)])


def one_hot(s: int) -> np.ndarray:
    return np.eye(N_STATES, dtype=np.float32)[s]


def step(s: int, action: int) -> tuple[int, float, bool]:
    s2 = min(s + 1, N_STATES - 1) if action == 1 else max(s - 1, 0)
    return s2, float(s2 == N_STATES - 1), s2 == N_STATES - 1


def expert_demonstrations(episodes: int):
    states, actions, rewards, dones, ids = [], [], [], [], []
    for e in range(episodes):
        s, done = 0, False
        while not done:
            s2, r, done = step(s, 1)
            states.append(one_hot(s))
            actions.append(1)
            rewards.append(r)
            dones.append(done)
            ids.append(e)
            s = s2
    return np.array(states), np.array(actions), np.array(rewards), np.array(dones), np.array(ids)


def chain_agent(**overrides) -> DQfDAgent:
    config = DQfDConfig(
        gamma=GAMMA,
        n_step=3,
        hidden_sizes=(32, 32),
        learning_rate=1e-3,
        target_update_period=100,
        batch_size=32,
        priority_beta_anneal_updates=3000,
        **overrides,
    )
    return DQfDAgent(N_STATES, 2, config, seed=0)


def run_online(agent: DQfDAgent, steps: int, epsilon: float) -> None:
    s = 0
    for _ in range(steps):
        action = agent.act(one_hot(s), epsilon=epsilon)
        s2, r, done = step(s, action)
        agent.observe(one_hot(s), action, r, one_hot(s2), done)
        agent.train_step()
        s = 0 if done else s2


def q_table(agent: DQfDAgent) -> np.ndarray:
    return agent.q_values(np.eye(N_STATES, dtype=np.float32)[: N_STATES - 1])


@pytest.mark.slow
def test_greedy_policy_after_pretraining_takes_the_demonstrated_optimal_action():
    agent = chain_agent()
    agent.add_demonstrations(*expert_demonstrations(3))
    agent.pretrain(400)
    assert (q_table(agent).argmax(axis=1) == 1).all()


@pytest.mark.slow
def test_pretraining_then_online_learning_reaches_optimal_values_of_the_demonstrated_actions():
    agent = chain_agent()
    agent.add_demonstrations(*expert_demonstrations(3))
    agent.pretrain(500)
    run_online(agent, 1000, epsilon=0.1)
    q = q_table(agent)
    np.testing.assert_allclose(q[:, 1], Q_STAR[:, 1], atol=TOLERANCE)
    assert (q.argmax(axis=1) == 1).all()


@pytest.mark.slow
def test_one_step_td_core_reaches_q_star_for_every_action():
    # Without J_E and J_n (whose uncorrected n-step returns are biased towards the exploring policy,
    # docs/algorithm.md) the fixed point is exactly Q*, for the actions the demonstrator never took too.
    agent = chain_agent(lambda_margin=0.0, lambda_n=0.0)
    agent.add_demonstrations(*expert_demonstrations(3))
    agent.pretrain(500)
    run_online(agent, 1000, epsilon=0.5)
    np.testing.assert_allclose(q_table(agent), Q_STAR, atol=TOLERANCE)
