"""The batched subset sampler (agent/item_sampling.py): the contract of set_losses.sampled_items, uniform."""

from __future__ import annotations

import numpy as np
import pytest

from agent.item_sampling import sample_subsets
from agent.set_losses import AllowedSet


def test_rows_hold_the_required_item_then_allowed_hard_items_then_distinct_allowed_samples():
    sets = [
        AllowedSet(10_000),
        AllowedSet(10_000, exclusions=frozenset(range(0, 10_000, 2))),  # odd items only: bulk path
        AllowedSet(50, candidates=(3, 9, 11, 20)),  # a candidate list: all of it
        AllowedSet(12),  # small catalogue: the one-by-one path, all 12 items
    ]
    rng = np.random.default_rng(0)
    for _ in range(50):
        padded = sample_subsets(
            sets, 22, rng, required=[5, 7, 9, 4], hard=[[8, 5, 10_001], [3, 4, 11], [20, 1], [4, 2]]
        )
        rows = [padded.items[b][padded.valid[b]].tolist() for b in range(4)]
        assert [row[0] for row in rows] == [5, 7, 9, 4]
        assert rows[0][1] == 8 and rows[1][1:3] == [3, 11] and rows[2][1] == 20 and rows[3][1] == 2
        assert [len(row) for row in rows] == [22, 22, 4, 12]
        for row, allowed in zip(rows, sets, strict=True):
            assert len(set(row)) == len(row) and all(item in allowed for item in row)
        assert all(padded.valid[b, : len(rows[b])].all() for b in range(4))
    with pytest.raises(ValueError, match="required item 2"):
        sample_subsets([AllowedSet(10, exclusions=frozenset({2}))], 4, rng, required=[2])


def test_the_bulk_draw_is_uniform_over_the_allowed_items():
    # 400 items, item 0 required, 1 and 2 excluded: 5 draws per row spread over the other 397 items.
    allowed = AllowedSet(400, exclusions=frozenset({1, 2}))
    rng = np.random.default_rng(1)
    counts = np.zeros(400)
    for _ in range(40):
        padded = sample_subsets([allowed] * 100, 6, rng, required=[0] * 100)
        np.add.at(counts, padded.items[:, 1:].reshape(-1).numpy(), 1)
    assert counts[[0, 1, 2]].sum() == 0 and counts.sum() == 40 * 100 * 5
    # 20,000 draws over 397 items: about 50.4 each; a chi-square over 396 degrees of freedom is within
    # 396 ± 4·sqrt(2·396) ≈ 396 ± 113 with overwhelming probability under uniformity.
    expected = counts.sum() / 397
    chi2 = float(((counts[3:] - expected) ** 2 / expected).sum())
    assert 396 - 113 < chi2 < 396 + 113
