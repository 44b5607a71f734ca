"""DQfD's replay: one logical prioritized buffer over a permanent demonstration part and a FIFO agent part.

[DQfD] Sec. 3: demonstrations stay in the replay buffer forever; self-generated transitions fill the rest
and overwrite only the oldest self-generated transition. Both parts are sampled together with
proportional prioritization ([PER] Sec. 3.3): P(i) = p_i^α / Σ_k p_k^α, with p_i = |δ_i| + ε and a larger
ε (ε_d) for demonstrations, so that the ratio of demonstration to agent data is set by the priorities.

Each part is an :class:`~agent.storage.EpisodeStorage`; one :class:`~agent.sum_tree.SumTree` holds p^α of
both, the demonstration slots first (leaves ``[0, demo capacity)``) and the agent slots after them, so a
batch is one stratified descent of one tree; state-only slots have priority 0 and are never drawn.
Because demonstrations come first, prefix sums below the demonstrations' total draw demonstrations only,
which is how pretraining samples. Indices given out are ``slot`` for the demonstration part and
``DEMO_INDEX_LIMIT + slot`` for the agent part, so they stay valid when demonstrations are added.

The sampling seam is narrow, as in TorchRL: :meth:`sample_indices` gives indices and importance weights,
:meth:`update_priority` takes indices and TD errors, and :meth:`gather` builds the tensors of a batch.
Which δ sets the priority is not given by the paper; the agent uses the one-step TD error (as [PER]
does), see docs/algorithm.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from agent.nstep import NStepWindows, join_reads, read_windows, targets_from_reads
from agent.storage import EpisodeStorage
from agent.sum_tree import SumTree
from agent.types import Batch

DEMO_INDEX_LIMIT = 1 << 40
"""Agent-part indices are offset by this constant; demonstrations can never reach it."""

MAX_PRIORITY = 1e100
"""Cap on p^α: the sum of 2^41 such leaves is still a finite float64. Never reached with float32 TD
errors at α ≤ 2.5; with a larger α it keeps the tree finite."""

REDRAWS = 16
"""Redraws, a little further inside, of sampled prefixes that ended on a zero leaf, before the tree is
rebuilt exactly; one rounding step at a boundary needs one."""


class Demonstrations(NamedTuple):
    """Validated demonstration episodes laid out slot by slot (see :mod:`agent.nstep`)."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    is_transition: np.ndarray
    masks: np.ndarray | None


Part = tuple[EpisodeStorage, np.ndarray, bool]
"""The rows of a batch drawn from one storage: (storage, its slots, whether it is the agent's ring)."""


class PrioritizedReplay:
    """Prioritized replay over permanent demonstrations and a FIFO buffer of agent transitions."""

    def __init__(
        self,
        state_dim: int,
        n_actions: int,
        capacity: int,
        alpha: float,
        demo_bonus: float,
        agent_bonus: float,
        rng: np.random.Generator,
    ) -> None:
        self.state_dim = int(state_dim)
        self.n_actions = int(n_actions)
        self.alpha = float(alpha)
        self.demo_bonus = float(demo_bonus)
        self.agent_bonus = float(agent_bonus)
        self.rng = rng
        self.demo = EpisodeStorage(0, state_dim, n_actions)
        self.demo_size = 0
        """Slots of the demonstration part in use (transitions and state-only slots)."""
        self.demo_count = 0
        """Demonstration transitions (drawable slots)."""
        self.agent = EpisodeStorage(capacity, state_dim, n_actions)
        self.tree = SumTree(capacity)
        """p^α of every slot: demonstration slots at leaves [0, demo.capacity), agent slots after them."""
        self.agent_head = 0
        """Next agent slot to write; the slot after the newest one, i.e. the oldest data."""
        self.agent_count = 0
        """Agent transitions (drawable slots) currently stored."""
        self.agent_pending = False
        """The newest agent slot is a state-only slot whose state the next observation may continue."""
        self.max_abs_td = 1.0
        """Largest finite |δ| seen so far; new transitions enter with priority max|δ| + ε ([PER] Alg. 1
        line 6)."""
        self.n_quarantined = 0
        """Transitions given priority 0 for a non-finite TD error (:meth:`update_priority`)."""

    # ------------------------------------------------------------------ sizes
    @property
    def has_masks(self) -> bool:
        """Whether any stored slot carries an action mask."""
        return self.demo.masks is not None or self.agent.masks is not None

    def nbytes(self) -> int:
        """Bytes held by the stored arrays and the two sum trees."""
        return self.demo.nbytes() + self.agent.nbytes() + self.tree.tree.nbytes

    # ------------------------------------------------------------------ priorities
    def _insertion_priority(self, bonus: float) -> float:
        with np.errstate(over="ignore"):
            return float(min(np.float64(self.max_abs_td + bonus) ** self.alpha, MAX_PRIORITY))

    # ------------------------------------------------------------------ demonstrations
    def reserve_demonstrations(self, slots: int) -> None:
        """Make room for ``slots`` more demonstration slots at once (avoids repeated growth)."""
        needed = self.demo_size + int(slots)
        if needed <= self.demo.capacity:
            return
        old_capacity = self.demo.capacity
        self.demo.grow(needed - old_capacity)
        leaves = self.tree.tree[self.tree.size : self.tree.size + self.tree.capacity]
        values = np.zeros(self.demo.capacity + self.agent.capacity)
        values[: self.demo_size] = leaves[: self.demo_size]
        values[self.demo.capacity :] = leaves[old_capacity : old_capacity + self.agent.capacity]
        self.tree = SumTree(values.shape[0])
        self.tree.set_all(values)

    def add_demonstrations(self, demos: Demonstrations) -> int:
        """Append validated demonstration slots; returns the number of new transitions."""
        n = demos.states.shape[0]
        if self.demo.capacity - self.demo_size < n:
            # Geometric growth keeps repeated chunked loading linear overall.
            self.reserve_demonstrations(max(n, self.demo.capacity // 2))
        lo, hi = self.demo_size, self.demo_size + n
        self.demo.states[lo:hi] = demos.states
        self.demo.actions[lo:hi] = demos.actions
        self.demo.rewards[lo:hi] = demos.rewards
        self.demo.dones[lo:hi] = demos.dones
        self.demo.is_transition[lo:hi] = demos.is_transition
        if demos.masks is not None:
            self.demo.ensure_masks()[lo:hi] = demos.masks
        self.demo_size = hi
        priorities = np.where(demos.is_transition, self._insertion_priority(self.demo_bonus), 0.0)
        self.tree.set(np.arange(lo, hi), priorities)
        added = int(demos.is_transition.sum())
        self.demo_count += added
        return added

    def clear_demonstrations(self) -> None:
        """Drop every demonstration (the agent part is untouched)."""
        agent_leaves = self._agent_leaves(np.arange(self.agent.capacity))
        agent_values = self.tree.get(agent_leaves)
        self.demo = EpisodeStorage(0, self.state_dim, self.n_actions)
        self.demo_size = 0
        self.demo_count = 0
        self.tree = SumTree(self.agent.capacity)
        self.tree.set_all(agent_values)

    # ------------------------------------------------------------------ agent data
    def _write_agent(self, state: np.ndarray, action: int | None, reward: float, done: bool, mask) -> int:
        slot = self.agent_head
        if self.agent.is_transition[slot]:
            self.agent_count -= 1  # the oldest agent transition is the one overwritten
        self.agent.write(slot, state, action, reward, done, mask)
        if action is not None:
            self.agent_count += 1
        priority = self._insertion_priority(self.agent_bonus) if action is not None else 0.0
        self.tree.set(self._agent_leaves(np.array([slot])), np.array([priority]))
        self.agent_head = (slot + 1) % self.agent.capacity
        return slot

    def add_agent_transition(
        self,
        state: np.ndarray,
        action: int,
        reward: float,
        next_state: np.ndarray,
        done: bool,
        mask: np.ndarray | None = None,
        next_mask: np.ndarray | None = None,
        truncated: bool = False,
    ) -> None:
        """Add one self-generated transition.

        When ``state`` equals the state-only slot left by the previous non-terminal transition, that slot
        becomes this transition (so each state is stored once); otherwise a new episode starts. A
        non-terminal transition leaves ``next_state`` in a state-only slot for the next call to continue;
        ``truncated`` (the episode stops here without terminating) means no call will continue it.
        """
        self._add_agent(state, action, reward, next_state, done, mask, next_mask, truncated)

    def _add_agent(
        self,
        state: np.ndarray,
        action: int,
        reward: float,
        next_state: np.ndarray,
        done: bool,
        mask: np.ndarray | None,
        next_mask: np.ndarray | None,
        truncated: bool,
    ) -> tuple[int, int | None]:
        """:meth:`add_agent_transition`; returns the slots written, the transition's and its next
        state's (None after a terminal transition), for a subclass that stores more per slot."""
        last = (self.agent_head - 1) % self.agent.capacity
        continues = self.agent_pending and np.array_equal(self.agent.states[last], state)
        if continues:
            self.agent_head = last
        slot = self._write_agent(state, action, reward, done, mask)
        self.agent_pending = False
        next_slot = None
        if not done:
            next_slot = self._write_agent(next_state, None, 0.0, False, next_mask)
            self.agent_pending = not truncated
        return slot, next_slot

    # ------------------------------------------------------------------ sampling seam
    def sample_indices(
        self, batch_size: int, beta: float, demo_only: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``batch_size`` indices proportionally to p^α and their importance-sampling weights.

        One prefix sum per stratum of equal mass ([PER] Appendix B.2.1). Weights are (N·P(i))^-β,
        normalised by the largest weight in the batch ([PER] Sec. 3.4), where N is the number of
        transitions the batch was drawn from.

        Raises:
            RuntimeError: nothing to sample (no transitions, or every one quarantined), or the tree's
                sums are unusable; never loops without end.
        """
        total = self._sampling_total(demo_only)
        prefix = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)
        for attempt in range(2):
            leaves = self.tree.find(prefix)
            priorities = self.tree.get(leaves)
            # A prefix within rounding distance of a boundary can end on a zero leaf, or past the
            # demonstrations when only they may be drawn: draw those again, a little further inside.
            bad = (priorities <= 0.0) | (demo_only & (leaves >= self.demo.capacity))
            shrink = 1.0
            for _ in range(REDRAWS):
                if not bad.any():
                    break
                shrink *= 1.0 - 1e-9
                leaves[bad] = self.tree.find(prefix[bad] * shrink)
                priorities[bad] = self.tree.get(leaves[bad])
                bad = (priorities <= 0.0) | (demo_only & (leaves >= self.demo.capacity))
            if not bad.any():
                break
            if attempt == 1:
                raise RuntimeError(
                    "the replay's sum tree leads to no positive priority; it cannot be sampled"
                )
            # More than rounding at a boundary: the internal sums drifted from the leaves (a very large
            # priority set back to a small one leaves an absolute error). Rebuild them exactly, rescale.
            self.tree.rebuild()
            old_total, total = total, self._sampling_total(demo_only)
            prefix *= total / old_total
        population = self.demo_count + (0 if demo_only else self.agent_count)
        weights = (population * priorities / total) ** (-beta)
        weights /= weights.max()
        is_agent = leaves >= self.demo.capacity
        indices = np.where(is_agent, leaves - self.demo.capacity + DEMO_INDEX_LIMIT, leaves)
        return indices, weights

    def _sampling_total(self, demo_only: bool) -> float:
        """Σ p^α over what may be drawn; raises ``RuntimeError`` when it is not positive and finite."""
        if demo_only:
            total = self.tree.prefix_total(self.demo.capacity) if self.demo_count else 0.0
        else:
            total = self.tree.total
        if not np.isfinite(total):
            raise RuntimeError(f"the replay's priority total is {total}; it cannot be sampled")
        if total <= 0.0:
            raise RuntimeError(
                "the replay holds no transitions to sample"
                + (" from demonstrations" if demo_only else "")
                + (f" ({self.n_quarantined} quarantined)" if self.n_quarantined else "")
            )
        return total

    def update_priority(self, indices: np.ndarray, abs_td: np.ndarray) -> int:
        """Set p = |δ| + ε (ε by each transition's own part) for the given indices; returns how many
        transitions were quarantined.

        A non-finite |δ| quarantines its transition: priority 0, never drawn again (a slot of the agent
        part gets a priority again when new data overwrites it). The agent marks the rows that made an
        update non-finite that way (:meth:`agent.DQfDAgent.learn`). p^α is capped at ``MAX_PRIORITY``, so
        no exponent α turns a finite |δ| into an infinite priority.
        """
        indices = np.asarray(indices, dtype=np.int64)
        abs_td = np.abs(np.asarray(abs_td, dtype=np.float64))
        finite = np.isfinite(abs_td)
        all_finite = bool(finite.all())
        if not all_finite:
            abs_td = np.where(finite, abs_td, 0.0)
        if abs_td.size:
            self.max_abs_td = max(self.max_abs_td, float(abs_td.max()))
        is_agent = indices >= DEMO_INDEX_LIMIT
        bonus = np.where(is_agent, self.agent_bonus, self.demo_bonus)
        with np.errstate(over="ignore"):
            priorities = np.minimum((abs_td + bonus) ** self.alpha, MAX_PRIORITY)
        if all_finite:
            self.tree.set(self._leaves(indices), priorities)
            return 0
        # Quarantined leaves first, so that a duplicate index keeps its 0 (set keeps a leaf's first value).
        order = np.argsort(finite, kind="stable")
        self.tree.set(self._leaves(indices[order]), np.where(finite, priorities, 0.0)[order])
        self.tree.rebuild()  # a large priority set to 0 leaves rounding error in its ancestors
        quarantined = int(np.unique(indices[~finite]).shape[0])
        self.n_quarantined += quarantined
        return quarantined

    def priorities(self, indices: np.ndarray) -> np.ndarray:
        """Current p (not p^α) of the given indices."""
        values = self.tree.get(self._leaves(np.asarray(indices, dtype=np.int64)))
        return values ** (1.0 / self.alpha) if self.alpha > 0 else values

    def _leaves(self, indices: np.ndarray) -> np.ndarray:
        """Tree leaves of replay indices."""
        return np.where(indices >= DEMO_INDEX_LIMIT, indices - DEMO_INDEX_LIMIT + self.demo.capacity, indices)

    def _agent_leaves(self, slots: np.ndarray) -> np.ndarray:
        return slots + self.demo.capacity

    # ------------------------------------------------------------------ batch assembly
    def gather(
        self,
        indices: np.ndarray,
        weights: np.ndarray,
        n_step: int,
        gamma: float,
        transform_rewards: bool,
        device: torch.device,
    ) -> Batch:
        """Build the tensors of a batch: s, a, r, s', n-step return and bootstrap state, masks, flags."""
        indices, weights, parts = self._demonstrations_first(indices, weights)
        size = indices.shape[0]
        with_masks = self.has_masks
        # s, s' and s_{t+n} go into one array (one tensor; the agent runs the online network over all of
        # them at once), each part's rows written in place by np.take: no per-part concatenation.
        states = np.empty((3 * size, self.state_dim), dtype=np.float32)
        masks = np.empty((3 * size, self.n_actions), dtype=bool) if with_masks else None
        one, many = self._window_targets(parts, n_step, gamma, transform_rewards)
        for storage, _, target, where in self._state_blocks(parts, one, many, size):
            np.take(storage.states, where, axis=0, out=states[target])
            if masks is not None:
                if storage.masks is None:  # this part has no masks: every action is allowed
                    masks[target] = True
                else:
                    np.take(storage.masks, where, axis=0, out=masks[target])
        actions = [storage.actions[slots] for storage, slots, _ in parts]
        columns = {
            "actions": actions,
            "rewards": [one.returns],
            "discounts": [one.discounts],
            "nstep_returns": [many.returns],
            "nstep_discounts": [many.discounts],
        }

        on_cpu = device.type == "cpu"

        def as_tensor(array: np.ndarray) -> torch.Tensor:
            tensor = torch.from_numpy(array)  # shares the array's memory: no copy on the CPU
            return tensor if on_cpu else tensor.to(device)

        def tensor(key: str) -> torch.Tensor:
            values = columns[key]
            return as_tensor(values[0] if len(values) == 1 else np.concatenate(values))

        stacked_states = as_tensor(states)
        stacked_masks = None if masks is None else as_tensor(masks)
        state_views = stacked_states.split(size)
        mask_views = (None, None, None) if stacked_masks is None else stacked_masks.split(size)
        is_demo = np.zeros(size, dtype=bool)
        is_demo[: self._demo_rows(parts)] = True  # demonstrations come first in the batch
        return Batch(
            states=state_views[0],
            actions=tensor("actions"),
            masks=mask_views[0],
            rewards=tensor("rewards"),
            next_states=state_views[1],
            next_masks=mask_views[1],
            discounts=tensor("discounts"),
            nstep_returns=tensor("nstep_returns"),
            nstep_states=state_views[2],
            nstep_masks=mask_views[2],
            nstep_discounts=tensor("nstep_discounts"),
            is_demo=as_tensor(is_demo),
            weights=as_tensor(weights.astype(np.float32)),
            stacked_states=stacked_states,
            stacked_masks=stacked_masks,
            indices=indices,
        )

    def _demonstrations_first(
        self, indices: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[Part]]:
        """A batch's indices and weights reordered so that its demonstrations come first, and its parts
        in that order (a part per storage the batch draws from)."""
        is_agent = indices >= DEMO_INDEX_LIMIT
        if (~is_agent).all():
            return indices, weights, [(self.demo, indices, False)]
        if is_agent.all():
            return indices, weights, [(self.agent, indices - DEMO_INDEX_LIMIT, True)]
        order = np.argsort(is_agent, kind="stable")
        indices, weights, is_agent = indices[order], weights[order], is_agent[order]
        split = int((~is_agent).sum())
        return (
            indices,
            weights,
            [(self.demo, indices[:split], False), (self.agent, indices[split:] - DEMO_INDEX_LIMIT, True)],
        )

    @staticmethod
    def _window_targets(
        parts: list[Part], n_step: int, gamma: float, transform_rewards: bool
    ) -> tuple[NStepWindows, NStepWindows]:
        """The one-step and n-step targets of a batch's rows: the windows of each part are read
        separately (the agent part is a ring buffer) and turned into targets together."""
        reads = [
            read_windows(
                slots, storage.rewards, storage.dones, storage.is_transition, n_step, ring, transform_rewards
            )
            for storage, slots, ring in parts
        ]
        return targets_from_reads(reads[0] if len(reads) == 1 else join_reads(*reads), gamma)

    @staticmethod
    def _demo_rows(parts: list[Part]) -> int:
        """How many rows of a batch are demonstrations (they come first)."""
        return sum(slots.shape[0] for _, slots, ring in parts if not ring)

    @staticmethod
    def _state_blocks(
        parts: list[Part], one: NStepWindows, many: NStepWindows, size: int
    ) -> list[tuple[EpisodeStorage, int, slice, np.ndarray]]:
        """Where the states of a batch of ``size`` rows come from: s, s' and s_{t+n} go into one (3·size)
        array, block 0, 1 and 2; per part and block, (storage, block, rows of that array, slots to read)."""
        blocks = []
        row = 0
        for storage, slots, _ in parts:
            rows = slice(row, row + slots.shape[0])
            for block, where in enumerate((slots, one.bootstrap_slots[rows], many.bootstrap_slots[rows])):
                target = slice(block * size + rows.start, block * size + rows.stop)
                blocks.append((storage, block, target, where))
            row = rows.stop
        return blocks
