"""Flat per-slot arrays for one part of the replay (demonstrations, or the agent's own experience).

Each slot holds one state and, when it is a transition, the action taken there, the reward and the
terminal flag (layout in :mod:`agent.nstep`). Next states are not stored a second time: the state after
slot ``i`` is the state in slot ``i + 1``. Action masks are allocated only when the first mask arrives.
"""

from __future__ import annotations

import numpy as np


class EpisodeStorage:
    """Fixed-capacity arrays of states, actions, rewards, flags and optional action masks."""

    def __init__(self, capacity: int, state_dim: int, n_actions: int) -> None:
        self.capacity = int(capacity)
        self.state_dim = int(state_dim)
        self.n_actions = int(n_actions)
        self.states = np.zeros((self.capacity, self.state_dim), dtype=np.float32)
        self.actions = np.zeros(self.capacity, dtype=np.int64)
        self.rewards = np.zeros(self.capacity, dtype=np.float32)
        self.dones = np.zeros(self.capacity, dtype=bool)
        self.is_transition = np.zeros(self.capacity, dtype=bool)
        self.masks: np.ndarray | None = None

    def ensure_masks(self) -> np.ndarray:
        """The mask array, created on first use with every action allowed."""
        if self.masks is None:
            self.masks = np.ones((self.capacity, self.n_actions), dtype=bool)
        return self.masks

    def write(
        self,
        slot: int,
        state: np.ndarray,
        action: int | None,
        reward: float,
        done: bool,
        mask: np.ndarray | None,
    ) -> None:
        """Write one slot; ``action=None`` makes it a state-only slot (an episode's last observation)."""
        self.states[slot] = state
        self.is_transition[slot] = action is not None
        self.actions[slot] = 0 if action is None else action
        self.rewards[slot] = reward
        self.dones[slot] = done
        if mask is not None:
            self.ensure_masks()[slot] = mask
        elif self.masks is not None:
            self.masks[slot] = True

    def grow(self, extra: int) -> None:
        """Append ``extra`` empty slots (used by the append-only demonstration part)."""
        self.capacity += int(extra)
        self.states = np.concatenate([self.states, np.zeros((extra, self.state_dim), np.float32)])
        self.actions = np.concatenate([self.actions, np.zeros(extra, np.int64)])
        self.rewards = np.concatenate([self.rewards, np.zeros(extra, np.float32)])
        self.dones = np.concatenate([self.dones, np.zeros(extra, bool)])
        self.is_transition = np.concatenate([self.is_transition, np.zeros(extra, bool)])
        if self.masks is not None:
            self.masks = np.concatenate([self.masks, np.ones((extra, self.n_actions), bool)])

    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        arrays = [self.states, self.actions, self.rewards, self.dones, self.is_transition]
        if self.masks is not None:
            arrays.append(self.masks)
        return int(sum(a.nbytes for a in arrays))
