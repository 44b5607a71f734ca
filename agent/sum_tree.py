"""A vectorised binary sum tree for proportional prioritized sampling ([PER] Sec. 3.3, Appendix B.2.1).

The tree is one flat float64 array in heap order: node 1 is the root, node k has children 2k and 2k+1,
leaves live at ``[size, 2·size)`` where ``size`` is the capacity rounded up to a power of two. Every
operation works on a whole batch of leaves at once with one NumPy call per tree level, so sampling or
updating B leaves costs O(B · log N) arithmetic in O(log N) NumPy calls, never a Python loop per element.

Leaf values must be finite and non-negative: :meth:`SumTree.set` and :meth:`SumTree.set_all` raise
``ValueError`` on anything else, where it arises, and :meth:`SumTree.find` raises on a non-finite or
non-positive total or prefix sum. A NaN in the tree would otherwise make every prefix sum NaN, and a
caller that redraws until it finds a positive leaf would never stop (docs/algorithm.md, "Defence against
poisoned data"). Every loop here runs a bounded number of times whatever the values.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    """Sums of non-negative leaf values, with batched prefix-sum search."""

    REBUILD_EVERY = 20_000
    """Calls of :meth:`set` between exact rebuilds of the internal nodes."""

    SEARCH_LEVEL = 12
    """:meth:`find` starts its descent at this level (4,096 nodes), found by one binary search."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = int(capacity)
        self.size = 1 << max(0, (self.capacity - 1).bit_length())
        self.depth = self.size.bit_length() - 1
        self.tree = np.zeros(2 * self.size, dtype=np.float64)
        self._shifts = np.arange(1, self.depth + 1, dtype=np.int64)
        self._updates_since_rebuild = 0

    @property
    def total(self) -> float:
        """Sum of all leaves."""
        return float(self.tree[1])

    def get(self, leaves: np.ndarray) -> np.ndarray:
        """Values of the given leaves."""
        return self.tree[np.asarray(leaves, dtype=np.int64) + self.size]

    def set(self, leaves: np.ndarray, values: np.ndarray) -> None:
        """Set leaf values and add each change to the leaf's ancestors.

        All ancestors of all leaves are updated with one scatter-add (``np.add.at``) instead of one NumPy
        call per level. Adding deltas accumulates rounding error, so the tree is rebuilt exactly from its
        leaves every ``REBUILD_EVERY`` calls (O(N), a few milliseconds for 10^6 leaves). When a leaf
        appears more than once, its first value is kept.
        """
        leaves = np.asarray(leaves, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        _check_values(values)
        if leaves.shape[0] > 1:
            leaves, first = np.unique(leaves, return_index=True)
            values = values[first]
        nodes = leaves + self.size
        if leaves.shape[0] * self.depth > self.size:
            # Bulk load: rebuilding every level is cheaper than scattering to every ancestor.
            self.tree[nodes] = values
            self.rebuild()
            return
        delta = values - self.tree[nodes]
        self.tree[nodes] = values
        if self.depth:
            ancestors = (nodes[:, None] >> self._shifts).ravel()
            np.add.at(self.tree, ancestors, np.repeat(delta, self.depth))
        self._updates_since_rebuild += 1
        if self._updates_since_rebuild >= self.REBUILD_EVERY:
            self.rebuild()

    def rebuild(self) -> None:
        """Recompute every internal node from the leaves (removes accumulated rounding error)."""
        lo = self.size
        while lo > 1:
            hi, lo = lo, lo >> 1
            self.tree[lo:hi] = self.tree[2 * lo : 2 * hi : 2] + self.tree[2 * lo + 1 : 2 * hi : 2]
        self._updates_since_rebuild = 0

    def set_all(self, values: np.ndarray) -> None:
        """Replace every leaf ``[0, len(values))`` (the rest become 0) and rebuild in O(N)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape[0] > self.capacity:
            raise ValueError("more values than capacity")
        _check_values(values)
        self.tree[:] = 0.0
        self.tree[self.size : self.size + values.shape[0]] = values
        self.rebuild()

    def find(self, prefix: np.ndarray) -> np.ndarray:
        """Leaf index i for each prefix sum u, with Σ_{j<i} v_j ≤ u < Σ_{j≤i} v_j.

        The top ``SEARCH_LEVEL`` levels are skipped in one step: a cumulative sum over the (at most 4,096)
        nodes of that level and a binary search find each u's node there, then the descent continues one
        level per NumPy call. For 10^6 leaves that is 8 levels of per-level calls instead of 20.

        Rounding can make a u within a few ulps of a boundary end on a neighbouring leaf, possibly one of
        value 0; callers that must never draw a zero leaf check the values they get (see
        :meth:`agent.replay.PrioritizedReplay.sample_indices`).

        Raises:
            ValueError: a prefix sum is NaN or infinite.
            RuntimeError: the total is not a positive finite number (nothing to find).
        """
        total = self.tree[1]
        if not 0.0 < total < np.inf:
            raise RuntimeError(
                f"cannot search a sum tree whose total is {total} (it must be positive and finite)"
            )
        u = np.array(prefix, dtype=np.float64, copy=True)
        if not np.isfinite(u).all():
            raise ValueError("prefix sums must be finite")
        level = min(self.depth, self.SEARCH_LEVEL)
        first = 1 << level
        cumulative = np.cumsum(self.tree[first : 2 * first])
        position = np.minimum(np.searchsorted(cumulative, u, side="right"), first - 1)
        u -= np.where(position > 0, cumulative[position - 1], 0.0)
        nodes = position + first
        for _ in range(self.depth - level):
            nodes <<= 1
            left_sum = self.tree[nodes]
            go_right = u >= left_sum
            np.subtract(u, left_sum, out=u, where=go_right)
            nodes += go_right
        return nodes - self.size

    def prefix_total(self, end: int) -> float:
        """Σ of the leaves [0, end), walking one root-to-leaf path (O(log N))."""
        if end >= self.size:
            return self.total
        total = 0.0
        node = end + self.size
        while node > 1:
            if node & 1:  # a right child: its left sibling's whole subtree comes before it
                total += float(self.tree[node - 1])
            node >>= 1
        return total


def _check_values(values: np.ndarray) -> None:
    """Raise ``ValueError`` unless every value is finite and >= 0 (one pass; NaN fails both tests)."""
    if not ((values >= 0.0) & (values < np.inf)).all():
        bad = values[~((values >= 0.0) & (values < np.inf))]
        raise ValueError(
            f"sum tree values must be finite and >= 0, got {bad[0]} ({bad.shape[0]} such values)"
        )
