"""DQfD's losses over allowed item *sets*, for Q-networks that score items by features (issue 15).

The paper's losses ([DQfD] Eq. 2–3, :mod:`agent.losses`) take Q(s, ·) over all actions and a dense mask.
With an open catalogue of 100,000 items a dense mask costs 12.5 kB per transition and a dense Q(s, ·) a
network pass per item, so here an allowed set is stored compactly (:class:`AllowedSet`: the catalogue size
the step saw, plus the request's candidates or exclusions) and a batch scores only a padded tensor of
items (:class:`PaddedItems`, (B, K) indices with a validity mask). The losses keep their meaning:

- J_E = max over allowed a of [Q(s, a) + l(a_E, a)] − Q(s, a_E), l = margin for a ≠ a_E, 0 for a_E;
- the double-DQN bootstrap Q_target(s', argmax over allowed a of Q_online(s', a)), for the 1-step and the
  n-step target alike (the bootstrap state's own allowed set).

Each is exact when K covers the allowed set (:func:`exact_items`). For a large catalogue the max may run
over a sampled subset (:func:`sampled_items`): a_E, any "hard" items the caller adds (e.g. the online
network's retrieved top items), and a uniform sample without replacement of the other allowed items.

What the subset does to J_E. The max over a subset is at most the max over the whole set, so the sampled
J_E is a lower bound of the exact J_E, and, because a_E is always in the subset with l = 0, never below 0.
It is exact whenever the subset holds the item that attains the exact max. A sampled J_E of 0 therefore
says the margin holds over the sampled items only: a violating item left out of the sample gets no
gradient that update (the expected gradient is biased towards zero, never in the wrong direction). Uniform
sampling gives every allowed item the same chance to be checked, so no violator is missed for long; adding
the retrieved top items covers the ones that matter most, those the greedy policy would pick over a_E.
Without a_E in the subset, the max could fall below Q(s, a_E) and J_E turn negative, a loss with no
meaning, which is why a_E is forced in.

For the bootstrap, a max over a subset underestimates the max over the allowed set (the opposite of
Q-learning's overestimation bias); retrieving the bootstrap state's top items and scoring them exactly
keeps it close. A row with no allowed item bootstraps 0, which is only meaningful at a terminal step
(discount 0, where :func:`agent.losses.td_targets` drops the bootstrap anyway).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

REJECTION_LIMIT = 64
"""Rejection-sampling rounds before :meth:`AllowedSet.sample_others` enumerates the set instead: with few
exclusions one round is enough; a set that is mostly excluded falls back to the exact enumeration."""


@dataclass(frozen=True)
class AllowedSet:
    """The items allowed at one step, stored compactly.

    Either the request's candidates (each below ``catalogue_size``), or every item of the catalogue as the
    step saw it (indices ``[0, catalogue_size)``), less ``exclusions`` in both cases. Items added to the
    catalogue later are never in it, so it stays what the step allowed.
    """

    catalogue_size: int
    """Items in the catalogue when the step was taken."""
    candidates: tuple[int, ...] | None = None
    """The request's candidate list (duplicates dropped, order kept), or None for the whole catalogue."""
    exclusions: frozenset[int] = field(default_factory=frozenset)
    """Items not allowed (deactivated, already shown, excluded by the request)."""

    def __post_init__(self) -> None:
        if self.catalogue_size < 0:
            raise ValueError("catalogue_size must be >= 0")
        if self.candidates is not None:
            unique = tuple(dict.fromkeys(int(c) for c in self.candidates))
            bad = [c for c in unique if not 0 <= c < self.catalogue_size]
            if bad:
                raise ValueError(
                    f"candidate {bad[0]} is outside the catalogue of {self.catalogue_size} items"
                )
            object.__setattr__(self, "candidates", unique)
        object.__setattr__(self, "exclusions", frozenset(int(e) for e in self.exclusions))

    def __contains__(self, item: object) -> bool:
        """Whether ``item`` (an int) is allowed."""
        if not isinstance(item, int | np.integer) or int(item) in self.exclusions:
            return False
        if self.candidates is not None:
            return int(item) in self.candidates
        return 0 <= int(item) < self.catalogue_size

    def items(self) -> np.ndarray:
        """Every allowed item, int64: candidates in their order, else the catalogue in index order."""
        pool = np.asarray(self.candidates, dtype=np.int64) if self.candidates is not None else None
        if pool is None:
            pool = np.arange(self.catalogue_size, dtype=np.int64)
        if self.exclusions:
            pool = pool[~np.isin(pool, np.fromiter(self.exclusions, dtype=np.int64))]
        return pool

    def sample_others(self, n: int, rng: np.random.Generator, taken: Iterable[int] = ()) -> np.ndarray:
        """Up to ``n`` allowed items not in ``taken``, uniformly without replacement, int64.

        All of them when fewer than ``n`` remain. A whole-catalogue set is sampled by rejection (draw
        indices in ``[0, catalogue_size)``, drop excluded, taken and repeated ones), so a set over 100,000
        items is never enumerated while its exclusions are few.
        """
        taken_set = {int(t) for t in taken}
        if self.candidates is None and self.catalogue_size > 4 * (n + len(self.exclusions) + len(taken_set)):
            chosen: dict[int, None] = {}
            for _ in range(REJECTION_LIMIT):
                for item in rng.integers(0, self.catalogue_size, size=2 * (n - len(chosen))).tolist():
                    if item not in self.exclusions and item not in taken_set and len(chosen) < n:
                        chosen[item] = None
                if len(chosen) == n:
                    return np.fromiter(chosen, dtype=np.int64, count=n)
        pool = self.items()
        if taken_set:
            pool = pool[~np.isin(pool, np.fromiter(taken_set, dtype=np.int64))]
        if len(pool) <= n:
            return pool
        return rng.choice(pool, size=n, replace=False)


class PaddedItems(NamedTuple):
    """Per-row item sets as one padded batch: what a Q-network scores and the set losses reduce."""

    items: torch.Tensor
    """Item indices, int64 (B, K); padding slots hold item 0 (a valid row of any non-empty table)."""
    valid: torch.Tensor
    """True where ``items`` holds an allowed item, bool (B, K)."""


def pad_items(rows: Sequence[np.ndarray | Sequence[int]]) -> PaddedItems:
    """Stack per-row item lists into a :class:`PaddedItems` of width max(len(row)) (at least 1)."""
    width = max([len(row) for row in rows] + [1])
    items = torch.zeros(len(rows), width, dtype=torch.int64)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, row in enumerate(rows):
        items[b, : len(row)] = torch.as_tensor(np.asarray(row, dtype=np.int64))
        valid[b, : len(row)] = True
    return PaddedItems(items, valid)


def exact_items(sets: Sequence[AllowedSet]) -> PaddedItems:
    """Every allowed item of each set: the losses are then exact."""
    return pad_items([s.items() for s in sets])


def sampled_items(
    sets: Sequence[AllowedSet],
    n_samples: int,
    rng: np.random.Generator,
    required: Sequence[int | None] | None = None,
    hard: Sequence[Sequence[int]] | None = None,
) -> PaddedItems:
    """A subset of each allowed set: its required item, its allowed hard items, then a uniform sample.

    Args:
        sets: the allowed set of each row.
        n_samples: uniformly sampled items per row, besides the required and hard ones.
        rng: the generator (seeded by the caller: the subset is part of the update).
        required: per row, an item that must be in the subset (a_E for J_E) or None; raises ``ValueError``
            if it is not allowed, since J_E is undefined then.
        hard: per row, items to include when allowed (e.g. the online network's retrieved top items);
            disallowed ones are skipped.

    Returns:
        Per row: required item first, then the allowed hard items, then up to ``n_samples`` others drawn
        uniformly without replacement; no item twice. The whole set when it has no more items than that.
    """
    rows = required_and_hard(sets, required, hard)
    for row, allowed in zip(rows, sets, strict=True):
        row.extend(allowed.sample_others(n_samples, rng, taken=row).tolist())
    return pad_items(rows)


def required_and_hard(
    sets: Sequence[AllowedSet],
    required: Sequence[int | None] | None = None,
    hard: Sequence[Sequence[int]] | None = None,
) -> list[list[int]]:
    """Per row: its required item, then its allowed hard items, no item twice (the fixed part of a
    sampled subset, :func:`sampled_items`); ``ValueError`` for a required item that is not allowed."""
    rows: list[list[int]] = []
    for b, allowed in enumerate(sets):
        row: list[int] = []
        must = None if required is None else required[b]
        if must is not None:
            if int(must) not in allowed:
                raise ValueError(f"row {b}: the required item {int(must)} is not in its allowed set")
            row.append(int(must))
        for item in [] if hard is None else hard[b]:
            if int(item) in allowed and int(item) not in row:
                row.append(int(item))
        rows.append(row)
    return rows


def masked_q(q: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Q-values with padding slots set to −∞, so they never win a max or an argmax."""
    return q.masked_fill(~valid, float("-inf"))


def set_margin_loss(
    q: torch.Tensor,
    padded: PaddedItems,
    expert_items: torch.Tensor,
    margin: float = 0.8,
    is_demo: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample J_E = max over the row's items of [Q(s, a) + l(a_E, a)] − Q(s, a_E), (B,).

    Args:
        q: Q(s, ·) of ``padded.items``, (B, K).
        padded: the items scored per row; a_E must be a valid item of every row that counts.
        expert_items: a_E per row, int64 (B,).
        margin: l for a ≠ a_E (``DQfDConfig.margin``, [DQfD] supplementary list: 0.8).
        is_demo: bool (B,); rows that are not demonstrations get exactly 0 loss and 0 gradient and need not
            contain a_E.

    Example from the tests: Q = [2, 1, 0] over items [5, 7, 9] with a_E = 7 gives 2.8 − 1 = 1.8.
    """
    is_expert = (padded.items == expert_items.long().unsqueeze(1)) & padded.valid
    present = is_expert.any(dim=1)
    counted = present if is_demo is None else present | ~is_demo
    if not bool(counted.all()):
        row = int((~counted).nonzero()[0, 0])
        raise ValueError(f"row {row}: the expert item {int(expert_items[row])} is not among its scored items")
    margins = torch.where(is_expert, torch.zeros_like(q), torch.full_like(q, float(margin)))
    best = masked_q(q + margins, padded.valid).amax(dim=1)
    expert_q = q.gather(1, is_expert.long().argmax(dim=1, keepdim=True)).squeeze(1)
    loss = best - expert_q
    if is_demo is not None:
        loss = torch.where(is_demo & present, loss, torch.zeros_like(loss))
    return loss


def set_double_dqn_bootstrap(
    q_online: torch.Tensor, q_target: torch.Tensor, padded: PaddedItems
) -> torch.Tensor:
    """Q_target(s', argmax over the row's items of Q_online(s', a)) per row, (B,); 0 for an empty row.

    Both networks score the same items (``padded`` at the bootstrap state). Ties go to the first slot, as
    ``argmax`` returns. Example from the tests: online [1, 3] and target [5, 2] give 2.
    """
    best = masked_q(q_online, padded.valid).argmax(dim=1, keepdim=True)
    value = q_target.gather(1, best).squeeze(1)
    return torch.where(padded.valid.any(dim=1), value, torch.zeros_like(value))
