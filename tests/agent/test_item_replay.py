"""The item replay (agent/item_replay.py): compact allowed sets, n-step windows, demonstrations kept, FIFO,
priorities and quarantine, with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.item_replay import EMPTY, ItemDemonstrations, ItemReplay, allowed_from_mask, allowed_sets
from agent.replay import DEMO_INDEX_LIMIT, Demonstrations
from agent.set_losses import AllowedSet

CPU = torch.device("cpu")


def make_replay(capacity: int = 4, seed: int = 0) -> ItemReplay:
    return ItemReplay(
        2, capacity, alpha=1.0, demo_bonus=1.0, agent_bonus=0.001, rng=np.random.default_rng(seed)
    )


def four_step_episode() -> ItemDemonstrations:
    """One terminated episode of 4 steps (states [t, 0], items 3, 1, 4, 1, rewards 1..4), sets per step."""
    states = np.array([[t, 0.0] for t in range(4)], dtype=np.float32)
    demos = Demonstrations(
        states=states,
        actions=np.array([3, 1, 4, 1]),
        rewards=np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32),
        dones=np.array([False, False, False, True]),
        is_transition=np.ones(4, dtype=bool),
        masks=None,
    )
    sets = [
        AllowedSet(5),
        AllowedSet(5, candidates=(1, 2)),
        AllowedSet(5, exclusions=frozenset({0})),
        AllowedSet(3),
    ]
    return ItemDemonstrations(demos, sets)


def test_one_and_n_step_targets_and_the_allowed_sets_of_every_bootstrap_state():
    replay = make_replay()
    assert replay.add_item_demonstrations(four_step_episode()) == 4
    batch = replay.gather_items(
        np.arange(4), np.ones(4), n_step=2, gamma=0.5, transform_rewards=False, device=CPU
    )
    assert batch.actions.tolist() == [3, 1, 4, 1]
    assert batch.rewards.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert batch.discounts.tolist() == [0.5, 0.5, 0.5, 0.0]
    # R0 = 1 + 0.5·2, R1 = 2 + 0.5·3, R2 = 3 + 0.5·4 (terminal after step 3), R3 = 4 (terminal).
    assert batch.nstep_returns.tolist() == [2.0, 3.5, 5.0, 4.0]
    assert batch.nstep_discounts.tolist() == [0.25, 0.25, 0.0, 0.0]
    assert batch.next_states[:3, 0].tolist() == [1.0, 2.0, 3.0]
    assert batch.nstep_states[:2, 0].tolist() == [2.0, 3.0]
    sets = four_step_episode().allowed
    assert batch.allowed == sets
    assert batch.next_allowed[:3] == sets[1:]
    assert batch.nstep_allowed[:2] == sets[2:]
    assert batch.is_demo.all() and torch.equal(batch.stacked_states[4:8], batch.next_states)


def test_demonstrations_are_never_overwritten_and_the_agent_part_is_fifo_with_its_sets():
    replay = make_replay(capacity=4)
    replay.add_item_demonstrations(four_step_episode())
    for t in range(5):  # 5 terminal transitions through a 4-slot ring: the first is overwritten
        allowed = AllowedSet(6, candidates=(t, 5))
        replay.add_item_transition(np.array([10.0 + t, 0]), 5, float(t), np.zeros(2), True, allowed, EMPTY)
    assert replay.agent_count == 4 and replay.demo_count == 4
    indices = DEMO_INDEX_LIMIT + np.arange(4)
    assert replay.actions_at(indices).tolist() == [5, 5, 5, 5]
    # Slot 0 now holds the fifth transition; slots 1-3 the second to fourth.
    assert [s.candidates for s in replay.allowed_at(indices)] == [(4, 5), (1, 5), (2, 5), (3, 5)]
    assert replay.agent.states[:, 0].tolist() == [14.0, 11.0, 12.0, 13.0]
    assert replay.allowed_at(np.arange(4)) == four_step_episode().allowed
    assert replay.actions_at(np.arange(4)).tolist() == [3, 1, 4, 1]


def test_a_continued_episode_stores_each_state_once_with_the_latest_allowed_set():
    replay = make_replay(capacity=8)
    replay.add_item_transition(
        np.array([0.0, 0]), 1, 1.0, np.array([1.0, 0]), False, AllowedSet(3), AllowedSet(4)
    )
    # The next call continues from the pending state: its allowed set replaces the pending slot's.
    nxt = AllowedSet(4, exclusions=frozenset({2}))
    replay.add_item_transition(np.array([1.0, 0]), 3, 2.0, np.array([2.0, 0]), True, nxt, EMPTY)
    assert replay.agent_count == 2 and replay.agent_head == 2
    batch = replay.gather_items(
        DEMO_INDEX_LIMIT + np.array([0]), np.ones(1), n_step=3, gamma=0.5, transform_rewards=False, device=CPU
    )
    assert batch.nstep_returns.tolist() == [2.0] and batch.nstep_discounts.tolist() == [0.0]
    assert batch.next_allowed == [nxt] and not batch.is_demo[0]


def test_whole_catalogue_sets_are_interned_and_masks_become_the_smaller_encoding():
    replay = make_replay()
    a, b = replay.intern(AllowedSet(100)), replay.intern(AllowedSet(100))
    assert a is b
    mostly_allowed = np.ones(10, dtype=bool)
    mostly_allowed[[2, 7]] = False
    encoded = allowed_from_mask(mostly_allowed)
    assert encoded.candidates is None and encoded.exclusions == frozenset({2, 7})
    assert encoded.items().tolist() == np.flatnonzero(mostly_allowed).tolist()
    few = np.zeros(10, dtype=bool)
    few[[4, 9]] = True
    assert allowed_from_mask(few) == AllowedSet(10, candidates=(4, 9))
    nothing = allowed_from_mask(np.zeros(3, dtype=bool))
    assert nothing.items().tolist() == [] and 0 not in nothing
    rows = allowed_sets(2, 7, allowed=[None, AllowedSet(3)])
    assert rows == [AllowedSet(7), AllowedSet(3)]
    with pytest.raises(ValueError, match="the table has 7"):
        allowed_sets(1, 7, allowed=[AllowedSet(8)])


def test_priorities_use_each_parts_bonus_and_non_finite_errors_quarantine():
    replay = make_replay()
    replay.add_item_demonstrations(four_step_episode())
    replay.add_item_transition(np.array([9.0, 0]), 2, 0.0, np.zeros(2), True, AllowedSet(5), EMPTY)
    indices = np.array([0, 1, DEMO_INDEX_LIMIT])
    assert replay.update_priority(indices, np.array([0.5, np.nan, 2.0])) == 1
    # p = |δ| + ε (α = 1): ε_d = 1 for demonstrations, ε_a = 0.001 for agent data; NaN → 0, never drawn.
    np.testing.assert_allclose(replay.priorities(indices), [1.5, 0.0, 2.001])
    assert replay.n_quarantined == 1
    drawn, _ = replay.sample_indices(64, beta=0.6, demo_only=True)
    assert set(drawn.tolist()) <= {0, 2, 3}
