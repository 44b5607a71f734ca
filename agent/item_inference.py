"""A NumPy copy of :class:`agent.feature_network.FeatureQNetwork` for serving, and its catalogue index.

As :mod:`agent.inference` does for the fixed-head network, the forward pass is a few matrix products in
NumPy (eager PyTorch spends most of a batch-of-one pass in dispatch), and every object is immutable, so a
server swaps a new one in with one reference assignment while requests keep reading the old one.

:class:`NumpyFeatureQNetwork` holds the weights. :class:`CatalogueScorer` binds them to a catalogue's item
features and caches the item vectors v_a = item_tower([x_a, e_a]) once per (model, catalogue): they do not
depend on the state. A request then costs one state-tower pass, and either

- exact Q-values for a candidate list (the cross network runs on the candidates only), or
- retrieval over the whole catalogue by ⟨u, v_a⟩ (one (n × D) matrix-vector product), exact scoring of
  the top R retrieved items, and the top k of those by exact Q (:meth:`CatalogueScorer.top_k`). The cross
  term is left out of retrieval only, so the result is exact whenever the exact top k is among the top R
  by dot product; ``recall_at_k`` measures how often that holds.

Checkpoints: :data:`CHECKPOINT_FORMAT` is the format :class:`agent.item_dqfd.ItemDQfDAgent` saves; this
module reads its ``online`` state dict and ``metadata`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np
import torch

CHECKPOINT_FORMAT = "item-dqfd-agent"
"""The ``format`` field of an :class:`agent.item_dqfd.ItemDQfDAgent` checkpoint (the fixed-head agent's is
``"dqfd-agent"``); equal to ``agent.item_dqfd.CHECKPOINT_FORMAT`` by test, kept here so that serving does
not import the trainer."""

RETRIEVE_MIN = 100
RETRIEVE_PER_K = 10
"""Items retrieved for exact scoring: max(RETRIEVE_MIN, RETRIEVE_PER_K · k). Exact scoring of 100 items
costs less than the retrieval product itself at 100,000 items, and recall@10 measured on a random and a
trained network is in benchmarks/results/serving_catalogue.md."""

SCORE_CHUNK = 8192
"""Items per exact-scoring block: bounds the temporary (chunk × cross width) arrays to a few MB."""


def _array(state_dict: Mapping[str, Any], name: str) -> np.ndarray:
    value = state_dict[name]
    value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    # Always a copy: ``Tensor.numpy()`` shares the live parameter's memory, which the optimizer keeps
    # updating in place; a served policy must not change under its readers.
    return np.array(value, dtype=np.float32, order="C", copy=True)


def _frozen(array: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(array, dtype=np.float32)
    out.setflags(write=False)
    return out


def _mlp(state_dict: Mapping[str, Any], prefix: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The (W transposed, b) pairs of an ``nn.Sequential`` of Linear/ReLU saved under ``prefix``."""
    indices = sorted(
        int(k[len(prefix) + 1 :].split(".")[0])
        for k in state_dict
        if k.startswith(prefix + ".") and k.endswith(".weight")
    )
    if not indices:
        raise ValueError(f"the state dict has no {prefix} layers")
    return tuple(
        (
            _frozen(_array(state_dict, f"{prefix}.{i}.weight").T),
            _frozen(_array(state_dict, f"{prefix}.{i}.bias")),
        )
        for i in indices
    )


def _forward(layers: tuple[tuple[np.ndarray, np.ndarray], ...], x: np.ndarray) -> np.ndarray:
    """Linear layers with ReLU between them, none after the last (:func:`agent.feature_network.mlp`)."""
    h = x
    last = len(layers) - 1
    for i, (w, b) in enumerate(layers):
        h = h @ w
        h += b
        if i < last:
            np.maximum(h, 0.0, out=h)
    return h


class NumpyFeatureQNetwork:
    """Immutable Q(s, a) = ⟨u, v_a⟩ + cross([u, v_a, u ⊙ v_a]) evaluated with NumPy (float32)."""

    def __init__(self, state_dict: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> None:
        """Args:
        state_dict: a :class:`~agent.feature_network.FeatureQNetwork`'s ``state_dict()``.
        config: optional network config (``embedding_dim``, ``state_hidden``, ``item_hidden``,
            ``cross_hidden``, ``item_embedding_dim``); every size is read off the weights, and a config
            that disagrees with them is an error (a checkpoint whose parts do not match).
        """
        self.state_layers = _mlp(state_dict, "state_tower")
        self.item_layers = _mlp(state_dict, "item_tower")
        cross = _mlp(state_dict, "cross")
        self.embedding_dim = int(self.state_layers[-1][0].shape[1])
        d = self.embedding_dim
        w1, b1 = cross[0]
        if w1.shape[0] != 3 * d or self.item_layers[-1][0].shape[1] != d:
            raise ValueError("the towers' output widths and the cross network's input do not match")
        # The cross network's first layer acts on [u, v, u ⊙ v]; split by block so that for one state
        # [u, v, u ⊙ v] @ W1 = v @ (W1_v + diag(u) W1_uv) + u @ W1_u: one (K × D)·(D × H) product per
        # state and no (K × 3D) concatenation.
        self.cross_u, self.cross_v, self.cross_uv = (_frozen(w1[i * d : (i + 1) * d]) for i in range(3))
        self.cross_b1 = b1
        self.cross_rest = cross[1:]
        if "item_embedding.weight" in state_dict:
            self.item_embeddings = _frozen(_array(state_dict, "item_embedding.weight"))
        else:
            self.item_embeddings = np.zeros((0, 0), dtype=np.float32)
        self.item_embedding_dim = int(self.item_embeddings.shape[1])
        self.state_dim = int(self.state_layers[0][0].shape[0])
        self.item_feature_dim = int(self.item_layers[0][0].shape[0]) - self.item_embedding_dim
        if config is not None:
            self._check(config)

    def _check(self, config: Mapping[str, Any]) -> None:
        found = {
            "embedding_dim": self.embedding_dim,
            "state_hidden": tuple(int(w.shape[1]) for w, _ in self.state_layers[:-1]),
            "item_hidden": tuple(int(w.shape[1]) for w, _ in self.item_layers[:-1]),
            "cross_hidden": (int(self.cross_b1.shape[0]), *(int(w.shape[1]) for w, _ in self.cross_rest[:-1]))
            if self.cross_rest
            else (),
            "item_embedding_dim": self.item_embedding_dim,
        }
        for name, value in found.items():
            if name in config and tuple(np.atleast_1d(config[name]).tolist()) != tuple(
                np.atleast_1d(value).tolist()
            ):
                raise ValueError(f"network config {name}={config[name]!r} but the weights have {value!r}")

    @property
    def n_item_embeddings(self) -> int:
        """Items with a learned embedding row (the rest are scored by their features alone)."""
        return int(self.item_embeddings.shape[0])

    @classmethod
    def from_checkpoint(cls, source: str | BinaryIO | Any) -> tuple[NumpyFeatureQNetwork, dict[str, Any]]:
        """The online network of an item-agent checkpoint and the checkpoint's ``metadata`` dict."""
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
        return cls.from_checkpoint_dict(checkpoint)

    @classmethod
    def from_checkpoint_dict(
        cls, checkpoint: Mapping[str, Any]
    ) -> tuple[NumpyFeatureQNetwork, dict[str, Any]]:
        """As :meth:`from_checkpoint`, from the loaded dict."""
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not an item-agent checkpoint (format {checkpoint.get('format')!r})")
        if checkpoint.get("custom_network"):
            raise ValueError(
                "the checkpoint was trained with a custom network: NumPy serving evaluates only the built-in "
                "FeatureQNetwork"
            )
        config = checkpoint.get("network_config")
        network = cls(checkpoint["online"], config if isinstance(config, Mapping) else None)
        return network, dict(checkpoint.get("metadata") or {})

    def state_vectors(self, states: np.ndarray) -> np.ndarray:
        """u = state_tower(s), float32 (B, D)."""
        s = np.asarray(states, dtype=np.float32)
        return _forward(self.state_layers, s[None, :] if s.ndim == 1 else s)

    def item_vectors(self, features: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
        """v_a = item_tower([x_a, e_a]), float32 (n, D), for items with ``features`` (n, F) and catalogue
        ``indices`` (default 0..n-1); e_a is zero for an index without an embedding row."""
        x = np.asarray(features, dtype=np.float32).reshape(-1, self.item_feature_dim)
        if self.item_embedding_dim:
            idx = np.arange(x.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64)
            e = np.zeros((x.shape[0], self.item_embedding_dim), dtype=np.float32)
            known = idx < self.n_item_embeddings
            e[known] = self.item_embeddings[idx[known]]
            x = np.concatenate([x, e], axis=1)
        return _forward(self.item_layers, x)

    def scores(self, u: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
        """Exact Q of one state (u, shape (D,)) for items with vectors (K, D): float32 (K,)."""
        h = item_vectors @ (self.cross_v + u[:, None] * self.cross_uv)
        h += u @ self.cross_u + self.cross_b1
        if self.cross_rest:  # else the first layer is the last: no ReLU after it
            np.maximum(h, 0.0, out=h)
            h = _forward(self.cross_rest, h)
        return item_vectors @ u + h[:, 0]


class CatalogueScorer:
    """A :class:`NumpyFeatureQNetwork` bound to a catalogue's item features, with the item vectors cached.

    Immutable: :meth:`with_features` returns a new scorer for a changed or grown catalogue, computing
    vectors only for the rows whose features changed and for the new ones.
    """

    def __init__(
        self, network: NumpyFeatureQNetwork, features: np.ndarray, vectors: np.ndarray | None = None
    ):
        """Args:
        network: the weights.
        features: float32 (n, F), row i the features of catalogue index i.
        vectors: their item vectors when already computed (:meth:`with_features`); else computed here.
        """
        self.network = network
        self.features = _frozen(np.asarray(features, dtype=np.float32).reshape(-1, network.item_feature_dim))
        if not np.isfinite(self.features).all():
            raise ValueError("item features must be finite")
        computed = network.item_vectors(self.features) if vectors is None else vectors
        self.vectors = _frozen(computed)

    def __len__(self) -> int:
        """The number of items (catalogue indices 0..n-1)."""
        return int(self.features.shape[0])

    def with_features(self, features: np.ndarray) -> CatalogueScorer:
        """The scorer of a catalogue with these features (n' ≥ 0 rows); unchanged rows keep their vectors."""
        new = np.asarray(features, dtype=np.float32).reshape(-1, self.network.item_feature_dim)
        n_old = min(len(self), new.shape[0])
        vectors = np.empty((new.shape[0], self.network.embedding_dim), dtype=np.float32)
        vectors[:n_old] = self.vectors[:n_old]
        stale = np.flatnonzero((new[:n_old] != self.features[:n_old]).any(axis=1))
        redo = np.concatenate([stale, np.arange(n_old, new.shape[0])])
        if redo.size:
            vectors[redo] = self.network.item_vectors(new[redo], redo)
        return CatalogueScorer(self.network, new, vectors)

    def exact(self, u: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Exact Q (float32, len(indices)) of the items ``indices`` for one state vector u (D,)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size <= SCORE_CHUNK:
            return self.network.scores(u, self.vectors[idx])
        return np.concatenate(
            [
                self.network.scores(u, self.vectors[idx[i : i + SCORE_CHUNK]])
                for i in range(0, idx.size, SCORE_CHUNK)
            ]
        )

    def q_values(self, states: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Exact Q (B, n) over the whole catalogue, −∞ where ``masks`` (B, n) is False (as
        :meth:`agent.inference.NumpyQNetwork.q_values`; O(n) per state: for evaluation and checks, not
        for requests)."""
        u = self.network.state_vectors(states)
        everything = np.arange(len(self))
        q = np.stack([self.exact(row, everything) for row in u]) if len(self) else np.zeros((u.shape[0], 0))
        if masks is not None:
            q = np.where(np.asarray(masks, dtype=bool).reshape(q.shape), q, np.float32(-np.inf))
        return q.astype(np.float32, copy=False)

    def retrieve(self, u: np.ndarray, r: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """The (at most) r allowed items with the largest ⟨u, v_a⟩, int64, in no particular order.

        ``allowed``: bool (n,) or None (every item). With r at least the number of allowed items, all of
        them are returned (exact scoring of the whole allowed set).
        """
        dots = self.vectors @ u
        if allowed is not None:
            candidates = np.flatnonzero(allowed)
            if candidates.size <= r:
                return candidates
            dots = np.where(allowed, dots, np.float32(-np.inf))
        elif len(self) <= r:
            return np.arange(len(self))
        return np.argpartition(dots, len(dots) - r)[len(dots) - r :]

    def top_k(
        self, state: np.ndarray, k: int, allowed: np.ndarray | None = None, retrieve: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best k allowed items and their exact Q, best first (ties: lower index first).

        ``retrieve``: items kept by retrieval before exact scoring (default max(RETRIEVE_MIN,
        RETRIEVE_PER_K · k)); 0 scores every allowed item exactly.
        """
        u = self.network.state_vectors(state)[0]
        r = max(RETRIEVE_MIN, RETRIEVE_PER_K * k) if retrieve is None else retrieve
        pool = self.retrieve(u, r if r > 0 else len(self), allowed)
        pool.sort()  # ties then break towards the lower index, whatever order retrieval returned
        q = self.exact(u, pool)
        order = np.argsort(-q, kind="stable")[:k]
        return pool[order], q[order]


def recall_at_k(scorer: CatalogueScorer, states: np.ndarray, k: int, retrieve: int | None = None) -> float:
    """Mean share of the exact top k (whole catalogue) that retrieval then exact scoring also returns."""
    hits = 0
    for state in np.asarray(states, dtype=np.float32):
        exact, _ = scorer.top_k(state, k, retrieve=0)
        approx, _ = scorer.top_k(state, k, retrieve=retrieve)
        hits += len(set(exact.tolist()) & set(approx.tolist()))
    return hits / (k * len(states))
