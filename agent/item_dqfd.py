"""DQfD over an open catalogue: actions are items scored by their features (issue 15).

The algorithm is :class:`agent.dqfd.DQfDAgent`'s (Hester et al. 2018, Algorithm 1 and Eq. 3):
J(Q) = J_DQ + λ1·J_n + λ2·J_E + λ3·J_L2, prioritized replay with the demonstration and agent bonuses and
β annealing ([PER]), a target network copied every ``target_update_period`` updates, double-DQN targets
([DDQN]), n-step returns, Adam, and the optional ``q_filter`` / ``margin_decay_demo_ratio`` of the online
phase, all from the same :class:`agent.config.DQfDConfig`. What changes is the network and where the
maxima run:

- the Q-network scores (state, item) pairs, Q(s, a) = f(s, x_a) (:class:`agent.feature_network.ItemQNetwork`;
  default :class:`agent.feature_network.FeatureQNetwork`), so its weights do not depend on the catalogue
  size and a new item is scored from its features at once;
- J_E's max and the double-DQN argmax run over each step's allowed *set* (:mod:`agent.set_losses`):
  exactly, over every allowed item, when ``ItemNetworkConfig.loss_items`` is None; over a subset of
  ``loss_items`` items per row otherwise (a_E, the hard items retrieved from a screening pool, and a
  uniform sample), whose effect is described in :mod:`agent.set_losses` and docs/algorithm.md;
- the gradient comes from autograd, so any ``torch.nn.Module`` with the :class:`ItemQNetwork` signature
  trains (no hand-written backward pass).

The item table (:class:`agent.item_table.ItemTable`) is shared with the caller and only grows; the
replay stores item indices and compact allowed sets (:mod:`agent.item_replay`), so adding items touches
neither stored transitions nor the weights of existing items.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from agent.config import DQfDConfig
from agent.demonstrations import layout_arrays
from agent.feature_network import FeatureQNetwork
from agent.item_replay import ItemBatch, ItemDemonstrations, ItemReplay, allowed_from_mask, allowed_sets
from agent.item_sampling import sample_subsets
from agent.item_table import ItemTable
from agent.losses import td_loss, td_targets
from agent.numerics import flush_denormals, flush_subnormal_values
from agent.optim import adam_step, make_adam
from agent.set_losses import (
    AllowedSet,
    PaddedItems,
    exact_items,
    masked_q,
    set_margin_loss,
)
from agent.training_loop import SKIP_WARNING_INTERVAL_S as SKIP_WARNING_INTERVAL_S
from agent.training_loop import DQfDLearner, poisoned_rows, update_info, update_values
from agent.training_loop import PretrainCallback as PretrainCallback
from agent.types import LossInfo
from agent.validation import as_stored_states, transition_problem, valid_states

CHECKPOINT_FORMAT = "item-dqfd-agent"
CHECKPOINT_VERSION = 1

SCREEN_FACTOR = 4
"""The screening pool from which hard items are retrieved holds ``SCREEN_FACTOR × loss_items`` uniformly
drawn items (plus the batch's own actions): bounded, so an update's cost does not grow with the catalogue."""

SCORE_CHUNK = 16_384
"""Items scored per network call in :meth:`ItemDQfDAgent.top_k` (bounds its memory)."""

log = logging.getLogger(__name__)


@dataclass
class ItemNetworkConfig:
    """The item network's shape and how the losses' maxima over allowed sets are computed."""

    embedding_dim: int = 64
    """D, the length of the state and item vectors of :class:`FeatureQNetwork`. Choice: 64, a common
    two-tower width (see agent/feature_network.py)."""
    state_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the state tower. Choice: the fixed-head network's trunk (DQfDConfig.hidden_sizes)."""
    item_hidden: tuple[int, ...] = (128,)
    """Hidden widths of the item tower. Choice: one layer; item features are a handful of columns."""
    cross_hidden: tuple[int, ...] = (64,)
    """Hidden widths of the cross network scoring each candidate. Choice: small, it runs per candidate."""
    item_embedding_dim: int = 0
    """Length of the learned per-item embedding; 0 (default) scores items by their features only."""
    loss_items: int | None = None
    """None: J_E's max and the double-DQN argmax run over every allowed item (exact, the paper's losses).
    An int K: over K items per row, a_E + retrieved hard items + a uniform sample (agent/set_losses.py);
    cost per update independent of the catalogue size. Choice: exact by default, as the paper."""
    hard_items: int = 8
    """Retrieved top items (by the online network, from a bounded screening pool) added to each sampled
    set, at most ``loss_items - 1``. Choice: 8, an eighth of a 64-item set; they cover the items the
    greedy policy would pick."""

    def __post_init__(self) -> None:
        self.state_hidden = tuple(int(h) for h in self.state_hidden)
        self.item_hidden = tuple(int(h) for h in self.item_hidden)
        self.cross_hidden = tuple(int(h) for h in self.cross_hidden)
        if self.embedding_dim < 1 or self.item_embedding_dim < 0:
            raise ValueError("embedding_dim must be >= 1 and item_embedding_dim >= 0")
        if self.loss_items is not None and self.loss_items < 2:
            raise ValueError("loss_items must be >= 2 (a_E and one other item) or None")
        if self.hard_items < 0:
            raise ValueError("hard_items must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON- and ``torch.load(weights_only=True)``-safe)."""
        data = asdict(self)
        for key in ("state_hidden", "item_hidden", "cross_hidden"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemNetworkConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown ItemNetworkConfig fields: {sorted(unknown)}")
        return cls(**data)


class ItemDQfDAgent(DQfDLearner):
    """Deep Q-learning from Demonstrations whose actions are the items of a growing catalogue (counters,
    schedules, pretraining loop and skipped-update bookkeeping: :class:`agent.training_loop.DQfDLearner`)."""

    _log = log
    _skip_name = "item DQfD"

    def __init__(
        self,
        state_dim: int,
        items: ItemTable,
        config: DQfDConfig | None = None,
        network_config: ItemNetworkConfig | None = None,
        network: nn.Module | None = None,
        seed: int | None = None,
    ) -> None:
        """Create the networks, the optimizer and an empty replay.

        Args:
            state_dim: length of the state feature vector.
            items: the catalogue (shared: the caller may append to it; the agent grows its embeddings).
            config: the DQfD hyperparameters (the paper's defaults; ``hidden_sizes`` is not used here).
            network_config: the item network and loss subset options.
            network: any module with the :class:`agent.feature_network.ItemQNetwork` signature; default a
                :class:`FeatureQNetwork` built from ``network_config``. Trained through autograd.
            seed: seeds network initialisation, sampling and exploration; None draws fresh entropy.
        """
        if state_dim < 1:
            raise ValueError("state_dim must be >= 1")
        self.config = config if config is not None else DQfDConfig()
        self.network_config = network_config if network_config is not None else ItemNetworkConfig()
        self.state_dim = int(state_dim)
        self.items = items
        self.seed = seed
        self.device = torch.device(self.config.device)
        self.rng = np.random.default_rng(seed)
        self.custom_network = network is not None
        if network is None:
            nc = self.network_config
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.rng.integers(2**31)))
                network = FeatureQNetwork(
                    self.state_dim,
                    items.feature_dim,
                    embedding_dim=nc.embedding_dim,
                    state_hidden=nc.state_hidden,
                    item_hidden=nc.item_hidden,
                    cross_hidden=nc.cross_hidden,
                    n_item_embeddings=len(items),
                    item_embedding_dim=nc.item_embedding_dim,
                )
        self.online: nn.Module = network.to(self.device)
        self.target: nn.Module = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.optimizer = make_adam(
            list(self.online.parameters()), self.config.learning_rate, self.config.adam_eps
        )
        self._grown_to = -1
        self._grow()
        self.replay = ItemReplay(
            self.state_dim,
            capacity=self.config.replay_capacity,
            alpha=self.config.priority_alpha,
            demo_bonus=self.config.demo_priority_bonus,
            agent_bonus=self.config.agent_priority_bonus,
            rng=self.rng,
        )
        self.metadata: dict[str, Any] = {}
        """Free JSON-able data saved in the checkpoint (e.g. the service's feature spec and scaling)."""
        self._init_counters()

    # ------------------------------------------------------------------ catalogue
    def add_items(self, features: np.ndarray | torch.Tensor) -> range:
        """Append items to the shared table and grow the learned embeddings (and Adam's state) to match.

        Returns the new items' indices. Stored transitions, their allowed sets and the weights of existing
        items are untouched; a new item's embedding row is zero, so it is scored by its features alone.
        """
        added = self.items.append(features)
        self._grow()
        return added

    def _grow(self) -> None:
        """Grow both networks' per-item parameters to the table's size, keeping Adam's state for the old
        rows (new rows start with zero moments); no-op for a network without ``grow_items``."""
        n = len(self.items)
        if n == self._grown_to:
            return
        self._grown_to = n
        grow = getattr(self.online, "grow_items", None)
        if grow is None:
            return
        old_params = list(self.optimizer.param_groups[0]["params"])
        grow(n)
        getattr(self.target, "grow_items", grow)(n)
        new_params = list(self.online.parameters())
        if len(old_params) == len(new_params) and all(
            a is b for a, b in zip(old_params, new_params, strict=True)
        ):
            return
        optimizer = make_adam(new_params, self.config.learning_rate, self.config.adam_eps)
        for old, new in zip(old_params, new_params, strict=True):
            state = self.optimizer.state.get(old)
            if state:
                optimizer.state[new] = {
                    key: _pad_rows(value, new.shape) if key != "step" else value
                    for key, value in state.items()
                }
        self.optimizer = optimizer

    # ------------------------------------------------------------------ data
    def add_demonstrations(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        dones: np.ndarray,
        episode_ids: np.ndarray | None = None,
        allowed: Sequence[AllowedSet | None] | None = None,
        masks: np.ndarray | None = None,
        skip_invalid: bool = False,
    ) -> int:
        """Add demonstration rows (actions are item indices) to the permanent part of the replay; returns
        the transitions added.

        Layout, validation and ``skip_invalid`` as :meth:`agent.DQfDAgent.add_demonstrations`. ``allowed``
        gives each row's allowed set (None rows and ``allowed=None``: the catalogue as it is now,
        ``AllowedSet(len(items))``); ``masks`` (N, n_items) bool is the dense alternative, converted. A
        demonstrated item outside its row's allowed set raises ``ValueError`` (J_E is undefined there).
        """
        self._grow()
        cfg = self.config
        n_items = len(self.items)
        if n_items == 0:
            raise ValueError("the item table is empty: add items before demonstrations")
        layout = layout_arrays(
            states,
            actions,
            rewards,
            dones,
            episode_ids,
            None,
            self.state_dim,
            n_items,
            cfg.max_abs_state,
            cfg.max_abs_reward,
            skip_invalid,
        )
        rows = np.asarray(actions).shape[0]
        sets = allowed_sets(rows, n_items, allowed, masks)
        # layout_arrays drops exactly the rows whose state is invalid (skip_invalid); drop their sets too.
        keep = valid_states(as_stored_states(states), cfg.max_abs_state)
        sets = [s for s, k in zip(sets, keep.tolist(), strict=True) if k]
        demos = layout.demonstrations
        for row in np.flatnonzero(demos.is_transition).tolist():
            if int(demos.actions[row]) not in sets[row]:
                raise ValueError(f"demonstration row {row}: item {int(demos.actions[row])} is not allowed")
        added = self.replay.add_item_demonstrations(ItemDemonstrations(demos, sets))
        self.n_rejected_rows += layout.rejected
        return added

    def observe(
        self,
        state: np.ndarray,
        action: int,
        reward: float,
        next_state: np.ndarray,
        done: bool,
        allowed: AllowedSet | None = None,
        next_allowed: AllowedSet | None = None,
        truncated: bool = False,
        mask: np.ndarray | None = None,
        next_mask: np.ndarray | None = None,
    ) -> None:
        """Add one of the agent's own transitions (``action`` an item index) to the FIFO replay part.

        ``allowed`` / ``next_allowed`` (or the dense ``mask`` / ``next_mask``, converted) are the allowed
        items at ``state`` / ``next_state``; None is the catalogue as it is now. Validation and
        ``truncated`` as :meth:`agent.DQfDAgent.observe`; an item outside ``allowed`` raises ``ValueError``.
        """
        self._grow()
        state = self._state(state, "state")
        next_state = self._state(next_state, "next_state")
        current = self._allowed(allowed, mask)
        following = self._allowed(next_allowed, next_mask)
        if not 0 <= int(action) < len(self.items) or int(action) not in current:
            raise ValueError(f"action: item {int(action)} is not in the allowed set")
        cfg = self.config
        problem = transition_problem(
            state, reward, next_state, max_abs_state=cfg.max_abs_state, max_abs_reward=cfg.max_abs_reward
        )
        if problem is not None:
            raise ValueError(problem)
        self.replay.add_item_transition(
            state, int(action), float(reward), next_state, bool(done), current, following, bool(truncated)
        )
        self.n_observed += 1

    # ------------------------------------------------------------------ learning
    def sample(self, demo_only: bool = False) -> ItemBatch:
        """Draw one prioritized mini-batch (demonstrations only during pretraining)."""
        cfg = self.config
        indices, weights = self.replay.sample_indices(cfg.batch_size, self.beta, demo_only)
        return self.replay.gather_items(
            indices, weights, cfg.n_step, cfg.gamma, cfg.reward_transform, self.device
        )

    def loss_items(self, batch: ItemBatch) -> tuple[PaddedItems, PaddedItems]:
        """The items each row's maxima run over: at s (always holding the row's action) and at the two
        bootstrap states s' and s_{t+k} stacked (2B rows).

        Exact (``loss_items`` None): every allowed item. Sampled: a_E (at s), the top ``hard_items`` of a
        screening pool scored by the online network, then a uniform sample filling the row to
        ``loss_items`` items (:func:`agent.item_sampling.sample_subsets`).
        """
        size = batch.actions.shape[0]
        bootstrap_sets = batch.next_allowed + batch.nstep_allowed
        k = self.network_config.loss_items
        if k is None:
            return exact_items(batch.allowed), exact_items(bootstrap_sets)
        hard_n = min(self.network_config.hard_items, k - 1)  # a_E takes one of the k slots
        hard = self._hard_items(batch, hard_n) if hard_n else None
        current = sample_subsets(
            batch.allowed,
            k,
            self.rng,
            required=batch.actions.tolist(),
            hard=None if hard is None else hard[:size],
        )
        bootstrap = sample_subsets(
            bootstrap_sets,
            k,
            self.rng,
            hard=None if hard is None else hard[size:],
        )
        return current, bootstrap

    def _hard_items(self, batch: ItemBatch, n: int) -> list[list[int]]:
        """Per row of s, s', s_{t+k}: the n allowed items of a screening pool with the largest online
        score, best first.

        The pool is ``SCREEN_FACTOR × loss_items`` items drawn uniformly from the largest catalogue in the
        batch plus the batch's actions (demonstrated items, the ones J_E pushes up and so the likeliest
        margin violators); bounded, so this costs the same at any catalogue size. A two-tower network
        (``state_vectors`` / ``item_vectors``, as :class:`FeatureQNetwork`) is screened by its dot product
        ⟨u, v_a⟩ (its retrieval score); any other network by its full Q on the pool.
        """
        sets = batch.allowed + batch.next_allowed + batch.nstep_allowed
        top = max(s.catalogue_size for s in sets)
        if top == 0:
            return [[] for _ in sets]
        size = SCREEN_FACTOR * int(self.network_config.loss_items or 0)
        drawn = self.rng.integers(0, top, size=size)
        pool_np = np.unique(np.concatenate([drawn, batch.actions.cpu().numpy()]))
        pool = torch.from_numpy(pool_np).to(self.device)
        features = self.items.gather(pool).to(self.device)
        states = batch.stacked_states
        with torch.no_grad():
            online = self.online
            if hasattr(online, "state_vectors") and hasattr(online, "item_vectors"):
                scores = online.state_vectors(states) @ online.item_vectors(pool, features).t()
            else:
                rows = states.shape[0]
                scores = online(states, pool.expand(rows, -1), features.expand(rows, -1, -1))
        allowed = np.stack([_members(s, pool_np) for s in sets])
        scores = scores.cpu().masked_fill(~torch.from_numpy(allowed), float("-inf"))
        best = scores.topk(min(n, pool_np.shape[0]), dim=1)
        picked = pool_np[best.indices.numpy()]
        finite = torch.isfinite(best.values).numpy()
        return [row[keep].tolist() for row, keep in zip(picked, finite, strict=True)]

    def learn(self, batch: ItemBatch, demo_only: bool = False) -> tuple[LossInfo, np.ndarray]:
        """One gradient step on J(Q) for a batch, through autograd; returns the loss components and |δ| of
        the 1-step TD error per row.

        J(Q) = J_DQ + λ1·J_n + λ2·J_E + λ3·J_L2 ([DQfD] Eq. 3), TD and margin terms weighted per row by the
        importance-sampling weights, J_E over each row's allowed set (:mod:`agent.set_losses`), the
        double-DQN bootstrap over the allowed set of each bootstrap state. An update whose loss or gradient
        norm is not finite is skipped and the rows that made it so get |δ| = NaN (quarantined by
        :meth:`ItemReplay.update_priority`), as :meth:`agent.DQfDAgent.learn`.
        """
        with flush_denormals(self.flush_denormals):
            return self._learn(batch, demo_only)

    def _learn(self, batch: ItemBatch, demo_only: bool) -> tuple[LossInfo, np.ndarray]:
        self._grow()
        cfg = self.config
        margin_weight = self.margin_weight(demo_only)
        size = batch.actions.shape[0]
        current, bootstrap_items = self.loss_items(batch)
        current = PaddedItems(current.items.to(self.device), current.valid.to(self.device))
        with torch.no_grad():
            # Double DQN ([DDQN] Eq. 4) at s' and s_{t+k} at once: the online network picks over the
            # bootstrap state's allowed items, the target network evaluates its pick.
            boot = PaddedItems(bootstrap_items.items.to(self.device), bootstrap_items.valid.to(self.device))
            boot_states = batch.stacked_states[size:]
            boot_features = self.items.gather(boot.items.cpu()).to(self.device)
            # The target network scores only the online pick, one item per row: the value of
            # set_losses.set_double_dqn_bootstrap (ties to the first slot, 0 for a row with no item) at a
            # third of the scoring.
            pick = masked_q(self.online(boot_states, boot.items, boot_features), boot.valid).argmax(
                dim=1, keepdim=True
            )
            picked_features = boot_features.gather(
                1, pick.unsqueeze(-1).expand(-1, -1, boot_features.shape[-1])
            )
            evaluated = self.target(boot_states, boot.items.gather(1, pick), picked_features).squeeze(1)
            value = torch.where(boot.valid.any(dim=1), evaluated, torch.zeros_like(evaluated))
            bootstrap_1, bootstrap_n = value.split(size)
            target_1 = td_targets(batch.rewards, batch.discounts, bootstrap_1)
            target_n = td_targets(batch.nstep_returns, batch.nstep_discounts, bootstrap_n)

        features = self.items.gather(current.items.cpu()).to(self.device)
        q = self.online(batch.states, current.items, features)
        taken = ((current.items == batch.actions.unsqueeze(1)) & current.valid).long().argmax(dim=1)
        q_taken = q.gather(1, taken.unsqueeze(1)).squeeze(1)
        j_dq = td_loss(q_taken, target_1, cfg.td_loss)
        j_n = td_loss(q_taken, target_n, cfg.td_loss)
        keep = batch.is_demo
        if cfg.q_filter and not demo_only:
            # Nair et al. 2018 Sec. 4: J_E only where Q(s, a_E) ≥ max over the allowed (scored) items.
            with torch.no_grad():
                keep = keep & (q_taken >= masked_q(q, current.valid).amax(dim=1))
        j_e = set_margin_loss(q, current, batch.actions, cfg.margin, is_demo=keep)
        per_sample = j_dq + cfg.lambda_n * j_n + margin_weight * j_e
        parameters = list(self.online.parameters())
        # J_L2 = λ3·Σθ² is part of the loss (coupled L2, not decoupled weight decay), as DQfDAgent.
        j_l2 = sum(p.pow(2).sum() for p in parameters)
        loss = (batch.weights * per_sample).sum() / size + cfg.lambda_l2 * j_l2
        for p in parameters:
            p.grad = None
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        for p, g in zip(parameters, grads, strict=True):
            p.grad = g
        with torch.no_grad():
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            abs_td = (target_1 - q_taken).abs()
            # Every reported scalar, and the gradient norm, from one reduction and one conversion to Python.
            values = update_values(batch, per_sample, j_dq, j_n, j_e, q_taken, keep, j_l2, grad_norm)
        if not all(map(math.isfinite, values)):
            rows = _poisoned_rows(q.detach(), current.valid, q_taken, target_1, target_n, per_sample, batch)
            for p in parameters:
                p.grad = None
            return self._skip_update(
                "loss or gradient",
                batch,
                rows,
                keep,
                q_taken,
                j_dq,
                j_n,
                j_e,
                per_sample,
                abs_td,
                margin_weight,
                l2_term=cfg.lambda_l2 * values[-2],  # values[-2] is Σθ², reported as j_l2
                j_l2=values[-2],
            )

        if cfg.max_grad_norm is not None:
            # As torch.nn.utils.clip_grad_norm_: scale the whole gradient to norm ≤ max_grad_norm.
            torch._foreach_mul_(grads, float(min(1.0, cfg.max_grad_norm / (values[-1] + 1e-6))))
        adam_step(self.optimizer)
        if self.flush_denormals and torch.get_num_threads() > 1 and self.device.type == "cpu":
            tensors = [p.data for p in parameters] + grads
            for state in self.optimizer.state.values():
                tensors += [state["exp_avg"], state["exp_avg_sq"]]
            flush_subnormal_values(tensors)
        self._count_update()
        return update_info(values, size, cfg.lambda_l2 * values[-2], margin_weight), abs_td.cpu().numpy()

    # ------------------------------------------------------------------ acting
    def q_values(self, states: np.ndarray, item_indices: np.ndarray) -> np.ndarray:
        """Q(s_b, item_indices[b, k]) of the online network, (B, K); ``item_indices`` (K,) is used for
        every state."""
        states_t = torch.as_tensor(np.asarray(states, dtype=np.float32), device=self.device)
        if states_t.ndim == 1:
            states_t = states_t.unsqueeze(0)
        indices = torch.as_tensor(np.asarray(item_indices, dtype=np.int64))
        if indices.ndim == 1:
            indices = indices.unsqueeze(0).expand(states_t.shape[0], -1)
        features = self.items.gather(indices).to(self.device)
        with torch.no_grad():
            return self.online(states_t, indices.to(self.device), features).cpu().numpy()

    def top_k(
        self, state: np.ndarray, k: int, allowed: AllowedSet | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k allowed items with the largest Q (exact: every allowed item scored, in chunks), best
        first, as (item indices int64, Q float32); ties keep the lower index first."""
        state_t = torch.as_tensor(self._state(state), device=self.device).unsqueeze(0)
        pool = self._allowed(allowed, None).items()
        scores = np.empty(pool.shape[0], dtype=np.float32)
        with torch.no_grad():
            for start in range(0, pool.shape[0], SCORE_CHUNK):
                chunk = torch.from_numpy(pool[start : start + SCORE_CHUNK]).unsqueeze(0)
                features = self.items.gather(chunk).to(self.device)
                scores[start : start + chunk.shape[1]] = (
                    self.online(state_t, chunk.to(self.device), features)[0].cpu().numpy()
                )
        k = min(int(k), pool.shape[0])
        order = np.lexsort((pool, -scores))[:k]
        return pool[order], scores[order]

    def act(self, state: np.ndarray, allowed: AllowedSet | None = None, epsilon: float | None = None) -> int:
        """ε-greedy item among the allowed ones (``epsilon=0`` is greedy; default ``config.epsilon``)."""
        epsilon = self.config.epsilon if epsilon is None else float(epsilon)
        current = self._allowed(allowed, None)
        if epsilon > 0.0 and self.rng.random() < epsilon:
            drawn = current.sample_others(1, self.rng)
            if drawn.shape[0]:
                return int(drawn[0])
        items, _ = self.top_k(state, 1, current)
        if items.shape[0] == 0:
            raise ValueError("the allowed set is empty")
        return int(items[0])

    # ------------------------------------------------------------------ persistence
    def save(self, destination: str | Path | BinaryIO) -> None:
        """Write a checkpoint: configs, sizes, both networks, Adam's state, counters and :attr:`metadata`.

        Not the item features (the table belongs to the caller) nor the replay: the checkpoint grows with
        the catalogue only through the learned item embeddings (and their Adam moments). It loads with
        ``torch.load(weights_only=True)``.
        """
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "network_config": self.network_config.to_dict(),
            "custom_network": self.custom_network,
            "state_dim": self.state_dim,
            "item_feature_dim": self.items.feature_dim,
            "n_items": len(self.items),
            "seed": self.seed,
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "metadata": self.metadata,
            "counters": self._counters(),
        }
        torch.save(checkpoint, destination)

    @classmethod
    def load(
        cls, source: str | Path | BinaryIO, items: ItemTable, network: nn.Module | None = None
    ) -> ItemDQfDAgent:
        """Rebuild an agent from :meth:`save`'s checkpoint (empty replay) over ``items``, which must hold
        at least the items the checkpoint saw (it may hold more: their embedding rows start at zero).

        ``network``: an untrained module of the saved architecture, needed when the agent was built with
        a custom network (the checkpoint holds weights, not code).
        """
        return cls.from_checkpoint(torch.load(source, map_location="cpu", weights_only=True), items, network)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Any, items: ItemTable, network: nn.Module | None = None
    ) -> ItemDQfDAgent:
        """:meth:`load` on a checkpoint already read with ``torch.load(weights_only=True)``, for callers
        that read it once and dispatch on its ``format`` (the service's model loader). Same arguments and
        errors as :meth:`load`."""
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not an item DQfD agent checkpoint")
        if checkpoint.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"unsupported checkpoint version {checkpoint.get('version')}")
        if checkpoint["custom_network"] and network is None:
            raise ValueError("this checkpoint was made with a custom network: pass an instance as network=")
        if items.feature_dim != checkpoint["item_feature_dim"]:
            raise ValueError(
                f"the checkpoint's items have {checkpoint['item_feature_dim']} features, the table "
                f"{items.feature_dim}"
            )
        if len(items) < checkpoint["n_items"]:
            raise ValueError(f"the checkpoint saw {checkpoint['n_items']} items, the table has {len(items)}")
        agent = cls(
            checkpoint["state_dim"],
            items,
            DQfDConfig.from_dict(checkpoint["config"]),
            ItemNetworkConfig.from_dict(checkpoint["network_config"]),
            network=network,
            seed=checkpoint["seed"],
        )
        for module, key in ((agent.online, "online"), (agent.target, "target")):
            current = module.state_dict()
            module.load_state_dict(
                {name: _pad_rows(value, current[name].shape) for name, value in checkpoint[key].items()}
            )
        optimizer_state = checkpoint["optimizer"]
        params = agent.optimizer.param_groups[0]["params"]
        for index, state in optimizer_state["state"].items():
            for name in ("exp_avg", "exp_avg_sq"):
                if name in state:
                    state[name] = _pad_rows(state[name], params[index].shape)
        agent.optimizer.load_state_dict(optimizer_state)
        agent.metadata = dict(checkpoint["metadata"])
        agent._load_counters(checkpoint["counters"])
        return agent

    # ------------------------------------------------------------------ helpers
    def _allowed(self, allowed: AllowedSet | None, mask: np.ndarray | None) -> AllowedSet:
        """A step's allowed set: given, from a dense mask, or the catalogue as it is now."""
        if allowed is not None and mask is not None:
            raise ValueError("give an allowed set or a mask, not both")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool).reshape(-1)
            if mask.shape[0] > len(self.items):
                raise ValueError(f"mask has {mask.shape[0]} entries, the table {len(self.items)} items")
            return allowed_from_mask(mask)
        if allowed is None:
            return AllowedSet(len(self.items))
        if allowed.catalogue_size > len(self.items):
            raise ValueError(
                f"allowed set over {allowed.catalogue_size} items, the table has {len(self.items)}"
            )
        return allowed


def _pad_rows(value: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """``value`` with zero rows appended to reach ``shape`` (a grown per-item table); unchanged when the
    shapes already agree or differ elsewhere than in the first dimension."""
    if value.shape == shape or value.ndim != len(shape) or value.ndim == 0 or value.shape[1:] != shape[1:]:
        return value
    if value.shape[0] > shape[0]:
        return value
    extra = torch.zeros((shape[0] - value.shape[0], *shape[1:]), dtype=value.dtype, device=value.device)
    return torch.cat([value, extra])


def _members(allowed: AllowedSet, pool: np.ndarray) -> np.ndarray:
    """Which items of ``pool`` (int64, sorted) are in ``allowed``, bool, without enumerating the set."""
    if allowed.candidates is not None:
        inside = np.isin(pool, np.asarray(allowed.candidates, dtype=np.int64))
    else:
        inside = pool < allowed.catalogue_size
    if allowed.exclusions:
        inside &= ~np.isin(pool, np.fromiter(allowed.exclusions, dtype=np.int64))
    return inside


def _poisoned_rows(
    q: torch.Tensor,
    valid: torch.Tensor,
    q_taken: torch.Tensor,
    target_1: torch.Tensor,
    target_n: torch.Tensor,
    per_sample: torch.Tensor,
    batch: ItemBatch,
) -> torch.Tensor:
    """The rows of a batch that made its update non-finite, bool (B,); at least one.

    A row whose Q-values, targets or loss are not finite is marked. When every per-row value is finite but
    the summed loss or the gradient overflowed, the row with the largest bound on its gradient, |dJ/dQ|
    (at most 1 + λ1 + λ2 per Q-value with the Huber loss, else its TD errors) times (1 + ‖s‖), is marked.
    """
    size = q_taken.shape[0]

    def bound() -> torch.Tensor:
        return (1.0 + (target_1 - q_taken).abs() + (target_n - q_taken).abs()).double() * (
            1.0 + batch.states[:size].double().norm(dim=1)
        )

    return poisoned_rows(
        [q.masked_fill(~valid, 0.0), target_1 - q_taken, target_n - q_taken, per_sample], bound
    )
