"""A catalogue that can grow: item features by row, and an optional learned per-item embedding (issue 15).

An item is an integer index, its row in :class:`ItemTable`. Rows are only ever appended, so an index
stored anywhere (a replay transition, an allowed set, a decision log) keeps naming the same item and
features for as long as the table lives: adding items never touches stored data or network weights.

:class:`ItemEmbedding` is the learned part, for items that have data. It is a ``torch.nn.Module`` owned by
the network (its rows are parameters); the table itself holds no parameters. An index at or past the
embedding's rows reads a zero vector, the same value a freshly grown row starts with, so an item the
network has never seen is scored by its features alone, before and after :meth:`ItemEmbedding.grow`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ItemTable:
    """Float32 features per item, one row per item index, append-only.

    Storage doubles when full (amortised O(1) per appended row); :attr:`features` is a view of the rows in
    use, so reading it copies nothing.
    """

    def __init__(self, feature_dim: int, features: np.ndarray | torch.Tensor | None = None) -> None:
        """Args:
        feature_dim: F, the length of every item's feature vector (0 is allowed: items are then
            told apart only by a learned embedding).
        features: optional initial rows, shape (n, F); validated as :meth:`append` does.
        """
        if feature_dim < 0:
            raise ValueError("feature_dim must be >= 0")
        self.feature_dim = int(feature_dim)
        self._storage = torch.zeros(0, self.feature_dim, dtype=torch.float32)
        self._size = 0
        if features is not None:
            self.append(features)

    def __len__(self) -> int:
        """The number of items (rows) in the table."""
        return self._size

    @property
    def features(self) -> torch.Tensor:
        """All items' features, float32 (n, F): a read-only view, not a copy (do not write into it)."""
        return self._storage[: self._size]

    def append(self, features: np.ndarray | torch.Tensor) -> range:
        """Add items at the end of the table and return their new indices.

        Args:
            features: float-convertible, shape (m, F); every value finite (a NaN feature would make the
                item's Q-values NaN wherever it is a candidate).

        Returns:
            ``range(n, n + m)``, the indices of the added items. Existing rows are never changed.
        """
        rows = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if rows.ndim != 2 or rows.shape[1] != self.feature_dim:
            raise ValueError(f"features must have shape (m, {self.feature_dim}), got {tuple(rows.shape)}")
        if not bool(torch.isfinite(rows).all()):
            bad = int((~torch.isfinite(rows)).any(dim=1).nonzero()[0, 0])
            raise ValueError(f"features row {bad} is not finite")
        start, end = self._size, self._size + rows.shape[0]
        if end > self._storage.shape[0]:
            grown = torch.zeros(max(end, 2 * self._storage.shape[0], 16), self.feature_dim)
            grown[:start] = self._storage[:start]
            self._storage = grown
        self._storage[start:end] = rows
        self._size = end
        return range(start, end)

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """The features of the given items, float32 of shape ``indices.shape + (F,)``.

        Raises ``IndexError`` for an index outside ``[0, n)``, naming it: a silent wrap-around of a
        negative index would score a different item.
        """
        indices = indices.long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self._size):
            bad = indices[(indices < 0) | (indices >= self._size)][0]
            raise IndexError(f"item index {int(bad)} is outside the table's {self._size} items")
        return self.features[indices]


class ItemEmbedding(nn.Module):
    """A learned vector per item, growing with the catalogue; unknown items read zeros.

    New rows are zeros, deterministically: a new item's embedding then adds nothing to its features'
    contribution, so it is ranked by its features until it has data. A zero row still receives gradient
    (the layer it feeds multiplies it by non-zero weights), so it learns once the item appears in batches.
    """

    def __init__(self, n_items: int, dim: int) -> None:
        """Args:
        n_items: initial rows (items with an embedding).
        dim: the embedding's length, > 0.
        """
        super().__init__()
        if dim <= 0 or n_items < 0:
            raise ValueError("ItemEmbedding needs dim > 0 and n_items >= 0")
        self.dim = int(dim)
        self.weight = nn.Parameter(torch.zeros(int(n_items), self.dim))

    @property
    def n_items(self) -> int:
        """The number of items with a row."""
        return int(self.weight.shape[0])

    def grow(self, n_items: int) -> None:
        """Extend to ``n_items`` rows with zero rows; existing rows keep their values, fewer rows is an error.

        The parameter is replaced by a larger tensor, so an optimizer built over the old one must be rebuilt
        (or given the new parameter) after growing; its state for the old rows can be copied over.
        """
        if n_items < self.n_items:
            raise ValueError(f"cannot shrink the embedding from {self.n_items} to {n_items} rows")
        if n_items == self.n_items:
            return
        extra = torch.zeros(
            n_items - self.n_items, self.dim, dtype=self.weight.dtype, device=self.weight.device
        )
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), extra]))

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``indices`` (any shape, each ≥ 0), shape ``indices.shape + (dim,)``; zeros past the
        last row.

        The lookup is ``F.embedding``, whose backward keeps only the indices: memory for one batch does not
        depend on the number of rows (the gradient itself is a dense tensor the size of the table).
        """
        indices = indices.long()
        if self.n_items == 0:
            return torch.zeros(*indices.shape, self.dim, dtype=self.weight.dtype, device=self.weight.device)
        known = indices < self.n_items
        vectors = F.embedding(indices.clamp(0, self.n_items - 1), self.weight)
        return vectors * known.unsqueeze(-1).to(vectors.dtype)
