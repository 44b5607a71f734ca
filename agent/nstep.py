"""Forward-view n-step returns over stored episodes ([DQfD] Sec. 3; Sutton & Barto 2018, Sec. 7.1).

Storage layout (shared by the demonstration and agent parts of the replay): slot ``i`` holds a state
``s_i``; when ``is_transition[i]`` it also holds the action taken there, the reward received and whether
the episode terminated after it. The state after a non-terminal transition is always in slot ``i + 1``
(taken modulo the capacity for the ring buffer): either the next transition of the same episode, or a
state-only slot (``is_transition`` false) holding the episode's last observation when it was cut short
(time limit, session still running). An episode therefore ends either with a terminal transition or with
a state-only slot, and a window that stops at either of them never reads the next episode.

For a window of n steps starting at a transition ``i`` the return is

    R = Σ_{j<k} γ^j r_{i+j},  then  + γ^k · max_a Q(s_{i+k}, a)   unless the episode terminated,

where ``k ≤ n`` is the number of steps available: k = n inside an episode, fewer at its end. At a terminal
transition there is no bootstrap; when the episode was cut short after k < n steps the bootstrap discount
is exactly γ^k.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class NStepWindows(NamedTuple):
    """Per-sample pieces of the n-step target for a batch of starting slots."""

    returns: np.ndarray
    """Σ_{j<k} γ^j r_{i+j}, float32 (B,)."""
    bootstrap_slots: np.ndarray
    """Slot of s_{i+k}, the state to bootstrap from, int64 (B,) (meaningless where the discount is 0)."""
    discounts: np.ndarray
    """γ^k, or 0 where the window ends at a terminal transition, float32 (B,)."""
    steps: np.ndarray
    """k, the number of rewards in each window, int64 (B,)."""


def one_step(
    starts: np.ndarray,
    rewards: np.ndarray,
    dones: np.ndarray,
    gamma: float,
    ring: bool,
    transform_rewards: bool = False,
) -> NStepWindows:
    """The n = 1 case of :func:`nstep_windows`, computed directly (every start slot is a transition)."""
    capacity = rewards.shape[0]
    step_rewards = rewards[starts]
    if transform_rewards:
        step_rewards = np.sign(step_rewards) * np.log1p(np.abs(step_rewards))
    following = starts + 1
    following = following % capacity if ring else np.minimum(following, capacity - 1)
    return NStepWindows(
        returns=step_rewards.astype(np.float32),
        bootstrap_slots=following,
        discounts=np.where(dones[starts], np.float32(0.0), np.float32(gamma)),
        steps=np.ones(starts.shape[0], dtype=np.int64),
    )


def nstep_windows(
    starts: np.ndarray,
    rewards: np.ndarray,
    dones: np.ndarray,
    is_transition: np.ndarray,
    n: int,
    gamma: float,
    ring: bool,
    transform_rewards: bool = False,
) -> NStepWindows:
    """Compute forward-view n-step windows for every start slot at once.

    Args:
        starts: slots of the sampled transitions (each must be a transition), int (B,).
        rewards, dones, is_transition: the storage's per-slot arrays, length = capacity.
        n: window length (n = 1 gives the one-step target).
        gamma: discount factor.
        ring: slots wrap around modulo the capacity (the FIFO agent part); otherwise slots past the
            end are clipped, which is safe because every episode ends inside the storage.
        transform_rewards: apply sign(r)·log(1+|r|) to each reward ([DQfD] Sec. 4, Atari setup).
    """
    capacity = rewards.shape[0]
    offsets = np.arange(n, dtype=np.int64)
    slots = starts.astype(np.int64)[:, None] + offsets
    slots = slots % capacity if ring else np.minimum(slots, capacity - 1)
    transition = is_transition[slots]
    done = dones[slots]
    # Step j is in the window when every earlier step continued the episode (a transition that did
    # not terminate) and slot j itself holds a transition.
    continues = transition & ~done
    included = np.ones_like(transition)
    if n > 1:
        included[:, 1:] = np.logical_and.accumulate(continues[:, :-1], axis=1)
    included &= transition
    steps = included.sum(axis=1)
    discount_powers = gamma ** offsets.astype(np.float64)
    step_rewards = rewards[slots].astype(np.float64)
    if transform_rewards:
        step_rewards = np.sign(step_rewards) * np.log1p(np.abs(step_rewards))
    returns = (step_rewards * discount_powers * included).sum(axis=1)
    last = slots[np.arange(slots.shape[0]), steps - 1]
    terminal = dones[last]
    bootstrap = starts.astype(np.int64) + steps
    bootstrap = bootstrap % capacity if ring else np.minimum(bootstrap, capacity - 1)
    discounts = np.where(terminal, 0.0, gamma ** steps.astype(np.float64))
    return NStepWindows(
        returns=returns.astype(np.float32),
        bootstrap_slots=bootstrap,
        discounts=discounts.astype(np.float32),
        steps=steps,
    )
