"""Issue 10: a learner that cannot be poisoned by one finite but absurd state or reward.

The reported attack: a state of 17 × 3e38 (finite, so it passed validation), or a reward of 1e308, made
the loss NaN, the weights NaN, the sum tree NaN, and sampling then looped forever. Each guard is tested
where it lives: validation on the way in, the skipped update, the quarantine in the replay, the sum tree.
"""

import io
import logging

import numpy as np
import pytest
import torch

import agent as agent_package
from agent import DQfDAgent, DQfDConfig, validate_transitions
from agent.replay import DEMO_INDEX_LIMIT, MAX_PRIORITY
from agent.sum_tree import SumTree

D = 17
"""The state width of the report."""
ATTACK = np.full(D, 3e38)
"""Finite as a float32, and enough to overflow the first layer of a 2×256 network to ±∞ (then NaN)."""


def agent_with_demos(seed: int = 0, **overrides) -> DQfDAgent:
    """A 17-feature agent with the paper's 2×256 network and 60 demonstration rows (6 episodes)."""
    config = DQfDConfig(**{"batch_size": 16, **overrides})
    agent = DQfDAgent(state_dim=D, n_actions=4, config=config, seed=seed)
    rng = np.random.default_rng(seed)
    dones = np.arange(60) % 10 == 9
    agent.add_demonstrations(rng.normal(size=(60, D)), rng.integers(0, 4, 60), rng.normal(size=60), dones)
    return agent


def weights(agent: DQfDAgent) -> torch.Tensor:
    return agent._flat.detach().clone()


def fixed_demo_batch(agent: DQfDAgent, size: int = 16):
    cfg = agent.config
    return agent.replay.gather(
        np.arange(size), np.ones(size), cfg.n_step, cfg.gamma, cfg.reward_transform, agent.device
    )


# ---------------------------------------------------------------------------------- validation on the way in
def test_observe_rejects_the_attack_state_naming_the_field_when_a_bound_is_set():
    agent = agent_with_demos(max_abs_state=1e6)
    normal = np.zeros(D)
    with pytest.raises(ValueError, match=r"^state: feature 0 is 3e\+38, beyond max_abs_state = 1e\+06$"):
        agent.observe(ATTACK, 1, 0.0, normal, False)
    with pytest.raises(ValueError, match=r"^next_state: feature 0 is 3e\+38, beyond max_abs_state"):
        agent.observe(normal, 1, 0.0, ATTACK, False)
    agent.observe(np.full(D, 1e6), 1, 0.0, normal, False)  # the bound itself is allowed
    assert agent.n_observed == 1 and agent.n_agent_transitions == 1


def test_a_reward_of_1e308_is_rejected_even_without_a_bound():
    # 1e308 is a finite Python float but +inf once stored as float32.
    agent = agent_with_demos()
    with pytest.raises(ValueError, match=r"^reward: 1e\+308 is not finite as float32"):
        agent.observe(np.zeros(D), 1, 1e308, np.zeros(D), False)
    with pytest.raises(ValueError, match=r"^state: feature 3 is inf as float32"):
        agent.observe(np.array([0.0] * 3 + [1e39] + [0.0] * 13), 1, 0.0, np.zeros(D), False)
    bounded = agent_with_demos(max_abs_reward=100.0)
    with pytest.raises(ValueError, match=r"^reward: -1000 is beyond max_abs_reward = 100$"):
        bounded.observe(np.zeros(D), 1, -1000.0, np.zeros(D), False)
    assert agent.n_agent_transitions == 0 and bounded.n_agent_transitions == 0


def test_validate_transitions_marks_each_kind_of_bad_row():
    states = np.zeros((6, 2))
    states[1, 0] = np.nan
    states[2, 1] = 3e38  # finite, beyond the bound
    states[3, 0] = 1e39  # inf as float32
    rewards = np.array([0.0, 0.0, 0.0, 0.0, 1e308, 5.0])
    next_states = np.zeros((6, 2))
    next_states[5, 1] = -np.inf
    mask = validate_transitions(states, rewards, next_states, max_abs_state=1e6, max_abs_reward=10.0)
    assert mask.tolist() == [True, False, False, False, False, False]
    # Without bounds 3e38 is acceptable (it is finite as a float32); the rest still is not.
    assert validate_transitions(states, rewards).tolist() == [True, False, True, False, False, True]
    agent = DQfDAgent(2, 3, DQfDConfig(hidden_sizes=(8,), max_abs_state=1e6, max_abs_reward=10.0))
    assert agent.validate_transitions(states, rewards, next_states).tolist() == mask.tolist()
    assert agent_package.validate_transitions is validate_transitions


# ---------------------------------------------------------------------------------- demonstrations
def demo_rows():
    """One terminated episode of five rows, rewards 1..5; row 2 will be made invalid."""
    states = np.arange(10, dtype=np.float64).reshape(5, 2)
    return states, np.zeros(5, dtype=int), np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.eye(5, dtype=bool)[4]


def nstep_target(agent: DQfDAgent, slot: int) -> tuple[float, float, list[float]]:
    batch = agent.replay.gather(np.array([slot]), np.ones(1), 3, 0.5, False, agent.device)
    return float(batch.nstep_returns[0]), float(batch.nstep_discounts[0]), batch.nstep_states[0].tolist()


def test_an_invalid_demonstration_row_raises_and_adds_nothing_without_skip_invalid():
    agent = DQfDAgent(2, 3, DQfDConfig(hidden_sizes=(8,), max_abs_state=100.0))
    states, actions, rewards, dones = demo_rows()
    states[2, 1] = 3e38
    with pytest.raises(ValueError, match=r"^demonstration row 2: state: feature 1 is 3e\+38, beyond"):
        agent.add_demonstrations(states, actions, rewards, dones)
    assert agent.n_demonstrations == 0 and agent.n_rejected_rows == 0


def test_a_skipped_state_cuts_the_n_step_window_before_it():
    # γ = 0.5, n = 3. Row 2's state is poisoned: it is dropped, and row 1, whose next state it was,
    # becomes the final state-only slot of the piece [0, 1]; rows 3, 4 form a piece of their own.
    agent = DQfDAgent(2, 3, DQfDConfig(hidden_sizes=(8,), max_abs_state=100.0, n_step=3, gamma=0.5))
    states, actions, rewards, dones = demo_rows()
    states[2, 1] = 3e38
    assert agent.validate_transitions(states, rewards).tolist() == [True, True, False, True, True]
    assert agent.add_demonstrations(states, actions, rewards, dones, skip_invalid=True) == 3
    assert agent.n_rejected_rows == 1
    assert agent.replay.demo.is_transition[:4].tolist() == [True, False, True, True]
    # Row 0: one reward, then bootstrap from s_1 = (2, 3) with γ^1. Joined across the gap it would have
    # been 1 + 0.5·2 + 0.25·4 = 3 with the bootstrap state s_4.
    assert nstep_target(agent, 0) == (1.0, 0.5, [2.0, 3.0])
    # Row 3 (slot 2): 4 + 0.5·5 = 6.5, terminal.
    assert nstep_target(agent, 2) == (6.5, 0.0, [8.0, 9.0])


def test_a_skipped_reward_keeps_its_state_as_the_bootstrap_state():
    # Row 2's reward is poisoned (1e308: infinite as float32) but its state is fine: row 2 becomes the
    # final state-only slot of the piece [0, 1, 2], rows 3, 4 a new piece.
    agent = DQfDAgent(2, 3, DQfDConfig(hidden_sizes=(8,), n_step=3, gamma=0.5))
    states, actions, rewards, dones = demo_rows()
    rewards[2] = 1e308
    assert agent.add_demonstrations(states, actions, rewards, dones, skip_invalid=True) == 4
    assert agent.n_rejected_rows == 1
    assert agent.replay.demo.is_transition[:5].tolist() == [True, True, False, True, True]
    assert np.isfinite(agent.replay.demo.rewards[:5]).all()
    # Row 0: 1 + 0.5·2 = 2, bootstrap from s_2 = (4, 5) with γ^2 (not 1 + 0.5·2 + 0.25·r_2).
    assert nstep_target(agent, 0) == (2.0, 0.25, [4.0, 5.0])
    assert nstep_target(agent, 1) == (2.0, 0.5, [4.0, 5.0])
    assert nstep_target(agent, 3) == (6.5, 0.0, [8.0, 9.0])


def test_a_skipped_terminal_row_truncates_its_episode():
    agent = DQfDAgent(2, 3, DQfDConfig(hidden_sizes=(8,), max_abs_reward=10.0, n_step=3, gamma=0.5))
    states, actions, rewards, dones = demo_rows()
    rewards[4] = 50.0  # the terminal row's reward is beyond the bound
    assert agent.add_demonstrations(states, actions, rewards, dones, skip_invalid=True) == 4
    # Row 2: 3 + 0.5·4 = 5, bootstrapped from s_4 with γ^2 (it no longer terminates).
    assert nstep_target(agent, 2) == (5.0, 0.25, [8.0, 9.0])


# ---------------------------------------------------------------------------------- the sum tree
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1.0])
def test_the_sum_tree_rejects_non_finite_and_negative_values_where_they_arise(bad):
    tree = SumTree(8)
    tree.set(np.arange(4), np.ones(4))
    with pytest.raises(ValueError, match="finite and >= 0"):
        tree.set(np.array([1, 2]), np.array([1.0, bad]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        tree.set_all(np.array([1.0, bad]))
    assert tree.total == 4.0 and tree.get(np.arange(4)).tolist() == [1.0] * 4


@pytest.mark.timeout(10)
def test_the_sum_tree_refuses_to_search_without_a_positive_finite_total():
    tree = SumTree(8)
    with pytest.raises(RuntimeError, match=r"total is 0\.0"):
        tree.find(np.array([0.0]))
    tree.set(np.array([3]), np.array([2.0]))
    with pytest.raises(ValueError, match="prefix sums must be finite"):
        tree.find(np.array([np.nan]))
    tree.tree[1] = np.nan  # only possible by writing the array directly
    with pytest.raises(RuntimeError, match="total is nan"):
        tree.find(np.array([0.5]))


@pytest.mark.timeout(10)
def test_sampling_never_hangs_on_drifted_sums_or_a_broken_total():
    agent = DQfDAgent(2, 3, DQfDConfig(hidden_sizes=(8,), replay_capacity=100), seed=0)
    agent.add_demonstrations(np.zeros((4, 2)), [0, 1, 2, 0], [0.0] * 4, [False, False, False, True])
    tree = agent.replay.tree
    rebuilds = []
    tree.rebuild = lambda original=tree.rebuild: rebuilds.append(1) or original()
    # Phantom mass in the internal nodes above the empty leaves 4..7 (drift after huge priorities were
    # set back): most prefix sums descend into zero leaves. Sampling rebuilds the sums and succeeds.
    node = 4 + tree.size
    while node > 1:
        node >>= 1
        tree.tree[node] += 100.0
    indices, weights = agent.replay.sample_indices(32, beta=0.6)
    assert set(indices.tolist()) <= {0, 1, 2, 3} and np.isfinite(weights).all()
    assert rebuilds == [1]
    tree.tree[1] = np.nan
    with pytest.raises(RuntimeError, match="priority total is nan"):
        agent.replay.sample_indices(32, beta=0.6)


def test_non_finite_td_errors_quarantine_their_transitions_and_priorities_stay_finite():
    agent = DQfDAgent(2, 3, DQfDConfig(hidden_sizes=(8,), priority_alpha=5.0), seed=0)
    agent.add_demonstrations(np.zeros((4, 2)), [0, 1, 2, 0], [0.0] * 4, [False, False, False, True])
    agent.observe([1.0, 1.0], 0, 0.0, [0.0, 0.0], done=True)
    replay = agent.replay
    indices = np.array([0, 1, 2, DEMO_INDEX_LIMIT, 1])  # index 1 twice: its 0 must win
    assert replay.update_priority(indices, np.array([np.nan, np.inf, 1e30, 0.0, 2.0])) == 2
    assert agent.n_quarantined == 2
    assert replay.priorities(np.array([0, 1])).tolist() == [0.0, 0.0]
    assert replay.tree.get(np.array([2]))[0] == MAX_PRIORITY  # (1e30 + 1)^5 capped, not inf
    assert replay.max_abs_td == 1e30 and np.isfinite(replay.tree.total)
    # A new transition enters at the (capped) maximal priority, never inf.
    agent.observe([2.0, 2.0], 0, 0.0, [0.0, 0.0], done=True)
    assert replay.tree.get(np.array([replay.demo.capacity + 1]))[0] == MAX_PRIORITY
    for _ in range(200):
        drawn, _ = replay.sample_indices(8, beta=0.6)
        assert not np.isin(drawn, [0, 1]).any()
    replay.update_priority(np.array([2, 3, DEMO_INDEX_LIMIT, DEMO_INDEX_LIMIT + 1]), np.full(4, np.nan))
    with pytest.raises(RuntimeError, match=r"no transitions to sample \(6 quarantined\)"):
        replay.sample_indices(8, beta=0.6)


# ---------------------------------------------------------------------------------- the update
@pytest.mark.timeout(10)
def test_the_exact_attack_without_bounds_is_skipped_counted_and_the_agent_keeps_learning():
    agent = agent_with_demos()
    agent.pretrain(5)
    agent.observe(ATTACK, 1, 0.0, np.zeros(D), False)  # no bound: it enters the replay
    with torch.no_grad():  # what made the reported loss NaN: the network overflows on it
        assert torch.isnan(agent.online(torch.as_tensor(ATTACK, dtype=torch.float32)[None])).all()
    skipped_at = []
    for step in range(40):
        before, updates = weights(agent), agent.n_updates
        info = agent.train_step()
        assert all(np.isfinite(v) for v in info.values())
        if info["skipped"]:
            skipped_at.append(step)
            assert torch.equal(weights(agent), before) and agent.n_updates == updates
        else:
            assert agent.n_updates == updates + 1
        assert torch.isfinite(agent._flat).all()
    # The attack row is drawn in the second batch, skipped once, and quarantined: never drawn again.
    assert skipped_at == [1]
    assert agent.n_skipped_updates == 1 and agent.n_quarantined == 1 and agent.n_updates == 5 + 39
    assert agent.replay.priorities(np.array([DEMO_INDEX_LIMIT]))[0] == 0.0
    assert not agent.diverged
    # It still learns from normal data: repeated updates on one fixed batch lower its loss.
    batch = fixed_demo_batch(agent)
    first, _ = agent.learn(batch)
    before = weights(agent)
    for _ in range(30):
        last, _ = agent.learn(batch)
    assert first.skipped == 0.0 and last.skipped == 0.0
    assert not torch.equal(weights(agent), before)
    assert np.isfinite(last.loss) and last.loss < first.loss


@pytest.mark.timeout(10)
def test_a_reward_of_3e38_the_largest_finite_float32_skips_one_update():
    # Accepted without a bound (finite as float32); its TD loss overflows, so the update is skipped.
    agent = agent_with_demos()
    agent.observe(np.zeros(D), 1, 3e38, np.zeros(D), True)
    infos = [agent.train_step() for _ in range(20)]
    assert [i["skipped"] for i in infos].count(1.0) == 1
    assert agent.n_quarantined == 1 and torch.isfinite(agent._flat).all()


@pytest.mark.timeout(10)
def test_a_finite_gradient_overflow_is_skipped_and_blames_the_row_that_caused_it():
    # 1e20 per feature keeps Q finite but the squared gradient entries overflow: no per-row value is
    # non-finite, so the row with the largest bound on its gradient contribution is quarantined.
    agent = agent_with_demos()
    agent.observe(np.full(D, 1e20), 2, 0.0, np.zeros(D), True)
    batch = agent.replay.gather(
        np.array([0, 1, DEMO_INDEX_LIMIT, 3]), np.ones(4), 10, 0.99, False, agent.device
    )
    before = weights(agent)
    info, abs_td = agent.learn(batch)
    assert info.skipped == 1.0 and np.isfinite(info.loss)
    assert torch.equal(weights(agent), before)
    order = batch.indices.tolist()  # demonstrations first in the gathered batch
    assert np.isnan(abs_td).tolist() == [i == DEMO_INDEX_LIMIT for i in order]


@pytest.mark.timeout(20)
def test_pretraining_on_a_poisoned_demonstration_neither_hangs_nor_miscounts():
    # The restart case: the bad row is in the stored log and is loaded again (no bound set).
    agent = DQfDAgent(D, 4, DQfDConfig(batch_size=16), seed=1)
    rng = np.random.default_rng(1)
    states = rng.normal(size=(30, D))
    states[7] = ATTACK
    agent.add_demonstrations(states, rng.integers(0, 4, 30), rng.normal(size=30), np.arange(30) % 10 == 9)
    summary = agent.pretrain(30)
    # Row 7 (its own Q is NaN) and row 6 (it bootstraps from row 7) are quarantined.
    assert agent.n_quarantined == 2 and agent.n_skipped_updates >= 1
    assert agent.n_pretrain_updates == agent.n_updates == 30 - agent.n_skipped_updates
    assert agent.replay.priorities(np.array([6, 7])).tolist() == [0.0, 0.0]
    assert all(np.isfinite(v) for entry in summary["history"] for v in entry.values())
    assert torch.isfinite(agent._flat).all() and not agent.diverged


def test_diverged_after_consecutive_skips_or_with_non_finite_weights(caplog):
    agent = agent_with_demos(diverged_after_skipped_updates=3)
    agent.observe(ATTACK, 1, 0.0, np.zeros(D), True)
    poisoned = agent.replay.gather(np.array([DEMO_INDEX_LIMIT]), np.ones(1), 10, 0.99, False, agent.device)
    with caplog.at_level(logging.WARNING, logger="agent.dqfd"):
        for expected in (False, False, True):
            agent.learn(poisoned)  # learn alone does not quarantine: the same row again
            assert agent.diverged is expected
    assert agent.consecutive_skipped_updates == 3 and agent.n_skipped_updates == 3
    # Rate-limited: one warning for three skips in a row.
    assert len([r for r in caplog.records if "update skipped" in r.getMessage()]) == 1
    agent.learn(fixed_demo_batch(agent))
    assert agent.consecutive_skipped_updates == 0 and not agent.diverged
    with torch.no_grad():
        agent.target.head.bias[0] = np.nan  # e.g. a checkpoint written before this guard existed
    assert agent.diverged


def test_checkpoints_keep_the_skip_count_and_older_ones_load_with_zero():
    agent = agent_with_demos(max_abs_state=1e6, max_abs_reward=10.0)
    agent.observe(np.zeros(D), 1, 0.0, np.zeros(D), True)
    agent.learn(agent.replay.gather(np.array([DEMO_INDEX_LIMIT]), np.ones(1), 10, 0.99, False, agent.device))
    agent.replay.demo.states[0] = ATTACK  # past validation: only to force one skip
    agent.learn(fixed_demo_batch(agent))
    assert agent.n_skipped_updates == 1
    buffer = io.BytesIO()
    agent.save(buffer)
    restored = DQfDAgent.load(io.BytesIO(buffer.getvalue()))
    assert restored.n_skipped_updates == 1 and restored.config.max_abs_state == 1e6
    # A checkpoint written before issue 10: no skip counter, no new config fields.
    checkpoint = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    del checkpoint["counters"]["n_skipped_updates"]
    for key in ("max_abs_state", "max_abs_reward", "diverged_after_skipped_updates"):
        del checkpoint["config"][key]
    old = io.BytesIO()
    torch.save(checkpoint, old)
    old.seek(0)
    legacy = DQfDAgent.load(old)
    assert legacy.n_skipped_updates == 0 and legacy.config.max_abs_state is None
    assert legacy.n_updates == agent.n_updates == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_abs_state", 0.0),
        ("max_abs_reward", -1.0),
        ("max_abs_state", np.nan),
        ("diverged_after_skipped_updates", 0),
    ],
)
def test_bad_bounds_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        DQfDConfig(**{field: value})
