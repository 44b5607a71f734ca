"""The data part of DQfD's loss for one batch and its gradient, two ways.

J(Q) = J_DQ + λ1·J_n + λ2·J_E + λ3·J_L2 ([DQfD] Eq. 3). This module computes the data part
mean_i w_i·(J_DQ,i + λ1·J_n,i + λ2·J_E,i), with w_i prioritized replay's importance-sampling weights
([PER] Sec. 3.4), and writes its gradient dJ/dθ into the parameters' ``.grad`` (views of the agent's
one flat gradient, :func:`agent.networks.flatten_parameters`). The agent then adds J_L2, clips and steps
Adam the same way for both:

- :func:`hand_written_gradient`, the fast path for the built-in :class:`~agent.networks.DuelingQNetwork`:
  no autograd graph; one forward pass over s, s_{t+1} and s_{t+n}, dJ/dQ per sample written out
  (:func:`agent.losses.q_gradient`), then :meth:`DuelingQNetwork.backward_q`.
- :func:`autograd_gradient`, for any ``torch.nn.Module`` mapping states (B, S) to Q (B, n_actions): the
  same loss, built from the same :mod:`agent.losses` functions, and ``loss.backward()``.

tests/agent/test_pluggable_networks.py checks that the two give the same gradient on the built-in network.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from agent.config import DQfDConfig
from agent.losses import (
    double_dqn_bootstrap,
    margin_loss_and_argmax,
    q_filter,
    q_gradient,
    td_loss,
    td_loss_derivative,
    td_targets,
)
from agent.networks import DuelingQNetwork
from agent.types import Batch


class DataTerms(NamedTuple):
    """Per-sample values of one batch's data loss (no autograd graph), shape (B,) unless noted."""

    q: torch.Tensor
    """Q(s, ·) of the online network, (B, n_actions)."""
    q_taken: torch.Tensor
    """Q(s, a)."""
    target_1: torch.Tensor
    """One-step double-DQN target."""
    target_n: torch.Tensor
    """n-step double-DQN target."""
    j_dq: torch.Tensor
    j_n: torch.Tensor
    j_e: torch.Tensor
    """J_E as applied (0 where ``keep`` is False)."""
    keep: torch.Tensor
    """The demonstration rows whose J_E counts, bool."""
    margin_argmax: torch.Tensor
    """The action that attains J_E's max, int64."""
    per_sample: torch.Tensor
    """J_DQ + λ1·J_n + λ2·J_E, before the importance-sampling weight."""
    inputs: list[torch.Tensor]
    """Layer inputs whose first B rows are the batch's (the network input at least): for the diagnosis
    of a non-finite update (agent.dqfd._poisoned_rows)."""
    grad_q: torch.Tensor | None
    """dJ/dQ(s, ·), (B, n_actions); None when autograd did the backward pass (then :func:`q_gradient_of`
    computes it when needed)."""


def _bootstrap_targets(
    online_next: torch.Tensor, target: nn.Module, batch: Batch, size: int, cfg: DQfDConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-step and n-step targets: the online argmax at both bootstrap states, evaluated by the
    target network ([DDQN] Eq. 4), over the allowed actions only."""
    bootstrap_states = batch.stacked_states[size:]
    bootstrap_masks = None if batch.stacked_masks is None else batch.stacked_masks[size:]
    bootstrap = double_dqn_bootstrap(online_next, target(bootstrap_states), bootstrap_masks)
    bootstrap_1, bootstrap_n = bootstrap.split(size)
    return (
        td_targets(batch.rewards, batch.discounts, bootstrap_1),
        td_targets(batch.nstep_returns, batch.nstep_discounts, bootstrap_n),
    )


def _per_sample(
    q: torch.Tensor,
    batch: Batch,
    target_1: torch.Tensor,
    target_n: torch.Tensor,
    cfg: DQfDConfig,
    margin_weight: float,
    use_q_filter: bool,
) -> dict[str, torch.Tensor]:
    """Q(s, a), J_DQ, J_n, J_E, keep, a* and the per-sample loss, by their :class:`DataTerms` field
    names; differentiable in ``q`` where q is."""
    q_taken = q.gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    j_dq = td_loss(q_taken, target_1, cfg.td_loss)
    j_n = td_loss(q_taken, target_n, cfg.td_loss)
    # The demonstrations whose J_E counts: all of them, or (Q-filter, online updates) those whose
    # demonstrated action the online network still values at least as high as its own choice.
    keep = batch.is_demo
    if use_q_filter:
        keep = keep & q_filter(q, batch.actions, batch.masks)
    j_e, margin_argmax = margin_loss_and_argmax(q, batch.actions, cfg.margin, batch.masks, keep)
    per_sample = j_dq + cfg.lambda_n * j_n + margin_weight * j_e
    return {
        "q_taken": q_taken,
        "j_dq": j_dq,
        "j_n": j_n,
        "j_e": j_e,
        "keep": keep,
        "margin_argmax": margin_argmax,
        "per_sample": per_sample,
    }


def q_gradient_of(terms: DataTerms, batch: Batch, cfg: DQfDConfig, margin_weight: float) -> torch.Tensor:
    """dJ/dQ(s, ·) of the data loss mean_i w_i·(J_DQ,i + λ1·J_n,i + λ2·J_E,i), shape (B, n_actions)."""
    if terms.grad_q is not None:
        return terms.grad_q
    with torch.no_grad():
        scale = batch.weights / terms.q.shape[0]
        td_coefficient = scale * (
            td_loss_derivative(terms.q_taken - terms.target_1, cfg.td_loss)
            + cfg.lambda_n * td_loss_derivative(terms.q_taken - terms.target_n, cfg.td_loss)
        )
        margin_coefficient = torch.where(terms.keep, scale * margin_weight, 0.0)
        return q_gradient(terms.q, batch.actions, terms.margin_argmax, td_coefficient, margin_coefficient)


def hand_written_gradient(
    online: DuelingQNetwork,
    target: nn.Module,
    batch: Batch,
    cfg: DQfDConfig,
    margin_weight: float,
    use_q_filter: bool,
) -> DataTerms:
    """The data loss's terms, its gradient set in ``online``'s ``.grad`` without an autograd graph."""
    size = batch.states.shape[0]
    with torch.no_grad():
        # One pass of the online network over s, s_{t+1} and s_{t+n}: Q(s, ·) for the loss, and the
        # online argmax of double DQN at both bootstrap states.
        q_all, activations = online.forward_keeping_activations(batch.stacked_states)
        q = q_all[:size]
        target_1, target_n = _bootstrap_targets(q_all[size:], target, batch, size, cfg)
        values = _per_sample(q, batch, target_1, target_n, cfg, margin_weight, use_q_filter)
        terms = DataTerms(
            q=q, target_1=target_1, target_n=target_n, inputs=activations, grad_q=None, **values
        )
        grad_q = q_gradient_of(terms, batch, cfg, margin_weight)
        online.backward_q(activations, grad_q)
    return terms._replace(grad_q=grad_q)


def autograd_gradient(
    online: nn.Module,
    target: nn.Module,
    batch: Batch,
    cfg: DQfDConfig,
    margin_weight: float,
    use_q_filter: bool,
    flat_grad: torch.Tensor,
) -> DataTerms:
    """The data loss's terms, its gradient set by ``loss.backward()`` into ``online``'s ``.grad``.

    ``flat_grad`` is the tensor every parameter's ``.grad`` is a view of: it is zeroed first, and
    autograd then accumulates into those views in place. The bootstrap passes (online argmax, target
    value) run without a graph: the targets are constants of the loss, as in [DQN].
    """
    size = batch.states.shape[0]
    with torch.no_grad():
        target_1, target_n = _bootstrap_targets(online(batch.stacked_states[size:]), target, batch, size, cfg)
    flat_grad.zero_()
    with torch.enable_grad():
        q = online(batch.states)
        values = _per_sample(q, batch, target_1, target_n, cfg, margin_weight, use_q_filter)
        (batch.weights * values["per_sample"]).sum().div(size).backward()
    return DataTerms(
        q=q.detach(),
        target_1=target_1,
        target_n=target_n,
        inputs=[batch.states],
        grad_q=None,
        **{name: value.detach() for name, value in values.items()},
    )
