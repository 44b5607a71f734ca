"""The service's feature network behind the fixed-head agent's interface, for the simulator benchmarks.

``benchmarks/offline_to_online.py``'s ``run_rl`` plays the simulator with an ``agent.DQfDAgent``: dense
(B, n_items) masks in ``q_values``, ``observe(..., mask=, next_mask=)``, ``add_demonstrations(masks=)``.
:class:`FeatureAgentAdapter` gives it, with the same calls, the agent a service job trains on a catalogue
with numeric item columns: ``agent.item_dqfd.ItemDQfDAgent`` built by
``service.learning.item_agents.new_item_agent`` (its ``ItemNetworkConfig`` from ``network_config``, the
loss-items rule for the catalogue's size), over the simulator's items as the service would import them
(``simulator.logs.write_items`` → items.csv → attributes as ``service.ingest.catalogue.import_items``
stores them → a ``FeatureSpec`` fitted on them by ``item_agents.feature_spec``, the z-scored matrix of
``item_features.feature_matrix``). The DQfDConfig is the caller's (``run_rl``'s, the variant's fields
included), so a DQfD variant and PDD DQN (λ2 = 0, no demonstrations) run on the same feature network.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AgentFactory = Callable[[int, int, Any, int], Any]
"""What ``run_rl`` calls to build its agent: ``(state_dim, n_items, DQfDConfig, seed) -> agent``."""


def service_settings(seed: int | None = None) -> Any:
    """The service's settings with its defaults (no ``.env``; ``DQFD_*`` variables still apply, as in a
    deployment), seeded like a job with ``DQFD_SEED``."""
    from service.settings import Settings as ServiceSettings

    return ServiceSettings(_env_file=None, seed=seed)


def service_catalogue(sim_config: Any) -> Any:
    """The simulator's catalogue as the service holds it after importing ``items.csv``: a
    ``service.ingest.catalogue.Catalogue`` with each item's attributes.

    The file is the simulator's own (``simulator.logs.write_items``), read by the importer's reader, and
    each row's extra columns become attributes by import_items' own rule (``item_attributes``), so the
    features fitted on them are the ones a deployment would fit.
    """
    from service.ingest.catalogue import Catalogue, _read_items, item_attributes
    from service.ingest.validation import parse_bool
    from simulator import generate_catalogue
    from simulator.logs import write_items

    with tempfile.TemporaryDirectory() as folder:
        frame = _read_items(write_items(generate_catalogue(sim_config), Path(folder) / "items.csv"))
    active = [bool(parse_bool(v)) for v in frame["active"]]
    return Catalogue.build([str(i) for i in frame["item_id"]], active, item_attributes(frame))


class FeatureAgentAdapter:
    """``ItemDQfDAgent`` with ``agent.DQfDAgent``'s calls as ``run_rl`` makes them.

    Items are the simulator's action indices (the table's rows, items.csv's order). ``q_values`` scores
    every item and sets the disallowed ones to −∞, as ``DQfDAgent.q_values`` does, so ``argmax`` picks the
    same kind of action; the masks of ``observe`` and ``add_demonstrations`` reach the item agent, which
    stores them as compact allowed sets (``agent.item_replay.allowed_from_mask``).
    """

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self._all_items = np.arange(len(agent.items), dtype=np.int64)

    @property
    def config(self) -> Any:
        """The item agent's DQfDConfig (``run_rl`` sets ``lambda_margin`` on it after pretraining)."""
        return self.agent.config

    @property
    def n_updates(self) -> int:
        """Every applied update, pretraining's included."""
        return int(self.agent.n_updates)

    @property
    def n_pretrain_updates(self) -> int:
        """The applied pretraining updates."""
        return int(self.agent.n_pretrain_updates)

    @property
    def n_agent_transitions(self) -> int:
        """The agent's own transitions in the replay."""
        return int(self.agent.n_agent_transitions)

    def add_demonstrations(self, *args: Any, **kwargs: Any) -> int:
        """``ItemDQfDAgent.add_demonstrations`` (same arguments as the fixed agent's, masks included)."""
        return int(self.agent.add_demonstrations(*args, **kwargs))

    def pretrain(self, steps: int, log_every: int | None = None) -> dict[str, Any]:
        """``steps`` updates on the demonstrations only (the item agent's pretraining loop)."""
        return self.agent.pretrain(steps, log_every=log_every)

    def train_step(self) -> dict[str, float]:
        """One update of the online phase."""
        return self.agent.train_step()

    def observe(
        self,
        state: np.ndarray,
        action: int,
        reward: float,
        next_state: np.ndarray,
        done: bool,
        mask: np.ndarray | None = None,
        next_mask: np.ndarray | None = None,
        truncated: bool = False,
    ) -> None:
        """Store one own transition; the dense masks become its allowed sets at ``state``/``next_state``."""
        self.agent.observe(
            state, action, reward, next_state, done, mask=mask, next_mask=next_mask, truncated=truncated
        )

    def q_values(self, states: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Q(s, ·) over every item, (B, n_items) float32; disallowed items −∞ (as ``DQfDAgent``)."""
        q = self.agent.q_values(states, self._all_items)
        if masks is None:
            return q
        allowed = np.asarray(masks, dtype=bool).reshape(q.shape)
        return np.where(allowed, q, np.float32(-np.inf)).astype(np.float32, copy=False)


def build_feature_agent(sim_config: Any, state_dim: int, config: Any, seed: int) -> FeatureAgentAdapter:
    """The service's feature agent over the simulator's catalogue with DQfDConfig ``config``.

    ``item_agents.feature_spec`` under the default ``DQFD_NETWORK=auto`` fits the spec (it returns None,
    the fixed head, only for a catalogue without a numeric column, which the simulator's is not);
    ``item_agents.new_item_agent`` builds the agent with ``network_config(settings, n_items)``.
    """
    from service.learning import item_agents

    settings = service_settings(seed)
    catalogue = service_catalogue(sim_config)
    spec = item_agents.feature_spec(settings, catalogue)
    if spec is None:
        raise ValueError("the simulator's items.csv has no numeric column: no feature network to build")
    return FeatureAgentAdapter(item_agents.new_item_agent(settings, catalogue, state_dim, spec, config))


def feature_factory(sim_config: Any) -> AgentFactory:
    """``run_rl``'s agent builder for the feature network over ``sim_config``'s catalogue."""

    def make(state_dim: int, n_items: int, config: Any, seed: int) -> FeatureAgentAdapter:
        adapter = build_feature_agent(sim_config, state_dim, config, seed)
        if len(adapter.agent.items) != n_items:
            raise ValueError(f"the catalogue has {len(adapter.agent.items)} items, the run expects {n_items}")
        return adapter

    return make


def describe(sim_config: Any) -> dict[str, Any]:
    """What a report records about the feature network: its config and the fitted feature columns."""
    from service.learning import item_agents

    settings = service_settings()
    catalogue = service_catalogue(sim_config)
    spec = item_agents.feature_spec(settings, catalogue)
    return {
        "item_network": item_agents.network_config(settings, catalogue.n_actions).to_dict(),
        "item_features": None if spec is None else spec.to_json(),
    }
