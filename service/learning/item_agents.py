"""The learner's door to the feature-network agent (issue 15): :class:`agent.item_dqfd.ItemDQfDAgent` over
the catalogue's item features.

Which network a job builds is ``DQFD_NETWORK`` (:func:`feature_spec`): ``auto`` takes the feature network
when the catalogue has a feature column (service.ingest.item_features), ``fixed`` the paper's one output
per item, ``feature`` insists on features. The item agent's table is built from the catalogue's attributes
scaled by a :class:`FeatureSpec` fitted once, on the catalogue of the job, and saved in the checkpoint's
metadata (``item_features``); a restored agent scales the current catalogue, grown or not, with that saved
spec, as serving does (service.serving.feature_policy), so an item means the same to learner and server.

Actions are catalogue indices (``Item.action_index``, append-only), equal to the table rows. Allowed sets
reach the agent compactly (:class:`agent.set_losses.AllowedSet`): a logged row's ``allowed_items`` as
candidates, a live decision's stored mask as the set it lists (the catalogue size the decision saw, and
its allowed or its excluded items).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.errors import InvalidInputError
from service.ingest.catalogue import Catalogue, load_catalogue
from service.ingest.item_features import FeatureSpec, feature_matrix, fit_feature_spec, parse_feature_names
from service.serving.feature_policy import METADATA_KEY, FeatureModel
from service.settings import Settings
from service.store.features import StoredMask
from service.store.models import Item

SAMPLED_LOSS_ITEMS = 64
"""Past :data:`EXACT_LOSS_ITEMS`, the items per row each maximum runs over (a_E, the hard items retrieved
by the online network, a uniform sample): the cost of an update stops growing with the catalogue. 64, the
agent benchmark's setting (benchmarks/results/item_updates.md: the same updates/s at 1k, 10k and 100k
items); docs/algorithm.md, "Sampled loss items in the service"."""

EXACT_LOSS_ITEMS = SAMPLED_LOSS_ITEMS
"""Up to this many catalogue items, J_E's max and the double-DQN argmax run over every allowed item (the
paper's losses, exactly): a sampled set would hold every item anyway, and the exact update is then no
slower (measured 36 exact vs 24 sampled updates/s at 64 items, 14 vs 24 at 128)."""


def is_item_agent(agent: Any) -> bool:
    """Whether ``agent`` is the feature-network agent (else the fixed-head :class:`agent.DQfDAgent`)."""
    from agent.item_dqfd import ItemDQfDAgent

    return isinstance(agent, ItemDQfDAgent)


def feature_spec(settings: Settings, catalogue: Catalogue) -> FeatureSpec | None:
    """The spec of the feature network a new job builds over ``catalogue``, or None for the fixed head.

    Raises :class:`InvalidInputError` for ``DQFD_NETWORK=feature`` without a feature column, and for a
    ``DQFD_ITEM_FEATURES`` name that is not a numeric column (service.ingest.item_features).
    """
    if settings.network == "fixed":
        return None
    if catalogue.attributes is None:
        raise ValueError("the catalogue was loaded without item attributes")
    spec = fit_feature_spec(catalogue.attributes, parse_feature_names(settings.item_features))
    if spec.width:
        return spec
    if settings.network == "feature":
        raise InvalidInputError(
            "DQFD_NETWORK=feature needs an item feature, but no column of items.csv holds numbers or "
            "booleans: add one, or use DQFD_NETWORK=auto (or fixed) for the one-output-per-item network",
            field="DQFD_NETWORK",
        )
    return None


def loss_items(n_items: int) -> int | None:
    """``ItemNetworkConfig.loss_items`` for a catalogue of ``n_items``: exact (None) up to
    :data:`EXACT_LOSS_ITEMS`, else :data:`SAMPLED_LOSS_ITEMS`."""
    return None if n_items <= EXACT_LOSS_ITEMS else SAMPLED_LOSS_ITEMS


def network_config(settings: Settings, n_items: int) -> Any:
    """The item network of a new agent: ``ItemNetworkConfig``'s defaults, the state tower as wide as
    ``DQFD_HIDDEN_SIZES`` when set (the fixed head's trunk, the default's own reference), the learned
    embedding of ``DQFD_ITEM_EMBEDDING_DIM``, and the loss-items rule."""
    from agent.item_dqfd import ItemNetworkConfig

    overrides: dict[str, Any] = {"item_embedding_dim": settings.item_embedding_dim}
    if settings.hidden_sizes is not None:
        overrides["state_hidden"] = tuple(settings.hidden_sizes)
    return ItemNetworkConfig(loss_items=loss_items(n_items), **overrides)


def apply_loss_rule(agent: Any) -> None:
    """Put the agent's loss maxima on the rule for its current catalogue (a restored agent's saved
    choice, or a catalogue grown past :data:`EXACT_LOSS_ITEMS`)."""
    config = agent.network_config
    config.loss_items = loss_items(len(agent.items))
    if config.loss_items is not None:  # ItemNetworkConfig's rule: a_E and the hard items fit in the set
        config.hard_items = min(config.hard_items, config.loss_items - 1)


def _table(spec: FeatureSpec, catalogue: Catalogue) -> Any:
    from agent.item_table import ItemTable

    if catalogue.attributes is None:
        raise ValueError("the catalogue was loaded without item attributes")
    return ItemTable(spec.width, feature_matrix(spec, catalogue.attributes))


def new_item_agent(
    settings: Settings, catalogue: Catalogue, state_dim: int, spec: FeatureSpec, config: Any
) -> Any:
    """A fresh item agent over ``catalogue``'s features under ``spec`` (saved in its metadata)."""
    from agent.item_dqfd import ItemDQfDAgent

    agent = ItemDQfDAgent(
        state_dim,
        _table(spec, catalogue),
        config=config,
        network_config=network_config(settings, catalogue.n_actions),
        seed=settings.seed,
    )
    agent.metadata[METADATA_KEY] = spec.to_json()
    return agent


def spec_of(agent: Any) -> FeatureSpec:
    """The feature spec an item agent was built with (its checkpoint metadata)."""
    return FeatureSpec.from_json(agent.metadata[METADATA_KEY])


def load_item_agent(checkpoint: dict[str, Any], catalogue: Catalogue) -> Any:
    """An item agent restored from a checkpoint read with ``torch.load(weights_only=True)`` over
    ``catalogue`` (which may have grown since: the new items' features are scaled with the saved spec,
    and their embedding rows start at zero)."""
    from agent.item_dqfd import ItemDQfDAgent

    metadata = dict(checkpoint.get("metadata") or {})
    if METADATA_KEY not in metadata:
        raise ValueError(f"the checkpoint's metadata has no {METADATA_KEY!r} (the item feature spec)")
    spec = FeatureSpec.from_json(metadata[METADATA_KEY])
    agent = ItemDQfDAgent.from_checkpoint(checkpoint, _table(spec, catalogue))
    apply_loss_rule(agent)
    return agent


def feature_model(agent: Any) -> FeatureModel:
    """The served form of the agent's current weights (a NumPy copy, as a checkpoint would decode)."""
    from agent.item_inference import NumpyFeatureQNetwork

    network = NumpyFeatureQNetwork(agent.online.state_dict(), agent.network_config.to_dict())
    return FeatureModel.from_network(network, agent.metadata)


def follow_catalogue(agent: Any, session: Session) -> Catalogue | None:
    """Give the agent the items imported since its table was built (their features scaled with its spec):
    returns the grown catalogue, or None when nothing was added (one count query)."""
    known = len(agent.items)
    if int(session.scalar(select(func.count()).select_from(Item)) or 0) <= known:
        return None
    catalogue = load_catalogue(session)
    attributes = session.scalars(
        select(Item.attributes)
        .where(Item.action_index >= known, Item.action_index < catalogue.n_actions)
        .order_by(Item.action_index)
    ).all()
    agent.add_items(feature_matrix(spec_of(agent), list(attributes)))
    apply_loss_rule(agent)
    return catalogue


def compact_allowed(stored: StoredMask | np.ndarray | None, n_items: int | None = None) -> Any:
    """The :class:`AllowedSet` of a stored mask (None: the catalogue as it is).

    A :class:`StoredMask` (service.store.features) carries the catalogue size the decision saw, so its set
    is exact: its allowed items as candidates, or that catalogue less its exclusions. ``n_items``, the
    agent's table size, bounds it: a candidate list is sized to fit the table (a mask migrated from the
    dense format records a size rounded up to whole bytes; membership is unchanged), and items the table
    does not hold yet are cut, as the dense decoding over the agent's catalogue cuts them.

    A dense mask (a transition built without its stored form) becomes the smallest equal set, cut after
    its last allowed item, so it does not list the items past the decision's catalogue as exclusions.
    """
    from agent.item_replay import allowed_from_mask
    from agent.set_losses import AllowedSet

    if stored is None:
        return None
    if isinstance(stored, StoredMask):
        size = stored.n if n_items is None else min(stored.n, n_items)
        kept = stored.indices[stored.indices < size].tolist()
        if stored.excluded:
            return AllowedSet(size, exclusions=frozenset(kept))
        return AllowedSet(size, candidates=tuple(kept))
    allowed = np.flatnonzero(stored)
    return allowed_from_mask(np.asarray(stored[: int(allowed[-1]) + 1 if allowed.size else 0], dtype=bool))


def allowed_sets_of(agent: Any, t: Any) -> tuple[Any, Any]:
    """The allowed sets of the live transition ``t`` at its state and next state, from their stored
    compact form when ``t`` has one, else from its dense masks."""
    n_items = len(agent.items)
    current = t.allowed if getattr(t, "allowed", None) is not None else t.mask
    following = t.next_allowed if getattr(t, "next_allowed", None) is not None else t.next_mask
    return compact_allowed(current, n_items), compact_allowed(following, n_items)


def candidate_sets(n_items: int, allowed: Sequence[tuple[int, ...] | None]) -> list[Any]:
    """One allowed set per logged row: its ``allowed_items`` as candidates, None for every item."""
    from agent.set_losses import AllowedSet

    return [None if items is None else AllowedSet(n_items, candidates=items) for items in allowed]


def observe(agent: Any, t: Any) -> None:
    """Store the live transition ``t`` in the item agent's replay (its masks as compact allowed sets)."""
    current, following = allowed_sets_of(agent, t)
    agent.observe(
        t.state,
        t.action,
        t.reward,
        t.next_state,
        t.done,
        allowed=current,
        next_allowed=following,
    )


def add_live_demonstration(agent: Any, t: Any) -> None:
    """The live transition ``t`` as a one-step demonstration episode (live_demos): its row, then, unless
    it ended, its next state as the episode's final state-only slot (its action unused)."""
    state = np.asarray(t.state, dtype=np.float32)[None, :]
    current, following_set = allowed_sets_of(agent, t)
    if t.done:
        agent.add_demonstrations(state, [t.action], [t.reward], [True], allowed=[current])
        return
    following = np.asarray(t.next_state, dtype=np.float32)[None, :]
    agent.add_demonstrations(
        np.concatenate([state, following]),
        [t.action, t.action],
        [t.reward, 0.0],
        [False, False],
        episode_ids=[0, 0],
        allowed=[current, following_set],
    )
