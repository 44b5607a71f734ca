"""The learner's door to the agent library and torch: building, saving and restoring DQfD agents.

Serving decodes checkpoints itself (:func:`service.serving.policy_store.decode_checkpoint`, NumPy only on
the request path) and never imports this module."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

from service.ingest.catalogue import Catalogue
from service.learning import item_agents
from service.serving.feature_policy import FeatureModel, is_feature_checkpoint
from service.settings import Settings


def limit_torch_threads(n_threads: int) -> None:
    """Cap torch's intra-op threads: the networks are small, and extra threads only contend with serving
    (on 2 cores one thread measured several times faster per update than two)."""
    import torch

    if torch.get_num_threads() != n_threads:
        torch.set_num_threads(n_threads)


def agent_config(settings: Settings) -> Any:
    """A DQfDConfig with the paper defaults overridden by the settings (unknown keys are dropped)."""
    from agent import DQfDConfig

    names = {f.name for f in dataclasses.fields(DQfDConfig)}
    overrides = {k: v for k, v in settings.agent_config_overrides().items() if k in names}
    if "hidden_sizes" in overrides:
        overrides["hidden_sizes"] = tuple(overrides["hidden_sizes"])
    return DQfDConfig(**overrides)


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a DQfDConfig."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def new_agent(
    settings: Settings, n_actions: int, state_dim: int | None = None, catalogue: Catalogue | None = None
) -> Any:
    """A fresh DQfD agent for ``state_dim`` features (default: ``DQFD_STATE_DIM``; the trainer passes the
    width resolved by :func:`service.store.shape.resolve_state_dim`).

    With ``catalogue`` (loaded with its attributes) ``DQFD_NETWORK`` chooses the network
    (:func:`service.learning.item_agents.feature_spec`): the feature network over its items, or the fixed
    head of ``n_actions`` outputs. Without, always the fixed head.
    """
    from agent import DQfDAgent

    dim = settings.state_dim if state_dim is None else state_dim
    if dim is None:
        from service.errors import StateWidthUnknownError
        from service.store.shape import UNKNOWN

        raise StateWidthUnknownError(UNKNOWN, field="state_dim")
    spec = None if catalogue is None else item_agents.feature_spec(settings, catalogue)
    if spec is not None:
        return item_agents.new_item_agent(settings, catalogue, dim, spec, agent_config(settings))
    return DQfDAgent(dim, n_actions, config=agent_config(settings), seed=settings.seed)


def agent_to_bytes(agent: Any) -> bytes:
    """The agent's torch checkpoint as bytes (for the model-versions table)."""
    buffer = io.BytesIO()
    agent.save(buffer)
    return buffer.getvalue()


def agent_from_bytes(checkpoint: bytes, catalogue: Catalogue | None = None) -> Any:
    """A DQfD agent restored from checkpoint bytes (replay buffers start empty), by the checkpoint's
    ``format``: a fixed-head agent, or an item agent over ``catalogue`` (loaded with its attributes;
    required for one: its item features are the catalogue's, scaled with the checkpoint's saved spec).
    The bytes are read once (``torch.load``), then handed to the agent class the format names.

    Raises:
        ValueError: neither agent's checkpoint, a broken one, or an item agent's without ``catalogue``.
    """
    import torch

    from agent import DQfDAgent

    try:
        loaded = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for bad bytes
        raise ValueError(f"not a readable model checkpoint ({type(exc).__name__}: {exc})") from exc
    if not is_feature_checkpoint(loaded):
        return DQfDAgent.from_checkpoint(loaded)
    if catalogue is None:
        raise ValueError("an item-agent (feature network) checkpoint is loaded over a catalogue: pass it")
    return item_agents.load_item_agent(loaded, catalogue)


def n_items(agent: Any) -> int:
    """The items the agent knows: its outputs (fixed head) or its item table's rows (feature network)."""
    return len(agent.items) if item_agents.is_item_agent(agent) else int(agent.n_actions)


def serving_network(agent: Any) -> Any:
    """What a policy store publishes for the agent's current weights (a NumPy copy): the fixed head's
    ``NumpyQNetwork``, or the feature network's :class:`FeatureModel` (bound to the store's catalogue)."""
    return item_agents.feature_model(agent) if item_agents.is_item_agent(agent) else agent.numpy_policy()


def probe_network(agent: Any) -> Any:
    """The network :func:`service.serving.model_check.probe_problem` checks: the fixed head's NumPy
    copy, or the feature model over its two probe items."""
    network = serving_network(agent)
    return network.probe_network() if isinstance(network, FeatureModel) else network


def apply_bounds(agent: Any, settings: Settings) -> Any:
    """Give a loaded agent this deployment's replay guards (``max_abs_state`` / ``max_abs_reward``): a
    checkpoint keeps the config it was saved with, and one saved before the guards existed has none."""
    agent.config.max_abs_state = settings.max_abs_state
    agent.config.max_abs_reward = settings.max_abs_reward
    return agent


def float_losses(values: dict[str, Any] | None) -> dict[str, float]:
    """The numeric entries of an agent's loss report as floats (JSON-able, for job metrics and stats)."""
    return {k: float(v) for k, v in (values or {}).items() if isinstance(v, int | float)}
