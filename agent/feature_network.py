"""A Q-network over (state features, item features): Q(s, a) = f(s, x_a), for open catalogues (issue 15).

The fixed-head network (:mod:`agent.networks`) has one output per item: a new item needs new weights, and
the dueling head costs O(n²). Here an item is an input, not an output, so the network's weights do not
depend on the catalogue size and a new item is scored as soon as its features are known.

Architecture, from the two anchors:

- ReAgent's Parametric DQN scores a (state, action-features) pair with one MLP over their concatenation:
  exact and expressive, but every candidate costs a full MLP pass, too slow to rank 100,000 items.
- Pearl's two-tower Q-value network encodes the state and the action in separate towers and combines the
  two encodings in a small interaction network.

We keep both towers and give the combination two parts:

    u = state_tower(s),  v_a = item_tower([x_a, e_a]),  Q(s, a) = ⟨u, v_a⟩ + cross([u, v_a, u ⊙ v_a])

with e_a the optional learned per-item embedding (zeros for an item without data, see
:mod:`agent.item_table`). The dot product is part of Q and is trained with it, so it can *retrieve*: the item
vectors v_a do not depend on the state and can be computed once per catalogue, and the top items by ⟨u, v_a⟩
come from one matrix product (:meth:`FeatureQNetwork.retrieve`). The cross network is Pearl's interaction
MLP (with the elementwise product as an extra input, so it need not learn a multiplication) and corrects the
dot product where a bilinear score is not enough; it runs only on the K candidates being scored (a request's
candidate list, an allowed subset in a loss, or the retrieved items). No dueling stream: a state value V(s)
shifts every Q(s, ·) equally and changes no argmax, and the dueling mean over all actions is O(n) per state
and undefined for an open catalogue.

The signature every item-scoring network follows is :class:`ItemQNetwork`: a user's own ``torch.nn.Module``
with that ``forward`` can be used in place of :class:`FeatureQNetwork`, and trains through autograd (the
built-in network has no hand-written backward pass either).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from agent.item_table import ItemEmbedding, ItemTable


@runtime_checkable
class ItemQNetwork(Protocol):
    """What a Q-network over item features must provide: a callable module with parameters.

    ``network(states, item_indices, item_features)`` with

    - ``states``: float32 (B, S), one state per row;
    - ``item_indices``: int64 (B, K), the items to score for each state (rows of an :class:`ItemTable`;
      padding slots hold a valid index and their scores are ignored by the caller);
    - ``item_features``: float32 (B, K, F), ``table.gather(item_indices)``, so a network that uses only
      features never needs the table;

    returns Q(s_b, item_indices[b, k]) as float32 (B, K). The result must be differentiable with respect to
    ``parameters()`` through autograd, and each row b must depend only on row b of the inputs (losses and
    the service score different candidate sets per state in one call).
    """

    def __call__(
        self, states: torch.Tensor, item_indices: torch.Tensor, item_features: torch.Tensor
    ) -> torch.Tensor:
        """Q-values of the given items, (B, K)."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The trainable parameters (``torch.nn.Module.parameters``)."""
        ...


def mlp(input_dim: int, hidden_sizes: Sequence[int], output_dim: int) -> nn.Sequential:
    """Linear layers with ReLU between them, the last one linear (no activation on the output)."""
    layers: list[nn.Module] = []
    width = input_dim
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, int(hidden)), nn.ReLU()]
        width = int(hidden)
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


class FeatureQNetwork(nn.Module):
    """Two towers, a dot product and a cross network: Q(s, a) = ⟨u, v_a⟩ + cross([u, v_a, u ⊙ v_a])."""

    def __init__(
        self,
        state_dim: int,
        item_feature_dim: int,
        *,
        embedding_dim: int = 64,
        state_hidden: Sequence[int] = (256, 256),
        item_hidden: Sequence[int] = (128,),
        cross_hidden: Sequence[int] = (64,),
        n_item_embeddings: int = 0,
        item_embedding_dim: int = 0,
    ) -> None:
        """Args:
        state_dim: S, the length of a state.
        item_feature_dim: F, the length of an item's feature vector (:attr:`ItemTable.feature_dim`).
        embedding_dim: D, the length of u and v_a. Choice: 64, a common two-tower width, small enough
            that retrieval over 100,000 items is one (100,000 × 64) matrix product.
        state_hidden: hidden widths of the state tower. Choice: (256, 256), the fixed-head network's trunk
            (``DQfDConfig.hidden_sizes``), so both networks see states through the same capacity.
        item_hidden: hidden widths of the item tower. Choice: one layer of 128; item features are few
            (a handful of catalogue columns).
        cross_hidden: hidden widths of the cross network. Choice: one layer of 64, "small" because it runs
            on every scored candidate.
        n_item_embeddings: initial rows of the learned per-item embedding (grown by :meth:`grow_items`).
        item_embedding_dim: length of the learned per-item embedding; 0 (default) uses features only.
        """
        super().__init__()
        if state_dim < 1 or item_feature_dim < 0 or embedding_dim < 1 or item_embedding_dim < 0:
            raise ValueError("state_dim and embedding_dim must be >= 1, the feature dimensions >= 0")
        if item_feature_dim + item_embedding_dim == 0:
            raise ValueError("an item needs features or a learned embedding (both dimensions are 0)")
        self.state_dim = int(state_dim)
        self.item_feature_dim = int(item_feature_dim)
        self.embedding_dim = int(embedding_dim)
        self.state_tower = mlp(self.state_dim, state_hidden, self.embedding_dim)
        self.item_tower = mlp(
            self.item_feature_dim + int(item_embedding_dim), item_hidden, self.embedding_dim
        )
        self.cross = mlp(3 * self.embedding_dim, cross_hidden, 1)
        self.item_embedding: ItemEmbedding | None = (
            ItemEmbedding(n_item_embeddings, item_embedding_dim) if item_embedding_dim > 0 else None
        )

    def grow_items(self, n_items: int) -> None:
        """Give items up to ``n_items`` a learned embedding row (zeros); no-op without embeddings.

        Not needed to *score* new items (an index past the embedding reads zeros, the value a grown row
        starts with); needed before training their embeddings. See :meth:`ItemEmbedding.grow` about the
        optimizer.
        """
        if self.item_embedding is not None:
            self.item_embedding.grow(n_items)

    def state_vectors(self, states: torch.Tensor) -> torch.Tensor:
        """u = state_tower(s), shape (B, D)."""
        return self.state_tower(states)

    def item_vectors(self, item_indices: torch.Tensor, item_features: torch.Tensor) -> torch.Tensor:
        """v_a = item_tower([x_a, e_a]), shape ``item_indices.shape + (D,)``; independent of the state."""
        inputs = item_features
        if self.item_embedding is not None:
            inputs = torch.cat([item_features, self.item_embedding(item_indices)], dim=-1)
        return self.item_tower(inputs)

    def score(self, state_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Q from the towers' outputs: u (B, D) and v (B, K, D) give (B, K)."""
        u = state_vectors.unsqueeze(1).expand_as(item_vectors)
        cross = self.cross(torch.cat([u, item_vectors, u * item_vectors], dim=-1)).squeeze(-1)
        return (u * item_vectors).sum(dim=-1) + cross

    def forward(
        self, states: torch.Tensor, item_indices: torch.Tensor, item_features: torch.Tensor
    ) -> torch.Tensor:
        """Q(s_b, item_indices[b, k]), shape (B, K): the :class:`ItemQNetwork` signature."""
        return self.score(self.state_vectors(states), self.item_vectors(item_indices, item_features))

    def retrieve(self, states: torch.Tensor, table: ItemTable, k: int) -> torch.Tensor:
        """The k items with the largest ⟨u, v_a⟩ over the whole table, int64 (B, min(k, n)), best first.

        An approximation of the top k by Q (the cross term is left out); score the result with
        :meth:`forward` for exact Q-values of the retrieved items. Item vectors are computed here for the
        whole table; a server would cache them per model version and catalogue size.
        """
        with torch.no_grad():
            indices = torch.arange(len(table))
            items = self.item_vectors(indices, table.features)
            scores = self.state_vectors(states) @ items.t()
            return scores.topk(min(int(k), len(table)), dim=1).indices


def score_items(
    network: ItemQNetwork, states: torch.Tensor, item_indices: torch.Tensor, table: ItemTable
) -> torch.Tensor:
    """Q-values of the given items under any :class:`ItemQNetwork`, (B, K): gathers their features first."""
    return network(states, item_indices, table.gather(item_indices))
