"""Typed containers passed between the replay, the losses and the agent."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    """One prioritized mini-batch with its one-step and n-step targets' ingredients (torch tensors)."""

    states: torch.Tensor
    """s, float32 (B, state_dim)."""
    actions: torch.Tensor
    """a, int64 (B,)."""
    masks: torch.Tensor | None
    """Allowed actions at s, bool (B, n_actions); None when no transition in the buffer has a mask."""
    rewards: torch.Tensor
    """One-step reward r (after the optional transform), float32 (B,)."""
    next_states: torch.Tensor
    """s', float32 (B, state_dim)."""
    next_masks: torch.Tensor | None
    """Allowed actions at s', bool (B, n_actions) or None."""
    discounts: torch.Tensor
    """γ, or 0 after a terminal transition, float32 (B,)."""
    nstep_returns: torch.Tensor
    """Σ_{j<k} γ^j r_{t+j}, float32 (B,)."""
    nstep_states: torch.Tensor
    """s_{t+k}, the n-step bootstrap state, float32 (B, state_dim)."""
    nstep_masks: torch.Tensor | None
    """Allowed actions at s_{t+k}, bool (B, n_actions) or None."""
    nstep_discounts: torch.Tensor
    """γ^k, or 0 when the window ends at a terminal transition, float32 (B,)."""
    is_demo: torch.Tensor
    """True for demonstration transitions (J_E applies), bool (B,)."""
    weights: torch.Tensor
    """Importance-sampling weights (N·P(i))^-β / max, float32 (B,)."""
    indices: np.ndarray
    """Replay indices, for :meth:`PrioritizedReplay.update_priority`, int64 (B,)."""
    stacked_states: torch.Tensor
    """s, s' and s_{t+n} stacked, float32 (3B, state_dim): ``states``, ``next_states`` and
    ``nstep_states`` are views of it (the online network runs over all three in one pass)."""
    stacked_masks: torch.Tensor | None
    """``masks``, ``next_masks`` and ``nstep_masks`` stacked the same way, bool (3B, n_actions) or None."""


class LossInfo(NamedTuple):
    """The loss components of one update, as Python floats (batch means, before λ weighting)."""

    loss: float
    """J(Q) = J_DQ + λ1·J_n + λ2·J_E + λ3·J_L2 as optimised (TD and margin terms IS-weighted)."""
    j_dq: float
    """One-step double-DQN TD loss."""
    j_n: float
    """n-step double-DQN TD loss."""
    j_e: float
    """Large-margin supervised loss as applied (0 on demonstrations the Q-filter drops), averaged over the
    demonstration samples of the batch, before λ2."""
    j_l2: float
    """Σθ² over the online network's weights and biases (unweighted)."""
    demo_fraction: float
    """Fraction of the batch drawn from demonstrations."""
    mean_q: float
    """Mean Q(s, a) of the sampled actions."""
    skipped: float = 0.0
    """1.0 when the update was not applied (non-finite loss or gradient); the components are then those of
    the batch rows that did not cause it."""
    margin_weight: float = 1.0
    """λ2 as applied to this update (``config.lambda_margin``, decayed by ``margin_decay_demo_ratio``)."""
    margin_kept: float = 1.0
    """Fraction of the batch's demonstrations whose J_E counted (below 1 only with ``q_filter``; 1 when the
    batch holds no demonstration)."""

    def as_dict(self) -> dict[str, float]:
        """The components as a plain dict."""
        return self._asdict()
