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


class WindowReads(NamedTuple):
    """What the windows of a batch read from storage; windows from several storages can be joined
    (:func:`join_reads`) and turned into targets with one set of array operations."""

    slots: np.ndarray
    """Slot ``start + k`` for k = 0..n, wrapped (ring) or clipped to the storage, int64 (B, n + 1)."""
    rewards: np.ndarray
    """Rewards of slots k = 0..n−1 (transformed when asked), float64 (B, n)."""
    dones: np.ndarray
    """Terminal flags of slots k = 0..n−1, bool (B, n)."""
    is_transition: np.ndarray
    """Whether slots k = 0..n−1 hold transitions, bool (B, n)."""


def read_windows(
    starts: np.ndarray,
    rewards: np.ndarray,
    dones: np.ndarray,
    is_transition: np.ndarray,
    n: int,
    ring: bool,
    transform_rewards: bool = False,
) -> WindowReads:
    """Read the n slots after each start slot from one storage.

    Args:
        starts: slots of the sampled transitions (each must be a transition), int (B,).
        rewards, dones, is_transition: the storage's per-slot arrays, length = capacity.
        n: window length.
        ring: slots wrap around modulo the capacity (the FIFO agent part); otherwise slots past the
            end are clipped, which is safe because every episode ends inside the storage.
        transform_rewards: apply sign(r)·log(1+|r|) to each reward ([DQfD] Sec. 4, Atari setup).
    """
    capacity = rewards.shape[0]
    slots = starts.astype(np.int64)[:, None] + np.arange(n + 1, dtype=np.int64)
    slots = slots % capacity if ring else np.minimum(slots, capacity - 1)
    inside = slots[:, :n]
    step_rewards = rewards[inside].astype(np.float64)
    if transform_rewards:
        step_rewards = np.sign(step_rewards) * np.log1p(np.abs(step_rewards))
    return WindowReads(slots, step_rewards, dones[inside], is_transition[inside])


def join_reads(first: WindowReads, second: WindowReads) -> WindowReads:
    """The reads of two batches, one after the other."""
    return WindowReads(*(np.concatenate(pair) for pair in zip(first, second, strict=True)))


def targets_from_reads(reads: WindowReads, gamma: float) -> tuple[NStepWindows, NStepWindows]:
    """The one-step and the n-step windows of every read window (n = the reads' width).

    Step j is in the n-step window when every earlier step continued the episode (a transition that
    did not terminate) and slot j itself holds a transition; the one-step window is step 0 alone.
    """
    n = reads.rewards.shape[1]
    rows = np.arange(reads.rewards.shape[0])
    transition, done = reads.is_transition, reads.dones
    continues = transition & ~done
    included = np.ones_like(transition)
    if n > 1:
        included[:, 1:] = np.logical_and.accumulate(continues[:, :-1], axis=1)
    included &= transition
    steps = included.sum(axis=1)
    powers = gamma ** np.arange(n, dtype=np.float64)
    returns = (reads.rewards * powers * included).sum(axis=1)
    terminal = done[rows, steps - 1]
    many = NStepWindows(
        returns=returns.astype(np.float32),
        bootstrap_slots=reads.slots[rows, steps],
        discounts=np.where(terminal, 0.0, gamma ** steps.astype(np.float64)).astype(np.float32),
        steps=steps,
    )
    one = NStepWindows(
        returns=reads.rewards[:, 0].astype(np.float32),
        bootstrap_slots=reads.slots[:, 1],
        discounts=np.where(done[:, 0], np.float32(0.0), np.float32(gamma)),
        steps=np.ones(rows.shape[0], dtype=np.int64),
    )
    return one, many


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
    """Compute forward-view n-step windows for every start slot at once (arguments as in
    :func:`read_windows`)."""
    reads = read_windows(starts, rewards, dones, is_transition, n, ring, transform_rewards)
    return targets_from_reads(reads, gamma)[1]
