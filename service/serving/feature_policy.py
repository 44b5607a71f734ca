"""Serving a feature-network model (issue 15): any item is scored by its features, so items imported after
the model was trained are servable as soon as the catalogue snapshot holds them, with no retrain.

A model version's checkpoint decodes to a :class:`FeatureModel`: the NumPy network
(:class:`agent.item_inference.NumpyFeatureQNetwork`) and the :class:`FeatureSpec` it was trained with
(saved in the checkpoint's metadata under :data:`METADATA_KEY`). Bound to a catalogue snapshot it becomes a
:class:`FeatureNetwork`: the item feature matrix of that catalogue, computed with the model's own spec (so
a new item is scaled exactly as the training items were), and the cached item vectors. A
:class:`~service.serving.policy_store.ServingPolicy` holds the bound network in place of a fixed-head
NumPy network; :meth:`FeatureNetwork.bind` follows the catalogue as it grows, computing vectors
only for the new (or re-imported) items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.item_inference import (
    CHECKPOINT_FORMAT,
    RETRIEVE_MIN,
    RETRIEVE_PER_K,
    CatalogueScorer,
    NumpyFeatureQNetwork,
)
from service.errors import ModelInvalidError, ModelWidthError
from service.ingest.catalogue import Catalogue
from service.ingest.item_features import FeatureSpec, feature_matrix
from service.store.shape import StateWidth

METADATA_KEY = "item_features"
"""The checkpoint metadata key holding :meth:`FeatureSpec.to_json` (written by the trainer)."""

PROBE_ITEMS_SEED = 1
"""Seed of the random probe item (fixed, as model_check.PROBE_SEED: a version passes or fails the same way
on every replica)."""


_last_features: tuple[FeatureSpec, Catalogue, np.ndarray] | None = None


def catalogue_features(spec: FeatureSpec, catalogue: Catalogue) -> np.ndarray:
    """The item features of ``catalogue`` under ``spec`` (read-only float32 (n, F)); ValueError when the
    snapshot was loaded without attributes.

    The last result is kept: the trainer publishes new weights of the same model (same spec) over the
    same snapshot every few seconds, and the features do not depend on the weights (at 100,000 items
    they take a fraction of a second of Python, which would hold the GIL against requests each time).
    """
    global _last_features
    last = _last_features
    if last is not None and last[1] is catalogue and last[0] == spec:
        return last[2]
    if catalogue.attributes is None:
        raise ValueError("the catalogue snapshot was loaded without item attributes")
    features = feature_matrix(spec, catalogue.attributes)
    features.setflags(write=False)
    _last_features = (spec, catalogue, features)
    return features


def is_feature_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded checkpoint dict is an item-agent (feature network) checkpoint."""
    return isinstance(checkpoint, dict) and checkpoint.get("format") == CHECKPOINT_FORMAT


@dataclass(frozen=True)
class FeatureModel:
    """A decoded feature-network model version, not bound to any catalogue yet."""

    network: NumpyFeatureQNetwork
    spec: FeatureSpec

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> FeatureModel:
        """The model of a loaded item-agent checkpoint; ValueError when its parts do not fit together."""
        network, metadata = NumpyFeatureQNetwork.from_checkpoint_dict(checkpoint)
        return cls.from_network(network, metadata)

    @classmethod
    def from_network(cls, network: NumpyFeatureQNetwork, metadata: dict[str, Any]) -> FeatureModel:
        """The model of NumPy weights and an agent's metadata: what an in-process trainer publishes
        (``NumpyFeatureQNetwork(agent.online.state_dict())``, ``agent.metadata``) without a checkpoint."""
        if METADATA_KEY not in metadata:
            raise ValueError(f"the checkpoint's metadata has no {METADATA_KEY!r} (the item feature spec)")
        spec = FeatureSpec.from_json(metadata[METADATA_KEY])
        if spec.width != network.item_feature_dim:
            raise ValueError(
                f"the feature spec has {spec.width} features but the network takes {network.item_feature_dim}"
            )
        return cls(network, spec)

    @property
    def state_dim(self) -> int:
        """The state width the model takes."""
        return self.network.state_dim

    def bind(self, catalogue: Catalogue) -> FeatureNetwork:
        """This model over ``catalogue``'s items; ValueError when the snapshot has no attributes."""
        return FeatureNetwork(self, CatalogueScorer(self.network, catalogue_features(self.spec, catalogue)))

    def probe_network(self) -> FeatureNetwork:
        """This model over two probe items: the average item (all features 0, the training mean after
        scaling) and a seeded uniform one in [-1, 1], to check the weights without a catalogue."""
        rng = np.random.default_rng(PROBE_ITEMS_SEED)
        width = self.spec.width
        features = np.stack([np.zeros(width), rng.uniform(-1.0, 1.0, width)]).astype(np.float32)
        return FeatureNetwork(self, CatalogueScorer(self.network, features))


class FeatureNetwork:
    """A :class:`FeatureModel` bound to a catalogue: the ``network`` of a feature ServingPolicy.

    Immutable. ``n_actions`` is the bound catalogue's size and :meth:`q_values` has the fixed-head
    NumPy network's signature (exact, O(n) per state: for probes, shadows and evaluation), so code that
    scores every item works unchanged; ``/act`` uses :attr:`scorer` (retrieval, then exact scoring).
    """

    def __init__(self, model: FeatureModel, scorer: CatalogueScorer) -> None:
        self.model = model
        self.scorer = scorer
        self.state_dim = model.state_dim
        self.n_actions = len(scorer)

    @staticmethod
    def retrieve_count(k: int) -> int:
        """R, the items retrieved by ⟨u, v_a⟩ for exact scoring when ``k`` are ranked: max(100, 10·k)."""
        return max(RETRIEVE_MIN, RETRIEVE_PER_K * k)

    def q_values(self, states: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Exact Q (B, n) of every bound item; −∞ where ``masks`` is False."""
        return self.scorer.q_values(states, masks)

    def bind(self, catalogue: Catalogue) -> FeatureNetwork:
        """The same model over a changed catalogue (grown, re-imported attributes): item vectors are
        computed for new and changed items only. ValueError when the snapshot has no attributes."""
        features = catalogue_features(self.model.spec, catalogue)
        return FeatureNetwork(self.model, self.scorer.with_features(features))


def validate_feature_model(
    model: FeatureModel, model_version: int, width: StateWidth, active: np.ndarray | None
) -> FeatureModel:
    """The checks of model_check.validate_checkpoint for a feature model: the state width, at least one
    active item (any item is servable by its features), and finite Q-values on the probe states and
    items. Raises :class:`ModelInvalidError` (:class:`ModelWidthError`) with a one-line reason."""
    from service.serving.model_check import probe_problem  # (it imports the policy store, which imports us)

    if width.problem is None and width.dim is not None and model.state_dim != width.dim:
        raise ModelWidthError(
            f"model version {model_version} takes {model.state_dim} features but {width.origin}",
            model.state_dim,
            field="version",
        )
    if active is not None and not active.any():
        raise ModelInvalidError(
            f"model version {model_version} has no active item to serve: activate one", field="version"
        )
    problem = probe_problem(model.probe_network(), model_version)
    if problem is not None:
        raise ModelInvalidError(problem, field="version")
    return model
