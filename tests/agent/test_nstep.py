"""Forward-view n-step windows over the slot layout, with hand-computed returns (γ = 0.99)."""

import numpy as np
import pytest

from agent.nstep import NStepWindows, join_reads, nstep_windows, read_windows, targets_from_reads

GAMMA = 0.99


def storage(rewards, dones, is_transition):
    return (
        np.asarray(rewards, dtype=np.float32),
        np.asarray(dones, dtype=bool),
        np.asarray(is_transition, dtype=bool),
    )


def test_terminal_after_three_steps_with_n_10_has_no_bootstrap():
    rewards, dones, trans = storage([1, 1, 1], [False, False, True], [True, True, True])
    w = nstep_windows(np.array([0]), rewards, dones, trans, 10, GAMMA, ring=False)
    assert w.returns[0] == pytest.approx(2.9701, abs=1e-5)
    assert w.discounts[0] == 0.0
    assert w.steps[0] == 3


def test_three_step_return_with_bootstrap_value_ten():
    rewards, dones, trans = storage([1, 1, 1, 1, 1], [False] * 5, [True] * 5)
    w = nstep_windows(np.array([0]), rewards, dones, trans, 3, GAMMA, ring=False)
    target = w.returns[0] + w.discounts[0] * 10.0
    assert target == pytest.approx(12.67309, abs=1e-4)
    assert w.bootstrap_slots[0] == 3


def test_terminal_after_four_steps():
    rewards, dones, trans = storage([1, 1, 1, 1], [False, False, False, True], [True] * 4)
    w = nstep_windows(np.array([0]), rewards, dones, trans, 10, GAMMA, ring=False)
    assert w.returns[0] == pytest.approx(3.940399, abs=1e-5)
    assert w.discounts[0] == 0.0


def test_fewer_than_n_steps_left_without_terminal_bootstraps_with_gamma_to_the_k():
    # three transitions, then the episode's last observation (a state-only slot): cut short, k = 3
    rewards, dones, trans = storage([1, 1, 1, 0], [False] * 4, [True, True, True, False])
    w = nstep_windows(np.array([0, 1]), rewards, dones, trans, 10, GAMMA, ring=False)
    assert w.steps.tolist() == [3, 2]
    assert w.discounts[0] == pytest.approx(GAMMA**3)
    assert w.discounts[1] == pytest.approx(GAMMA**2)
    assert w.bootstrap_slots.tolist() == [3, 3]
    assert w.returns[1] == pytest.approx(1.99, abs=1e-6)


@pytest.mark.parametrize("first_episode_terminates", [True, False])
def test_a_window_never_includes_the_next_episode(first_episode_terminates):
    if first_episode_terminates:
        first = ([1, 1], [False, True], [True, True])
    else:
        first = ([1, 1, 0], [False, False, False], [True, True, False])
    second = ([100, 100, 100], [False, False, True], [True, True, True])
    rewards, dones, trans = storage(*(a + b for a, b in zip(first, second, strict=True)))
    w = nstep_windows(np.array([0]), rewards, dones, trans, 10, GAMMA, ring=False)
    assert w.returns[0] == pytest.approx(1.99, abs=1e-6)
    assert w.steps[0] == 2


def test_ring_windows_wrap_around_the_end_of_the_buffer():
    # capacity 4: the episode occupies slots 2, 3, 0 (terminal) after wrapping
    rewards, dones, trans = storage([1, 9, 1, 1], [True, False, False, False], [True, False, True, True])
    w = nstep_windows(np.array([2]), rewards, dones, trans, 10, GAMMA, ring=True)
    assert w.returns[0] == pytest.approx(2.9701, abs=1e-5)
    assert w.discounts[0] == 0.0


def test_the_one_step_target_of_long_reads_matches_the_n_equal_one_window():
    rewards, dones, trans = storage([1, 2, 3, 0], [False, False, True, False], [True, True, True, False])
    starts = np.array([0, 1, 2])
    a = targets_from_reads(read_windows(starts, rewards, dones, trans, 10, ring=False), GAMMA)[0]
    b = nstep_windows(starts, rewards, dones, trans, 1, GAMMA, ring=False)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y)


def test_reward_transform_is_sign_log1p_abs():
    rewards, dones, trans = storage([-3.0, 10.0], [False, True], [True, True])
    w = nstep_windows(np.array([0]), rewards, dones, trans, 2, GAMMA, ring=False, transform_rewards=True)
    assert w.returns[0] == pytest.approx(-np.log(4.0) + GAMMA * np.log(11.0), abs=1e-5)


def test_targets_from_joined_reads_equal_each_storage_on_its_own():
    # A ring with an episode wrapping around its end, and a flat storage with a cut-short episode.
    rng = np.random.default_rng(3)
    ring_rewards = rng.normal(size=12).astype(np.float32)
    ring_dones = np.zeros(12, dtype=bool)
    ring_dones[[2, 8]] = True
    ring_trans = np.ones(12, dtype=bool)
    flat_rewards = rng.normal(size=9).astype(np.float32)
    flat_dones = np.zeros(9, dtype=bool)
    flat_dones[3] = True
    flat_trans = np.ones(9, dtype=bool)
    flat_trans[8] = False  # state-only slot: the second episode was cut short
    ring_starts, flat_starts = np.array([9, 11, 0, 5]), np.array([0, 2, 4, 7])
    joined = join_reads(
        read_windows(ring_starts, ring_rewards, ring_dones, ring_trans, 4, ring=True),
        read_windows(flat_starts, flat_rewards, flat_dones, flat_trans, 4, ring=False),
    )
    one, many = targets_from_reads(joined, GAMMA)
    for part, (starts, rewards, dones, trans, ring) in enumerate(
        [
            (ring_starts, ring_rewards, ring_dones, ring_trans, True),
            (flat_starts, flat_rewards, flat_dones, flat_trans, False),
        ]
    ):
        rows = slice(4 * part, 4 * part + 4)
        alone = nstep_windows(starts, rewards, dones, trans, 4, GAMMA, ring=ring)
        single = nstep_windows(starts, rewards, dones, trans, 1, GAMMA, ring=ring)
        for mine, reference in ((many, alone), (one, single)):
            for field in NStepWindows._fields:
                np.testing.assert_array_equal(getattr(mine, field)[rows], getattr(reference, field))
    # Hand-checked: ring start 11 runs 11 → 0 → 1 → 2 (terminal) = 4 steps with no bootstrap.
    assert many.steps[1] == 4 and many.discounts[1] == 0.0
    # Flat start 7 reaches the state-only slot 8 after one step: bootstrap from it with γ.
    assert many.steps[7] == 1 and many.bootstrap_slots[7] == 8
    assert many.discounts[7] == pytest.approx(GAMMA)
