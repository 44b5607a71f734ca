"""DQfD's prioritized replay for item-indexed transitions over an open catalogue (issue 15).

The same buffer as :class:`agent.replay.PrioritizedReplay` ([DQfD] Sec. 3: demonstrations in a permanent
part never overwritten, the agent's own transitions in a FIFO part, both sampled together with
proportional prioritization, [PER] Sec. 3.3, with the bonuses ε_d / ε_a): the sum tree, the sampling seam
``sample_indices -> (indices, weights)`` / ``update_priority(indices, errors)``, the quarantine of rows
whose TD error is not finite and the n-step windows (:mod:`agent.nstep`) are inherited unchanged.

What differs is what a slot holds: the action is an int64 *item index* (a row of an
:class:`~agent.item_table.ItemTable`, which only grows, so the index keeps naming the same item), and the
allowed actions are an :class:`~agent.set_losses.AllowedSet` per slot (the catalogue size the step saw,
plus the request's candidates or exclusions) instead of a dense mask, which would cost n bits per
transition (12.5 kB at 100,000 items). Whole-catalogue sets without exclusions are interned, so the common
case costs one pointer per slot. A batch (:class:`ItemBatch`) carries the allowed sets of s, s' and
s_{t+n} as lists; the agent turns them into padded item tensors (:mod:`agent.set_losses`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from agent.replay import DEMO_INDEX_LIMIT, Demonstrations, PrioritizedReplay
from agent.set_losses import AllowedSet

EMPTY = AllowedSet(0)
"""The set of a slot that holds no state (a bootstrap slot after a terminal transition, discount 0)."""


class ItemBatch(NamedTuple):
    """One prioritized mini-batch of item-indexed transitions (torch tensors, allowed sets as lists)."""

    states: torch.Tensor
    """s, float32 (B, state_dim)."""
    actions: torch.Tensor
    """a, the item taken (a_E for demonstrations), int64 (B,)."""
    rewards: torch.Tensor
    """One-step reward r (after the optional transform), float32 (B,)."""
    next_states: torch.Tensor
    """s', float32 (B, state_dim)."""
    discounts: torch.Tensor
    """γ, or 0 after a terminal transition, float32 (B,)."""
    nstep_returns: torch.Tensor
    """Σ_{j<k} γ^j r_{t+j}, float32 (B,)."""
    nstep_states: torch.Tensor
    """s_{t+k}, the n-step bootstrap state, float32 (B, state_dim)."""
    nstep_discounts: torch.Tensor
    """γ^k, or 0 when the window ends at a terminal transition, float32 (B,)."""
    is_demo: torch.Tensor
    """True for demonstration transitions (J_E applies), bool (B,)."""
    weights: torch.Tensor
    """Importance-sampling weights (N·P(i))^-β / max, float32 (B,)."""
    indices: np.ndarray
    """Replay indices, for :meth:`ItemReplay.update_priority`, int64 (B,)."""
    stacked_states: torch.Tensor
    """s, s' and s_{t+k} stacked, float32 (3B, state_dim); the three state fields are views of it."""
    allowed: list[AllowedSet]
    """Allowed items at s, one set per row."""
    next_allowed: list[AllowedSet]
    """Allowed items at s'."""
    nstep_allowed: list[AllowedSet]
    """Allowed items at s_{t+k}."""


class ItemDemonstrations(NamedTuple):
    """Validated demonstration slots (:class:`agent.replay.Demonstrations` without masks) with the allowed
    set of each slot."""

    demonstrations: Demonstrations
    allowed: list[AllowedSet]


class ItemReplay(PrioritizedReplay):
    """Prioritized replay over permanent demonstrations and a FIFO part, with item actions and allowed
    sets stored compactly."""

    def __init__(
        self,
        state_dim: int,
        capacity: int,
        alpha: float,
        demo_bonus: float,
        agent_bonus: float,
        rng: np.random.Generator,
    ) -> None:
        """Args as :class:`agent.replay.PrioritizedReplay`, without ``n_actions`` (the catalogue is open)."""
        super().__init__(state_dim, 0, capacity, alpha, demo_bonus, agent_bonus, rng)
        self.demo_allowed = np.empty(0, dtype=object)
        """AllowedSet of each demonstration slot."""
        self.agent_allowed = np.empty(self.agent.capacity, dtype=object)
        """AllowedSet of each agent slot (None where never written)."""
        self._whole: dict[int, AllowedSet] = {}

    # ------------------------------------------------------------------ allowed sets
    def intern(self, allowed: AllowedSet) -> AllowedSet:
        """The stored form of a set: one shared object per catalogue size for whole-catalogue sets."""
        if allowed.candidates is None and not allowed.exclusions:
            return self._whole.setdefault(allowed.catalogue_size, allowed)
        return allowed

    def allowed_at(self, indices: np.ndarray) -> list[AllowedSet]:
        """The allowed sets stored with the given replay indices (their states' sets)."""
        indices = np.asarray(indices, dtype=np.int64)
        return [
            self.agent_allowed[i - DEMO_INDEX_LIMIT] if i >= DEMO_INDEX_LIMIT else self.demo_allowed[i]
            for i in indices.tolist()
        ]

    def actions_at(self, indices: np.ndarray) -> np.ndarray:
        """The item indices stored with the given replay indices, int64."""
        indices = np.asarray(indices, dtype=np.int64)
        is_agent = indices >= DEMO_INDEX_LIMIT
        out = np.empty(indices.shape[0], dtype=np.int64)
        out[~is_agent] = self.demo.actions[indices[~is_agent]]
        out[is_agent] = self.agent.actions[indices[is_agent] - DEMO_INDEX_LIMIT]
        return out

    def nbytes(self) -> int:
        """Bytes of the stored arrays, the sum tree and the slots' pointers to their allowed sets (shared
        whole-catalogue sets are not counted per slot; other sets count their items at 8 bytes each)."""
        own = 0
        for allowed in [*self.demo_allowed[: self.demo_size], *self.agent_allowed]:
            if allowed is not None and (allowed.candidates is not None or allowed.exclusions):
                own += 8 * (len(allowed.candidates or ()) + len(allowed.exclusions))
        return super().nbytes() + self.demo_allowed.nbytes + self.agent_allowed.nbytes + own

    # ------------------------------------------------------------------ demonstrations
    def reserve_demonstrations(self, slots: int) -> None:
        """Make room for ``slots`` more demonstration slots (the allowed sets grow with the arrays)."""
        super().reserve_demonstrations(slots)
        if self.demo_allowed.shape[0] < self.demo.capacity:
            grown = np.empty(self.demo.capacity, dtype=object)
            grown[: self.demo_allowed.shape[0]] = self.demo_allowed
            self.demo_allowed = grown

    def add_item_demonstrations(self, demos: ItemDemonstrations) -> int:
        """Append validated demonstration slots with their allowed sets; returns the new transitions."""
        lo = self.demo_size
        added = self.add_demonstrations(demos.demonstrations)
        sets = self.demo_allowed
        for offset, allowed in enumerate(demos.allowed):
            sets[lo + offset] = self.intern(allowed)
        return added

    def clear_demonstrations(self) -> None:
        """Drop every demonstration (the agent part is untouched)."""
        super().clear_demonstrations()
        self.demo_allowed = np.empty(0, dtype=object)

    # ------------------------------------------------------------------ agent data
    def add_item_transition(
        self,
        state: np.ndarray,
        action: int,
        reward: float,
        next_state: np.ndarray,
        done: bool,
        allowed: AllowedSet,
        next_allowed: AllowedSet,
        truncated: bool = False,
    ) -> None:
        """Add one self-generated transition (episode continuation as
        :meth:`agent.replay.PrioritizedReplay.add_agent_transition`), with the allowed sets at its state
        and next state."""
        slot, next_slot = self._add_agent(state, int(action), reward, next_state, done, None, None, truncated)
        self.agent_allowed[slot] = self.intern(allowed)
        if next_slot is not None:
            self.agent_allowed[next_slot] = self.intern(next_allowed)

    # ------------------------------------------------------------------ batch assembly
    def gather_items(
        self,
        indices: np.ndarray,
        weights: np.ndarray,
        n_step: int,
        gamma: float,
        transform_rewards: bool,
        device: torch.device,
    ) -> ItemBatch:
        """Build a batch: s, a, r, s', n-step return and bootstrap state, their allowed sets, flags.

        Demonstrations come first in the batch (indices and weights are reordered to match), as in
        :meth:`agent.replay.PrioritizedReplay.gather`.
        """
        indices, weights, parts = self._demonstrations_first(
            np.asarray(indices, dtype=np.int64), np.asarray(weights)
        )
        size = indices.shape[0]
        one, many = self._window_targets(parts, n_step, gamma, transform_rewards)
        states = np.empty((3 * size, self.state_dim), dtype=np.float32)
        allowed: list[list[AllowedSet]] = [[], [], []]
        for storage, block, target, where in self._state_blocks(parts, one, many, size):
            np.take(storage.states, where, axis=0, out=states[target])
            sets = self.agent_allowed if storage is self.agent else self.demo_allowed
            # A slot never written (past a terminal transition) has no set: nothing to bootstrap from.
            allowed[block].extend(EMPTY if a is None else a for a in sets[where].tolist())
        actions = [storage.actions[slots] for storage, slots, _ in parts]

        def as_tensor(array: np.ndarray) -> torch.Tensor:
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            return tensor if device.type == "cpu" else tensor.to(device)

        stacked = as_tensor(states)
        views = stacked.split(size)
        is_demo = np.zeros(size, dtype=bool)
        is_demo[: self._demo_rows(parts)] = True
        return ItemBatch(
            states=views[0],
            actions=as_tensor(np.concatenate(actions).astype(np.int64)),
            rewards=as_tensor(one.returns),
            next_states=views[1],
            discounts=as_tensor(one.discounts),
            nstep_returns=as_tensor(many.returns),
            nstep_states=views[2],
            nstep_discounts=as_tensor(many.discounts),
            is_demo=as_tensor(is_demo),
            weights=as_tensor(weights.astype(np.float32)),
            indices=indices,
            stacked_states=stacked,
            allowed=allowed[0],
            next_allowed=allowed[1],
            nstep_allowed=allowed[2],
        )


def allowed_from_mask(mask: np.ndarray) -> AllowedSet:
    """The :class:`AllowedSet` of a dense bool mask over items ``[0, len(mask))``: the catalogue size with
    the excluded items, or the allowed items as candidates when they are fewer (the smaller encoding).

    A mask that allows nothing gives the empty set (an empty candidate list): valid for a state nothing
    is taken at (a terminal or final state; it bootstraps 0), refused wherever an item must be allowed.
    """
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    allowed = np.flatnonzero(mask)
    if allowed.shape[0] < mask.shape[0] - allowed.shape[0]:
        return AllowedSet(mask.shape[0], candidates=tuple(allowed.tolist()))
    return AllowedSet(mask.shape[0], exclusions=frozenset(np.flatnonzero(~mask).tolist()))


def allowed_sets(
    n: int,
    catalogue_size: int,
    allowed: Sequence[AllowedSet | None] | None = None,
    masks: np.ndarray | None = None,
) -> list[AllowedSet]:
    """One :class:`AllowedSet` per row from ``allowed`` (None rows: the catalogue as it is) or dense
    ``masks`` (N, n_items); the whole catalogue of ``catalogue_size`` items when both are None."""
    if allowed is not None and masks is not None:
        raise ValueError("give allowed sets or masks, not both")
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[0] != n or masks.shape[1] > catalogue_size:
            raise ValueError(f"masks must have shape ({n}, n_items ≤ {catalogue_size}), got {masks.shape}")
        return [allowed_from_mask(row) for row in masks]
    whole = AllowedSet(catalogue_size)
    if allowed is None:
        return [whole] * n
    if len(allowed) != n:
        raise ValueError(f"allowed must have {n} entries, got {len(allowed)}")
    out = []
    for row, item in enumerate(allowed):
        if item is not None and item.catalogue_size > catalogue_size:
            raise ValueError(
                f"row {row}: allowed set over {item.catalogue_size} items, the table has {catalogue_size}"
            )
        out.append(whole if item is None else item)
    return out
