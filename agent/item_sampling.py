"""Sampled item subsets for a whole batch at once: :func:`agent.set_losses.sampled_items`, vectorised.

Same contract (per row: the required item first, then its allowed hard items, then other allowed items
drawn uniformly without replacement, no item twice), except that the uniform draw fills each row up to a
total ``size``: a hard item that is the required one, or not allowed, leaves room for one more uniform
item instead of a shorter row. For every row that allows a large part of a catalogue (no candidate list,
the catalogue well above what is drawn) the draw is a few array operations for the whole batch instead
of a Python loop per drawn item, which took about a third of an update at batch 32 × 3 states and 64
items per row. The other rows (candidate lists, small or mostly excluded catalogues) go through
:meth:`AllowedSet.sample_others` one by one.

The draw: as many indices as the row still needs plus ``SPARE``, uniform over the row's catalogue; a
draw that repeats an earlier one of its row, is one of the row's taken items or is excluded is dropped,
and the first survivors that fill the row are kept. Dropping repeats keeps the survivors a uniform sample
without replacement (each ordered sequence of distinct items is equally likely); a row with too few
survivors is drawn again by the one-by-one path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.set_losses import AllowedSet, PaddedItems, pad_items, required_and_hard

SPARE = 16
"""Extra draws per row: with n draws from c items about n²/2c repeat, so 16 spare draws leave a row short
only when c is within a small factor of n², where the one-by-one path takes over."""

DENSE_FACTOR = 4
"""A row is drawn in bulk when its catalogue holds more than this many times the items it draws, skips
and excludes (as :meth:`AllowedSet.sample_others` decides to sample by rejection)."""


def sample_subsets(
    sets: Sequence[AllowedSet],
    size: int,
    rng: np.random.Generator,
    required: Sequence[int | None] | None = None,
    hard: Sequence[Sequence[int]] | None = None,
) -> PaddedItems:
    """Per row: its required item, its allowed hard items, then uniform others, ``size`` items in all
    (the whole allowed set when it has fewer; more only when the required and hard items alone are).

    Arguments as :func:`agent.set_losses.sampled_items` (``ValueError`` for a required item that is not
    allowed), with ``size`` the row total instead of the number of uniform samples; the valid slots of a
    row are contiguous from slot 0.
    """
    rows = required_and_hard(sets, required, hard)
    drawn: list[np.ndarray | None] = [None] * len(sets)
    needed = [max(0, int(size) - len(row)) for row in rows]
    bulk = [
        b
        for b, allowed in enumerate(sets)
        if needed[b] > 0
        and allowed.candidates is None
        and allowed.catalogue_size > DENSE_FACTOR * (needed[b] + len(allowed.exclusions) + len(rows[b]))
    ]
    if bulk:
        wanted = np.array([needed[b] for b in bulk])
        width = int(wanted.max()) + SPARE
        sizes = np.array([sets[b].catalogue_size for b in bulk], dtype=np.int64)
        draws = np.minimum(
            (rng.random((len(bulk), width)) * sizes[:, None]).astype(np.int64), sizes[:, None] - 1
        )
        # A draw repeats an earlier one of its row when it equals its predecessor after a stable sort.
        order = np.argsort(draws, axis=1, kind="stable")
        ordered = np.take_along_axis(draws, order, axis=1)
        repeat_sorted = np.zeros_like(ordered, dtype=bool)
        repeat_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        dropped = np.zeros_like(repeat_sorted)
        np.put_along_axis(dropped, order, repeat_sorted, axis=1)
        taken_width = max(len(rows[b]) for b in bulk)
        if taken_width:
            taken = np.full((len(bulk), taken_width), -1, dtype=np.int64)
            for i, b in enumerate(bulk):
                taken[i, : len(rows[b])] = rows[b]
            dropped |= (draws[:, :, None] == taken[:, None, :]).any(axis=2)
        for i, b in enumerate(bulk):
            if sets[b].exclusions:
                dropped[i] |= np.isin(draws[i], np.fromiter(sets[b].exclusions, dtype=np.int64))
        kept = ~dropped
        enough = kept.sum(axis=1) >= wanted
        position = np.cumsum(kept, axis=1)
        for i, b in enumerate(bulk):
            if enough[i]:
                drawn[b] = draws[i][kept[i] & (position[i] <= wanted[i])]
    full = []
    for b, allowed in enumerate(sets):
        others = drawn[b]
        if others is None:
            others = (
                allowed.sample_others(needed[b], rng, taken=rows[b]) if needed[b] else np.empty(0, np.int64)
            )
        full.append(np.concatenate([np.asarray(rows[b], dtype=np.int64), others]))
    return pad_items(full)
